"""Encodings of stored objects: framed compressed MessagePack, JSON, chunk blobs."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
import zstandard

from datamon.core.ids import DIGEST_SIZE, digest
from datamon.errors import ChecksumMismatch, CorruptObject, UnsupportedFormat

T = TypeVar("T")

FRAME_MAGIC = b"DMF"
FRAME_VERSION = 1
_FRAME_HEADER = len(FRAME_MAGIC) + 1 + DIGEST_SIZE

CODEC_RAW = 0
CODEC_ZSTD = 1
# A chunk is stored compressed only when that saves at least 1/32 of its size.
_MIN_SAVING_SHIFT = 5

_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder(order="sorted")
_local = threading.local()


def encode_frame(payload: bytes, level: int = 3) -> tuple[bytes, bytes]:
    """Frame ``payload`` as magic, version, BLAKE3 of payload, zstd(payload).

    Returns ``(digest, framed)``; the digest names content-addressed objects.
    """
    d = digest(payload)
    return d, frame(d, payload, level)


def frame(payload_digest: bytes, payload: bytes, level: int = 3) -> bytes:
    """The frame of ``payload`` whose BLAKE3 digest the caller already computed."""
    body = _compressor(level).compress(payload)
    return FRAME_MAGIC + bytes([FRAME_VERSION]) + payload_digest + body


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level: making one costs more than a small frame."""
    found: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if found is None:
        found = _local.compressors = {}
    compressor = found.get(level)
    if compressor is None:
        compressor = found[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def decode_frame(key: str, data: bytes, expected: bytes | None = None) -> bytes:
    """Check and open a frame written by :func:`encode_frame`."""
    if len(data) < _FRAME_HEADER or data[:3] != FRAME_MAGIC:
        raise CorruptObject(key, "not a Datamon frame")
    if data[3] != FRAME_VERSION:
        raise UnsupportedFormat(key, data[3])
    stored = data[4:_FRAME_HEADER]
    try:
        payload = zstandard.ZstdDecompressor().decompress(data[_FRAME_HEADER:])
    except zstandard.ZstdError as exc:
        raise CorruptObject(key, f"zstd: {exc}") from None
    actual = digest(payload)
    want = expected if expected is not None else stored
    if actual != want:
        raise ChecksumMismatch(key, want.hex(), actual.hex())
    if stored != want:  # the payload is whole: the digest its header gives is not
        raise ChecksumMismatch(key, stored.hex(), actual.hex())
    return payload


def pack_msg(obj: Any) -> bytes:
    return _msgpack_encoder.encode(obj)


def unpack_msg(key: str, data: bytes, type_: type[T]) -> T:
    try:
        return msgspec.msgpack.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        raise CorruptObject(key, str(exc)) from None


class _Versioned(msgspec.Struct):
    format: int


def load_versioned(key: str, data: bytes, type_: type[T], version: int, binary: bool) -> T:
    """Decode a stored object, refusing an unknown format version before anything else."""
    decode = msgspec.msgpack.decode if binary else msgspec.json.decode
    try:
        found = decode(data, type=_Versioned).format
    except msgspec.DecodeError as exc:
        raise CorruptObject(key, str(exc)) from None
    if found != version:
        raise UnsupportedFormat(key, found)
    try:
        return decode(data, type=type_)
    except msgspec.DecodeError as exc:
        raise CorruptObject(key, str(exc)) from None


def to_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace; the input of content ids."""
    return _json_encoder.encode(obj)


def from_json(key: str, data: bytes, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        raise CorruptObject(key, str(exc)) from None


# The prefix of a chunk compressed to probe it (see ChunkCodec.encode_parts).
PROBE_BYTES = 8192


class ChunkCodec:
    """Turns raw chunks into stored blobs (codec byte + payload) and back.

    Not thread-safe: keep one per thread.
    """

    def __init__(self, level: int = 1) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, raw: bytes | memoryview) -> bytes:
        codec, payload = self.encode_parts(raw)
        return bytes([codec]) + payload

    def encode_parts(
        self, raw: bytes | memoryview, probe: bool = False
    ) -> tuple[int, bytes | memoryview]:
        """The codec byte and the payload of the stored blob, not yet joined: a pack writer
        appends both to its buffer, which saves copying every chunk once more.

        With ``probe``, a chunk over twice :data:`PROBE_BYTES` whose first
        :data:`PROBE_BYTES` do not compress by the margin a chunk must is stored raw
        without compressing the rest (design §4.5): for data that is already compressed
        or random, that skips most of zstd's work (1.3 GB/s here) on a chunk it would
        store raw anyway.
        """
        if probe and len(raw) > 2 * PROBE_BYTES and not self.compresses(raw[:PROBE_BYTES]):
            return CODEC_RAW, raw
        packed = self._compressor.compress(raw)
        if len(packed) + (len(raw) >> _MIN_SAVING_SHIFT) < len(raw):
            return CODEC_ZSTD, packed
        return CODEC_RAW, raw

    def compresses(self, sample: bytes | memoryview) -> bool:
        """Whether ``sample`` compresses by the margin a stored chunk must (a 32nd)."""
        size = len(sample)
        return len(self._compressor.compress(sample)) + (size >> _MIN_SAVING_SHIFT) < size

    def encode_many(
        self, raws: Sequence[bytes | memoryview], plain: bytes | None = None
    ) -> list[tuple[int, bytes | memoryview]]:
        """:meth:`encode_parts` of each chunk, compressed in one call; with ``plain`` (a
        byte a chunk), the chunks marked 1 are stored raw without being compressed.

        Compressing a group of small chunks at once releases the interpreter lock once for
        the group instead of once per chunk; the frames are the same bytes ``compress``
        gives.
        """
        which = range(len(raws)) if plain is None else [k for k, p in enumerate(plain) if not p]
        if not which:
            return [(CODEC_RAW, raw) for raw in raws]
        try:
            batch: list[bytes | bytearray | memoryview] = [raws[k] for k in which]
            packed = self._compressor.multi_compress_to_buffer(batch, threads=1)
        except NotImplementedError:  # zstandard's CFFI backend has no batch call
            return [
                (CODEC_RAW, raw) if plain is not None and plain[k] else self.encode_parts(raw)
                for k, raw in enumerate(raws)
            ]
        out: list[tuple[int, bytes | memoryview]] = [(CODEC_RAW, raw) for raw in raws]
        for i, k in enumerate(which):
            raw = raws[k]
            size = len(raw)
            one = packed[i]
            if len(one) + (size >> _MIN_SAVING_SHIFT) < size:
                # A segment of the batch's output buffer (the stubs omit its buffer protocol).
                out[k] = (CODEC_ZSTD, memoryview(one))  # type: ignore[arg-type]
        return out

    def decode(self, key: str, blob: bytes | memoryview, raw_size: int) -> bytes:
        raw = self.decode_borrowed(key, blob, raw_size)
        return raw if isinstance(raw, bytes) else bytes(raw)

    def decode_borrowed(
        self, key: str, blob: bytes | memoryview, raw_size: int
    ) -> bytes | memoryview:
        """As :meth:`decode`, but an uncompressed chunk comes back as a view of ``blob``."""
        if not blob:
            raise CorruptObject(key, "empty chunk blob")
        codec = blob[0]
        body = blob[1:]
        raw: bytes | memoryview
        if codec == CODEC_RAW:
            raw = body
        elif codec == CODEC_ZSTD:
            try:
                size = zstandard.frame_content_size(body)
            except zstandard.ZstdError as exc:
                raise CorruptObject(key, f"zstd: {exc}") from None
            if size != raw_size:
                # Checked before decompressing, so a damaged header cannot claim huge memory.
                raise CorruptObject(key, f"chunk claims {size} bytes, index says {raw_size}")
            try:
                raw = self._decompressor.decompress(body)
            except zstandard.ZstdError as exc:
                raise CorruptObject(key, f"zstd: {exc}") from None
        else:
            raise UnsupportedFormat(f"chunk codec in {key}", codec)
        if len(raw) != raw_size:
            raise CorruptObject(key, f"chunk has {len(raw)} bytes, index says {raw_size}")
        return raw
