"""Encodings of stored objects: framed compressed MessagePack, JSON, chunk blobs."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
import zstandard

from datamon.core.ids import DIGEST_SIZE, digest
from datamon.errors import ChecksumMismatch, CorruptObject, InvalidArgument, UnsupportedFormat

T = TypeVar("T")

FRAME_MAGIC = b"DMF"
FRAME_VERSION = 1
_FRAME_HEADER = len(FRAME_MAGIC) + 1 + DIGEST_SIZE

CODEC_RAW = 0
CODEC_ZSTD = 1
# One zstd frame of several small chunks side by side; each chunk's pack-index entry says
# where in the frame's content it starts (design §4.5).
CODEC_SHARED = 2
# Chunks under SHARE_BELOW bytes, next to each other in a group, are compressed together in
# frames that close once their raw bytes reach FRAME_BYTES: zstd's per-frame work (its
# tables, the frame header) is then paid once for several small files.
SHARE_BELOW = 32 << 10
FRAME_BYTES = 64 << 10
# How encode_group stores each chunk of a group.
ALONE = 0
PLAIN = 1
SHARE = 2
# Readers refuse a shared frame claiming more content than this: a damaged header must not
# make them allocate much memory. Writers stay under FRAME_BYTES + SHARE_BELOW.
FRAME_LIMIT = 1 << 20
# The most a framed object (a tree, a pack index) may hold once decompressed. Readers refuse
# a frame whose header claims more, or no size at all, before decompressing it: a damaged
# header must not make them allocate what it says. Writers refuse to frame more. A tree entry
# takes about 100 bytes (plus 40 a chunk), so this is a folder of millions of files.
OBJECT_LIMIT = 1 << 30
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
    if len(payload) > OBJECT_LIMIT:
        raise InvalidArgument(
            f"an object of {len(payload):,} bytes is over the limit of {OBJECT_LIMIT:,} bytes"
            " for a tree or a pack index (a folder with too many entries)"
        )
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
    body = data[_FRAME_HEADER:]
    try:
        size = zstandard.frame_content_size(body)
        # Checked before decompressing: zstd would allocate what the header claims.
        if size < 0:
            raise CorruptObject(key, "the frame records no content size")
        if size > OBJECT_LIMIT:
            raise CorruptObject(key, f"the frame claims {size:,} bytes, over {OBJECT_LIMIT:,}")
        payload = zstandard.ZstdDecompressor().decompress(body)
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


def load_versioned(
    key: str, data: bytes, type_: type[T], version: int | tuple[int, ...], binary: bool
) -> T:
    """Decode a stored object, refusing an unknown format version (one not ``version``, or
    not in it) before anything else."""
    decode = msgspec.msgpack.decode if binary else msgspec.json.decode
    try:
        found = decode(data, type=_Versioned).format
    except msgspec.DecodeError as exc:
        raise CorruptObject(key, str(exc)) from None
    if found not in (version if isinstance(version, tuple) else (version,)):
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

    def encode_group(
        self, raws: Sequence[bytes | memoryview], marks: bytes | None = None
    ) -> list[tuple[int, bytes | memoryview]]:
        """The stored form of a group's chunks (:meth:`encode_parts` of each), in one
        compression call: one call releases the interpreter lock once for the group instead
        of once per chunk. ``marks`` (a byte a chunk; None for all 0) tells each chunk's
        way: :data:`ALONE`, compressed as a frame of its own; :data:`PLAIN`, stored raw
        without being compressed; :data:`SHARE`, compressed with the other chunks so marked
        (and under :data:`SHARE_BELOW` bytes), in their order, in frames closed once their
        raw bytes reach :data:`FRAME_BYTES`. The first chunk of such a frame gets
        ``CODEC_SHARED`` and the frame; the others ``CODEC_SHARED`` and an empty payload:
        they are in the last frame given before them, at the offset the raw sizes of its
        chunks before them add up to. A frame that does not save a 32nd of its raw bytes
        leaves its chunks raw.
        """
        inputs: list[bytes | bytearray | memoryview] = []
        spans: list[list[int]] = []  # the chunks each input holds
        members: list[int] = []
        held = 0
        for k, raw in enumerate(raws):
            mark = ALONE if marks is None else marks[k]
            if mark == PLAIN:
                continue
            if mark == SHARE and len(raw) < SHARE_BELOW:
                members.append(k)
                held += len(raw)
                if held >= FRAME_BYTES:
                    inputs.append(_joined(raws, members))
                    spans.append(members)
                    members, held = [], 0
            else:
                inputs.append(raw)
                spans.append([k])
        if members:
            inputs.append(_joined(raws, members))
            spans.append(members)
        out: list[tuple[int, bytes | memoryview]] = [(CODEC_RAW, raw) for raw in raws]
        if not inputs:
            return out
        try:
            batch = self._compressor.multi_compress_to_buffer(inputs, threads=1)
            # Segments of the batch's output buffer (the stubs omit their buffer protocol).
            packed: Sequence[bytes | memoryview] = [
                memoryview(batch[i])  # type: ignore[arg-type]
                for i in range(len(inputs))
            ]
        except NotImplementedError:  # zstandard's CFFI backend has no batch call
            packed = [self._compressor.compress(one) for one in inputs]
        for held_by, whole, one in zip(spans, inputs, packed, strict=True):
            size = len(whole)
            if len(one) + (size >> _MIN_SAVING_SHIFT) >= size:
                continue
            first = held_by[0]
            if len(held_by) == 1:
                out[first] = (CODEC_ZSTD, one)
                continue
            out[first] = (CODEC_SHARED, one)
            for k in held_by[1:]:
                out[k] = (CODEC_SHARED, b"")
        return out

    def decode(
        self, key: str, blob: bytes | memoryview, raw_size: int, at: int | None = None
    ) -> bytes:
        raw = self.decode_borrowed(key, blob, raw_size, at)
        return raw if isinstance(raw, bytes) else bytes(raw)

    def decode_borrowed(
        self, key: str, blob: bytes | memoryview, raw_size: int, at: int | None = None
    ) -> bytes | memoryview:
        """As :meth:`decode`, but an uncompressed chunk comes back as a view of ``blob``.
        ``at`` is where a chunk of a shared frame starts in the frame's content, which
        such a blob needs (its pack-index entry's)."""
        if not blob:
            raise CorruptObject(key, "empty chunk blob")
        codec = blob[0]
        body = blob[1:]
        raw: bytes | memoryview
        if codec == CODEC_SHARED:
            if at is None:
                raise ValueError(f"{key}: a chunk of a shared frame needs its place in it")
            return member(key, self.open_shared(key, blob), at, raw_size)
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

    def open_shared(self, key: str, blob: bytes | memoryview) -> bytes:
        """The content of a shared frame (a blob of codec ``CODEC_SHARED``), whose chunks
        :func:`member` then cuts out."""
        if not blob or blob[0] != CODEC_SHARED:
            raise CorruptObject(key, "not a shared frame")
        body = blob[1:]
        try:
            size = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            raise CorruptObject(key, f"zstd: {exc}") from None
        if size < 0 or size > FRAME_LIMIT:
            raise CorruptObject(key, f"shared frame claims {size} bytes")
        try:
            return self._decompressor.decompress(body)
        except zstandard.ZstdError as exc:
            raise CorruptObject(key, f"zstd: {exc}") from None


def _joined(raws: Sequence[bytes | memoryview], which: list[int]) -> bytes | memoryview:
    return raws[which[0]] if len(which) == 1 else b"".join([raws[k] for k in which])


def member(key: str, content: bytes, at: int, size: int) -> memoryview:
    """The chunk of ``size`` bytes at ``at`` in a shared frame's ``content``."""
    if at < 0 or at + size > len(content):
        raise CorruptObject(key, f"chunk at {at}+{size} is past the frame's {len(content)} bytes")
    return memoryview(content)[at : at + size]
