"""The ingester's batched pipeline: which chunks it compresses whole and which it probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datamon import Store
from datamon.cafs.ingest import PROBE_AFTER, Ingester
from datamon.cafs.packer import PackWriter
from datamon.core.codecs import CODEC_RAW, ChunkCodec
from datamon.testing.workloads import random_bytes, text_bytes


def _ingest(tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Ingest ``data`` as one file; returns (probed, codec) of each chunk encoded, in order."""
    calls: list[tuple[bool, int]] = []
    real = ChunkCodec.encode_parts

    def spy(self: ChunkCodec, raw: Any, probe: bool = False) -> tuple[int, Any]:
        kind, payload = real(self, raw, probe)
        calls.append((probe, kind))
        return kind, payload

    monkeypatch.setattr(ChunkCodec, "encode_parts", spy)
    store = Store.open(str(tmp_path / "store"))
    packer = PackWriter(store.index, store.config.pack_size)
    ingester = Ingester(store.chunker, store.index, packer, 1, workers=1)
    try:
        refs = ingester.ingest_bytes(data)
        packer.close()
    finally:
        ingester.close()
    assert b"".join(store.reader.read(refs)) == data
    return calls


def test_random_data_is_probed_after_two_raw_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _ingest(tmp_path, random_bytes(31, 3 << 20), monkeypatch)
    assert len(calls) > PROBE_AFTER + 5
    assert all(kind == CODEC_RAW for _probe, kind in calls)
    assert [probe for probe, _kind in calls] == [False] * PROBE_AFTER + [True] * (
        len(calls) - PROBE_AFTER
    )


def test_text_after_random_data_is_compressed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _ingest(tmp_path, random_bytes(32, 1 << 20) + text_bytes(32, 2 << 20), monkeypatch)
    kinds = [kind for _probe, kind in calls]
    # The probe lets the text through: its chunks are compressed, and probing stops.
    first_text = kinds.index(next(k for k in kinds if k != CODEC_RAW))
    assert calls[first_text][0] is True
    assert all(kind != CODEC_RAW for kind in kinds[first_text:])
    assert not any(probe for probe, _kind in calls[first_text + 1 :])
