"""Content-defined chunking: boundaries follow content, so an insert moves few of them."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamon.cafs import chunker as chunker_module
from datamon.cafs.chunker import BLOCK, FastCDCChunker
from datamon.core.ids import digest
from datamon.core.model import ChunkerParams
from datamon.errors import ConfigError

PARAMS = ChunkerParams()
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def chunker() -> FastCDCChunker:
    return FastCDCChunker(PARAMS)


def _check_sizes(chunks: list[bytes], params: ChunkerParams) -> None:
    for chunk in chunks[:-1]:
        assert params.min_size <= len(chunk) <= params.max_size
    if chunks:
        assert 0 < len(chunks[-1]) <= params.max_size


def _ids(chunks: list[bytes]) -> list[bytes]:
    return [digest(c) for c in chunks]


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    size=st.integers(min_value=MiB, max_value=2 * MiB),
    where=st.floats(min_value=0.0, max_value=1.0),
    inserted=st.binary(min_size=1, max_size=300),
)
@settings(max_examples=20, deadline=None)
def test_insert_changes_only_nearby_chunks(
    seed: int, size: int, where: float, inserted: bytes
) -> None:
    chunker = FastCDCChunker(PARAMS)
    data = random.Random(seed).randbytes(size)
    offset = int(where * size)
    changed = data[:offset] + inserted + data[offset:]

    before = list(chunker.chunks_of(data))
    after = list(chunker.chunks_of(changed))
    assert b"".join(before) == data
    assert b"".join(after) == changed
    _check_sizes(before, PARAMS)
    _check_sizes(after, PARAMS)

    # Every chunk that ends at or before the insert point is cut exactly as before
    # (except the last one, which the end of the data cut, not its content).
    ends = 0
    unchanged_prefix = 0
    for chunk in before[:-1]:
        ends += len(chunk)
        if ends > offset:
            break
        unchanged_prefix += 1
    assert after[:unchanged_prefix] == before[:unchanged_prefix]

    # After the insert the cuts fall back in step within a chunk or two.
    old, new = set(_ids(before)), set(_ids(after))
    assert len(old - new) <= 3, (len(before), len(old - new))
    assert len(new - old) <= 3, (len(after), len(new - old))
    assert len(old & new) >= len(old) - 3


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    size=st.integers(min_value=0, max_value=3 * MiB),
)
@settings(max_examples=15, deadline=None)
def test_stream_and_buffer_cut_alike(seed: int, size: int) -> None:
    # Uploads cut files as streams; diff and tests cut buffers: they must agree.
    chunker = FastCDCChunker(PARAMS)
    data = random.Random(seed).randbytes(size)
    from_buffer = list(chunker.chunks_of(data))
    from_stream = list(chunker.chunks(io.BufferedReader(io.BytesIO(data), buffer_size=1 << 16)))
    assert from_stream == from_buffer
    assert b"".join(from_stream) == data
    _check_sizes(from_stream, PARAMS)


def test_empty_input_has_no_chunks(chunker: FastCDCChunker) -> None:
    assert list(chunker.chunks_of(b"")) == []
    assert list(chunker.chunks(io.BytesIO(b""))) == []


def test_small_input_is_one_chunk(chunker: FastCDCChunker) -> None:
    assert list(chunker.chunks_of(b"tiny")) == [b"tiny"]
    data = random.Random(1).randbytes(PARAMS.min_size - 1)
    assert list(chunker.chunks_of(data)) == [data]


def test_zeros_cut_at_max_size(chunker: FastCDCChunker) -> None:
    data = bytes(PARAMS.max_size * 3 + 10)
    chunks = list(chunker.chunks_of(data))
    assert [len(c) for c in chunks] == [PARAMS.max_size] * 3 + [10]


def test_average_chunk_size_is_near_the_parameter(chunker: FastCDCChunker) -> None:
    data = random.Random(2).randbytes(8 * MiB)
    chunks = list(chunker.chunks_of(data))
    average = len(data) / len(chunks)
    # FastCDC's effective average is about avg_size + min_size.
    assert PARAMS.avg_size * 0.6 <= average <= (PARAMS.avg_size + PARAMS.min_size) * 1.6


def test_parameters_change_the_cuts() -> None:
    data = random.Random(3).randbytes(2 * MiB)
    small = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)
    a = list(FastCDCChunker(PARAMS).chunks_of(data))
    b = list(FastCDCChunker(small).chunks_of(data))
    _check_sizes(b, small)
    assert len(b) > len(a)


def test_chunks_outlive_the_next_one(chunker: FastCDCChunker) -> None:
    data = random.Random(4).randbytes(3 * BLOCK + 12345)
    kept = list(chunker.chunks(io.BytesIO(data)))  # views into blocks not reused while viewed
    assert b"".join(kept) == data
    assert kept == list(chunker.chunks_of(data))
    assert len({id(view.obj) for view in kept}) == 4


def test_blocks_are_used_again_once_their_chunks_are_dropped() -> None:
    chunker = FastCDCChunker(PARAMS)
    data = random.Random(5).randbytes(10 * BLOCK)
    copied: list[bytes] = []
    blocks: set[int] = set()
    for view in chunker.chunks(io.BytesIO(data)):
        blocks.add(id(view.obj))
        copied.append(bytes(view))
    assert b"".join(copied) == data
    assert len(blocks) <= 3  # the block being cut, the one carried from, and one spare


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, as pipes and sockets may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.at, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.step, len(self.data) - self.at)
        buffer[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    size=st.integers(min_value=0, max_value=3 * MiB),
    step=st.sampled_from([1000, 65536, 1 << 30]),
)
@settings(max_examples=15, deadline=None)
def test_block_boundaries_do_not_change_the_cuts(seed: int, size: int, step: int) -> None:
    chunker = FastCDCChunker(PARAMS)
    chunker.block = 2 * PARAMS.max_size  # the smallest allowed: 3 MiB crosses several blocks
    data = random.Random(seed).randbytes(size)
    assert list(chunker.chunks(Trickle(data, step))) == list(chunker.chunks_of(data))


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ConfigError):
        FastCDCChunker(ChunkerParams(algorithm="rabin"))


@pytest.mark.parametrize(
    ("params", "says"),
    [
        (ChunkerParams(seed=-1), "seed -1 is outside"),
        (ChunkerParams(seed=2**64), "seed 18446744073709551616 is outside"),
        (ChunkerParams(min_size=256 * 1024), "sizes are inconsistent"),
        (ChunkerParams(max_size=64 * 1024), "sizes are inconsistent"),
        (ChunkerParams(min_size=32), "sizes are inconsistent"),
    ],
    ids=["negative-seed", "seed-of-65-bits", "min-over-avg", "max-under-avg", "min-under-64"],
)
def test_parameters_the_chunker_cannot_use_are_a_config_error_when_it_is_made(
    params: ChunkerParams, says: str
) -> None:
    # Not a bare OverflowError from the compiled chunker at the first cut.
    with pytest.raises(ConfigError, match=says):
        FastCDCChunker(params)
    assert b"".join(FastCDCChunker(ChunkerParams(seed=2**64 - 1)).chunks_of(b"x" * 9)) == b"x" * 9


@pytest.mark.parametrize("size", [0, 1, 100, 16383, 16384, 16385, 40_000])
def test_small_buffers_cut_as_fastcdc_cuts_them(size: int) -> None:
    chunker = FastCDCChunker(ChunkerParams())
    data = os.urandom(size)
    assert list(chunker.chunks_of(data)) == [bytes(c.data) for c in chunker._cdc().cut_buf(data)]


@pytest.mark.parametrize("stat_size", [0, 5, 10, 11, 5000])
def test_read_returns_the_whole_file_whatever_the_stat_said(tmp_path: Path, stat_size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    assert FastCDCChunker.read(str(path), stat_size) == b"0123456789"
    big = os.urandom(3 << 20)
    path.write_bytes(big)
    assert FastCDCChunker.read(str(path), stat_size) == big


def test_read_goes_on_after_a_short_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read may return less than asked before the end, as network file systems may: only
    an empty read is the end."""
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10 + b"b" * 10)
    real = os.read
    calls: list[int] = []

    def short(fd: int, n: int) -> bytes:
        calls.append(n)
        return real(fd, min(n, 10))

    monkeypatch.setattr(chunker_module.os, "read", short)
    assert FastCDCChunker.read(str(path), 20) == b"a" * 10 + b"b" * 10
    assert len(calls) == 3  # 10 bytes, 10 more, then the end


def test_read_of_the_size_the_stat_gave_takes_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file read whole costs one read call when its size is what the stat said; a
    second read, to see the end, would hand the interpreter lock over once more a file."""
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    calls: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        calls.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    assert FastCDCChunker.read(str(path), 10) == b"0123456789"
    assert calls == [11]
    calls.clear()
    # Any other size reads on to the end.
    assert FastCDCChunker.read(str(path), 9) == b"0123456789"
    assert len(calls) == 2
