"""Encodings of stored objects: frames, chunk blobs, canonical JSON, msgspec structs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from datamon.core import codecs
from datamon.core.codecs import (
    ALONE,
    CODEC_RAW,
    CODEC_SHARED,
    CODEC_ZSTD,
    FRAME_BYTES,
    FRAME_LIMIT,
    FRAME_MAGIC,
    FRAME_VERSION,
    OBJECT_LIMIT,
    PLAIN,
    PROBE_BYTES,
    SHARE,
    SHARE_BELOW,
    ChunkCodec,
    decode_frame,
    encode_frame,
    frame,
    from_json,
    pack_msg,
    to_json,
    unpack_msg,
)
from datamon.core.ids import DIGEST_SIZE, bundle_id, digest, shard
from datamon.core.model import Author, Bundle, ChunkRef, Entry, Kind, Tree
from datamon.errors import (
    ChecksumMismatch,
    CorruptObject,
    IntegrityError,
    InvalidArgument,
    UnsupportedFormat,
)
from datamon.testing.workloads import random_bytes, text_bytes

HEADER = len(FRAME_MAGIC) + 1 + DIGEST_SIZE


# frames ---------------------------------------------------------------------------------


def test_frame_layout() -> None:
    payload = b"hello frame " * 100
    oid, framed = encode_frame(payload)
    assert oid == digest(payload)
    assert framed[:3] == FRAME_MAGIC
    assert framed[3] == FRAME_VERSION
    assert framed[4:HEADER] == oid
    assert len(framed) < len(payload)  # compressed
    assert decode_frame("k", framed) == payload
    assert decode_frame("k", framed, expected=oid) == payload


def test_frame_is_the_same_with_a_reused_compressor() -> None:
    payload = text_bytes(2, 5000)
    fresh = zstandard.ZstdCompressor(level=3).compress(payload)
    want = FRAME_MAGIC + bytes([FRAME_VERSION]) + digest(payload) + fresh
    for _ in range(2):
        assert frame(digest(payload), payload) == want
        assert encode_frame(payload) == (digest(payload), want)
    other = frame(digest(b"x" * 1000), b"x" * 1000, level=19)
    assert decode_frame("k", other) == b"x" * 1000
    assert frame(digest(payload), payload) == want  # the level-3 one is still level 3


def test_frame_of_empty_payload() -> None:
    oid, framed = encode_frame(b"")
    assert decode_frame("k", framed, expected=oid) == b""


@pytest.mark.parametrize("position", ["digest", "body-start", "body-end"])
def test_corrupted_frame_is_detected(position: str) -> None:
    _oid, framed = encode_frame(text_bytes(1, 20_000))
    at = {"digest": 10, "body-start": HEADER + 8, "body-end": len(framed) - 3}[position]
    bad = bytearray(framed)
    bad[at] ^= 0x01
    with pytest.raises((ChecksumMismatch, CorruptObject)) as info:
        decode_frame("trees/ab/abcd", bytes(bad))
    error = info.value
    assert isinstance(error, ChecksumMismatch | CorruptObject)
    assert error.key == "trees/ab/abcd"
    assert "trees/ab/abcd" in str(error)


def test_frame_with_wrong_expected_digest() -> None:
    _oid, framed = encode_frame(b"payload")
    other = digest(b"something else")
    with pytest.raises(ChecksumMismatch) as info:
        decode_frame("obj", framed, expected=other)
    assert info.value.expected == other.hex()
    assert info.value.actual == digest(b"payload").hex()


def test_frame_substituted_whole_is_detected() -> None:
    # A valid frame of other content stored under this name: the name's id must win.
    wanted, _ = encode_frame(b"the real tree")
    _other, impostor = encode_frame(b"another tree")
    with pytest.raises(ChecksumMismatch):
        decode_frame("obj", impostor, expected=wanted)


@pytest.mark.parametrize(
    "data",
    [b"", b"DM", b"XYZ\x01" + bytes(40), b"DMF\x01" + bytes(DIGEST_SIZE), b"not a frame at all"],
    ids=["empty", "short", "bad-magic", "header-only", "text"],
)
def test_not_a_frame(data: bytes) -> None:
    with pytest.raises(CorruptObject) as info:
        decode_frame("obj", data)
    assert info.value.key == "obj"


def test_truncated_frame() -> None:
    _oid, framed = encode_frame(random_bytes(2, 5_000))
    with pytest.raises((CorruptObject, ChecksumMismatch)):
        decode_frame("obj", framed[:-10])


def _zstd_header_claiming(size: int) -> bytes:
    """The start of a zstd frame whose header gives ``size`` as its content size (an 8-byte
    field, one segment), then one empty raw block: what a damaged header looks like."""
    return b"\x28\xb5\x2f\xfd" + b"\xe0" + size.to_bytes(8, "little") + b"\x01\x00\x00"


def test_a_frame_claiming_more_than_an_object_may_hold_is_refused_before_decompressing() -> None:
    payload = b"a tree"
    body = _zstd_header_claiming(OBJECT_LIMIT + 1)
    assert zstandard.frame_content_size(body) == OBJECT_LIMIT + 1
    data = FRAME_MAGIC + bytes([FRAME_VERSION]) + digest(payload) + body
    # Decompressing would fail too ("zstd: ..."), once zstd had allocated what it claims.
    with pytest.raises(CorruptObject, match=f"claims 1,073,741,825 bytes, over {OBJECT_LIMIT:,}"):
        decode_frame("trees/ab/abc", data)


def test_a_frame_recording_no_content_size_is_refused() -> None:
    payload = b"a pack index" * 100
    body = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
    data = FRAME_MAGIC + bytes([FRAME_VERSION]) + digest(payload) + body
    with pytest.raises(CorruptObject, match="records no content size"):
        decode_frame("index/ab/abc", data)
    # The same payload, framed as writers frame it, opens.
    assert decode_frame("index/ab/abc", encode_frame(payload)[1]) == payload


def test_writers_refuse_to_frame_more_than_readers_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "OBJECT_LIMIT", 1_000)
    assert decode_frame("t", encode_frame(bytes(1_000))[1]) == bytes(1_000)
    with pytest.raises(InvalidArgument, match="1,001 bytes is over the limit of 1,000"):
        encode_frame(bytes(1_001))
    # One written before the limit was lowered, say: readers refuse it all the same.
    larger = bytes(1_001)
    head = FRAME_MAGIC + bytes([FRAME_VERSION]) + digest(larger)
    with pytest.raises(CorruptObject, match="over 1,000"):
        decode_frame("t", head + zstandard.ZstdCompressor().compress(larger))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_frame_version(version: int) -> None:
    _oid, framed = encode_frame(b"payload")
    future = framed[:3] + bytes([version]) + framed[4:]
    with pytest.raises(UnsupportedFormat) as info:
        decode_frame("obj", future)
    assert info.value.version == version
    assert "obj" in str(info.value)


@given(st.binary(max_size=50_000), st.integers(min_value=1, max_value=9))
@settings(max_examples=60, deadline=None)
def test_frame_roundtrip(payload: bytes, level: int) -> None:
    oid, framed = encode_frame(payload, level=level)
    assert oid == digest(payload)
    assert decode_frame("k", framed, expected=oid) == payload


# chunk codec ----------------------------------------------------------------------------


def test_compressible_chunk_is_stored_compressed() -> None:
    codec = ChunkCodec()
    raw = text_bytes(3, 64 * 1024)
    blob = codec.encode(raw)
    assert blob[0] == CODEC_ZSTD
    assert len(blob) < len(raw) * 0.75
    assert codec.decode("c", blob, len(raw)) == raw


def test_incompressible_chunk_is_stored_raw() -> None:
    codec = ChunkCodec()
    raw = random_bytes(4, 64 * 1024)
    blob = codec.encode(raw)
    assert blob[0] == CODEC_RAW
    assert blob[1:] == raw
    assert len(blob) == len(raw) + 1
    assert codec.decode("c", blob, len(raw)) == raw


def test_barely_compressible_chunk_is_stored_raw() -> None:
    # Compression must save at least 1/32 of the size to be worth decompressing later.
    codec = ChunkCodec()
    raw = random_bytes(5, 32 * 1024) + bytes(512)  # 512 zeros save < 1/32
    assert codec.encode(raw)[0] == CODEC_RAW


def test_chunk_codec_accepts_memoryview() -> None:
    codec = ChunkCodec()
    raw = text_bytes(6, 10_000)
    assert codec.decode("c", memoryview(codec.encode(memoryview(raw))), len(raw)) == raw


def _group() -> list[bytes | memoryview]:
    return [
        text_bytes(7, 12_000),
        random_bytes(8, 9_000),
        memoryview(text_bytes(9, 40_000))[100:30_100],
        random_bytes(10, 32 * 1024) + bytes(512),  # saves less than 1/32: raw
        b"x" * 70,
    ]


def _opened(
    codec: ChunkCodec, raws: list[bytes | memoryview], stored: list[tuple[int, bytes | memoryview]]
) -> list[bytes]:
    """Each chunk read back from ``encode_group``'s output, as a pack reader would: a chunk
    of a shared frame from the frame's blob, at the raw sizes before it in the frame."""
    out: list[bytes] = []
    # A shared frame's chunks follow its first, with chunks of other frames among them.
    frame = b""
    frame_at = 0
    for raw, (codec_byte, payload) in zip(raws, stored, strict=True):
        if codec_byte != CODEC_SHARED:
            out.append(codec.decode("c", bytes([codec_byte]) + bytes(payload), len(raw)))
            continue
        if len(payload):
            frame, frame_at = bytes([codec_byte]) + bytes(payload), 0
        out.append(codec.decode("c", frame, len(raw), frame_at))
        frame_at += len(raw)
    return out


def test_encode_group_compresses_chunks_marked_to_share_together() -> None:
    codec = ChunkCodec()
    raws = _group()
    # The small random chunk alone, the large random one shareable but too large to share.
    marks = bytes([SHARE, ALONE, SHARE, SHARE, SHARE])
    stored = codec.encode_group(raws, marks)
    assert [c for c, _p in stored] == [
        CODEC_SHARED,
        CODEC_RAW,
        CODEC_SHARED,
        CODEC_RAW,
        CODEC_SHARED,
    ]
    assert [len(p) == 0 for c, p in stored if c == CODEC_SHARED] == [False, True, True]
    assert _opened(codec, raws, stored) == [bytes(raw) for raw in raws]
    for raw, (codec_byte, payload) in zip(raws[1:4:2], stored[1:4:2], strict=True):
        assert (codec_byte, bytes(payload)) == tuple(map(_plain, codec.encode_parts(raw)))


def test_encode_group_compresses_each_chunk_alone_unless_marked() -> None:
    codec = ChunkCodec()
    raws = _group()
    stored = codec.encode_group(raws)
    assert [c for c, _p in stored] == [CODEC_ZSTD, CODEC_RAW, CODEC_ZSTD, CODEC_RAW, CODEC_ZSTD]
    for raw, (codec_byte, payload) in zip(raws, stored, strict=True):
        assert (codec_byte, bytes(payload)) == tuple(map(_plain, codec.encode_parts(raw)))
    assert codec.encode_group(raws, bytes(len(raws))) == stored


def test_a_shared_frame_stores_files_alike_in_less() -> None:
    codec = ChunkCodec()
    raws: list[bytes | memoryview] = [
        json.dumps(
            [{"id": k * 100 + i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(40)]
        ).encode()
        for k in range(8)
    ]
    stored = codec.encode_group(raws, bytes([SHARE]) * 8)
    assert [c for c, _p in stored] == [CODEC_SHARED] * 8
    alone = sum(len(codec.encode(raw)) for raw in raws)
    assert len(stored[0][1]) + 1 < alone * 0.8
    assert _opened(codec, raws, stored) == raws


def _plain(part: int | bytes | memoryview) -> int | bytes:
    return part if isinstance(part, int) else bytes(part)


def test_encode_group_closes_a_frame_at_frame_bytes() -> None:
    codec = ChunkCodec()
    raws: list[bytes | memoryview] = [text_bytes(k, 20_000) for k in range(8)]
    stored = codec.encode_group(raws, bytes([SHARE]) * 8)
    heads = [k for k, (c, p) in enumerate(stored) if c == CODEC_SHARED and len(p)]
    assert heads == [0, 4]  # 4 x 20,000 bytes reach FRAME_BYTES
    assert FRAME_BYTES + SHARE_BELOW > 4 * 20_000
    assert _opened(codec, raws, stored) == raws


def test_encode_group_leaves_plain_chunks_out_of_frames() -> None:
    codec = ChunkCodec()
    raws: list[bytes | memoryview] = [text_bytes(k, 5_000) for k in range(5)]
    stored = codec.encode_group(raws, bytes([SHARE, SHARE, PLAIN, SHARE, SHARE]))
    assert [c for c, _p in stored] == [CODEC_SHARED] * 2 + [CODEC_RAW] + [CODEC_SHARED] * 2
    assert [len(p) == 0 for _c, p in stored] == [False, True, False, True, True]
    assert stored[2][1] is raws[2]
    assert _opened(codec, raws, stored) == raws


def test_encode_group_of_nothing() -> None:
    assert ChunkCodec().encode_group([]) == []
    assert ChunkCodec().encode_group([b"a"], bytes([PLAIN])) == [(CODEC_RAW, b"a")]


def test_a_shared_frame_that_does_not_compress_leaves_its_chunks_raw() -> None:
    raws: list[bytes | memoryview] = [random_bytes(k, 3_000) for k in range(4)]
    assert ChunkCodec().encode_group(raws, bytes([SHARE]) * 4) == [(CODEC_RAW, raw) for raw in raws]


def test_a_damaged_shared_frame_is_corrupt() -> None:
    codec = ChunkCodec()
    raws: list[bytes | memoryview] = [text_bytes(k, 4_000) for k in range(3)]
    (codec_byte, payload), *_rest = codec.encode_group(raws, bytes([SHARE]) * 3)
    blob = bytes([codec_byte]) + bytes(payload)
    with pytest.raises(CorruptObject, match="past the frame"):
        codec.decode("packs/ab/abc", blob, 4_000, 9_000)
    with pytest.raises(CorruptObject, match="claims"):
        # A header claiming more content than readers allow (FRAME_LIMIT).
        codec.decode(
            "p",
            bytes([CODEC_SHARED]) + zstandard.ZstdCompressor().compress(bytes(FRAME_LIMIT + 1)),
            1,
            0,
        )
    with pytest.raises(CorruptObject, match="zstd"):
        codec.decode("p", blob[:-3], 4_000, 0)


class _OneAtATime:
    """A compressor whose batch call is not implemented, as in zstandard's CFFI backend."""

    def __init__(self) -> None:
        self._inner = zstandard.ZstdCompressor(level=1)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._inner.compress(data)

    def multi_compress_to_buffer(self, data: object, threads: int = -1) -> object:
        raise NotImplementedError


def test_encode_group_without_the_batch_call() -> None:
    codec = ChunkCodec()
    batch = codec.encode_group(_group())
    codec._compressor = _OneAtATime()  # type: ignore[assignment]
    single = codec.encode_group(_group())
    assert [(c, bytes(p)) for c, p in single] == [(c, bytes(p)) for c, p in batch]


def test_empty_chunk_blob_is_corrupt() -> None:
    with pytest.raises(CorruptObject):
        ChunkCodec().decode("chunk x", b"", 0)


def test_unknown_chunk_codec() -> None:
    with pytest.raises(UnsupportedFormat) as info:
        ChunkCodec().decode("chunk x", b"\x07abc", 3)
    assert "chunk x" in str(info.value)


def test_damaged_compressed_chunk() -> None:
    codec = ChunkCodec()
    raw = text_bytes(7, 50_000)
    blob = bytearray(codec.encode(raw))
    assert blob[0] == CODEC_ZSTD
    blob[1:5] = b"\xff\xff\xff\xff"  # the zstd magic number
    with pytest.raises(CorruptObject) as info:
        codec.decode("packs/ab/abc", bytes(blob), len(raw))
    assert info.value.key == "packs/ab/abc"


@given(st.binary(max_size=100_000))
@settings(max_examples=100, deadline=None)
def test_chunk_codec_roundtrip(raw: bytes) -> None:
    codec = ChunkCodec()
    blob = codec.encode(raw)
    assert blob[0] in (CODEC_RAW, CODEC_ZSTD)
    assert len(blob) <= len(raw) + 1  # never larger than raw plus the codec byte
    assert codec.decode("c", blob, len(raw)) == raw


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=200_000))
@settings(max_examples=30, deadline=None)
def test_chunk_codec_roundtrip_text(seed: int, size: int) -> None:
    codec = ChunkCodec(level=1)
    raw = text_bytes(seed, size)
    assert codec.decode("c", codec.encode(raw), size) == raw


# canonical JSON -------------------------------------------------------------------------


def _bundle(**changes: object) -> Bundle:
    fields: dict[str, object] = {
        "format": 1,
        "repo": "r",
        "parents": ("a" * 40,),
        "message": "msg",
        "author": Author("A", "a@x"),
        "timestamp": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "tree": "ab" * 32,
        "packs": ("cd" * 32,),
        "files": 2,
        "size": 10,
    }
    fields.update(changes)
    return Bundle(**fields)  # type: ignore[arg-type]


def test_json_is_canonical() -> None:
    assert to_json({"b": 1, "a": [2, {"d": 3, "c": 4}]}) == b'{"a":[2,{"c":4,"d":3}],"b":1}'
    data = to_json(_bundle())
    assert b" " not in data.replace(b'"msg"', b"")
    keys = list(msgspec.json.decode(data))
    assert keys == sorted(keys)
    assert data == to_json(msgspec.json.decode(data))  # re-encoding a decoded dict: same bytes


def test_json_roundtrip_and_bundle_id_stability() -> None:
    bundle = _bundle()
    data = to_json(bundle)
    again = from_json("b", data, Bundle)
    assert again == bundle
    assert to_json(again) == data
    assert bundle_id(to_json(again)) == bundle_id(data)
    assert bundle_id(to_json(_bundle(message="other"))) != bundle_id(data)
    assert len(bundle_id(data)) == 40


def test_json_decode_errors_are_corrupt_object() -> None:
    with pytest.raises(CorruptObject) as info:
        from_json("bundles/r/x.json", b"{not json", Bundle)
    assert info.value.key == "bundles/r/x.json"
    with pytest.raises(CorruptObject):
        from_json("bundles/r/x.json", b'{"format": 1}', Bundle)  # fields missing
    assert issubclass(CorruptObject, IntegrityError)


def test_msgpack_decode_errors_are_corrupt_object() -> None:
    with pytest.raises(CorruptObject):
        unpack_msg("trees/x", b"\xc1\xc1", Tree)


def test_shard() -> None:
    assert shard("abcdef") == "ab/abcdef"


# msgspec structs ------------------------------------------------------------------------

names = st.text(min_size=1, max_size=40)
ints = st.integers(min_value=0, max_value=2**63 - 1)
chunk_refs = st.builds(ChunkRef, id=st.binary(min_size=32, max_size=32), size=ints)
entries = st.builds(
    Entry,
    name=names,
    kind=st.sampled_from(Kind),
    mode=st.integers(min_value=0, max_value=0o7777),
    mtime_ns=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    size=ints,
    chunks=st.lists(chunk_refs, max_size=5).map(tuple),
    target=st.text(max_size=40),
    tree=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    files=ints,
)
trees = st.builds(
    Tree,
    format=st.just(1),
    entries=st.lists(entries, max_size=8).map(tuple),
    parts=st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple),
)


@given(entries)
@settings(max_examples=200, deadline=None)
def test_entry_roundtrip(entry: Entry) -> None:
    assert unpack_msg("e", pack_msg(entry), Entry) == entry


@given(trees)
@settings(max_examples=100, deadline=None)
def test_tree_roundtrip_through_frame(tree: Tree) -> None:
    oid, framed = encode_frame(pack_msg(tree))
    assert unpack_msg("t", decode_frame("t", framed, expected=oid), Tree) == tree
    # Equal trees encode to equal bytes: the id is a function of the content.
    assert encode_frame(pack_msg(unpack_msg("t", pack_msg(tree), Tree)))[0] == oid


def test_a_probed_chunk_whose_prefix_does_not_compress_is_stored_raw_uncompressed() -> None:
    codec = ChunkCodec()
    # Random first 8 KiB, then text that zstd would shrink well.
    raw = random_bytes(21, PROBE_BYTES) + text_bytes(21, 56_000)
    kind, payload = codec.encode_parts(raw, probe=True)
    assert kind == CODEC_RAW and bytes(payload) == raw
    # Without the probe the same chunk is compressed: the probe decided, not the data.
    assert codec.encode_parts(raw)[0] == CODEC_ZSTD


def test_a_probed_chunk_whose_prefix_compresses_is_compressed_whole() -> None:
    codec = ChunkCodec()
    raw = text_bytes(22, 60_000)
    assert codec.encode_parts(raw, probe=True) == codec.encode_parts(raw)
    # Small chunks are never probed: their whole is as cheap as a prefix.
    small = random_bytes(23, 2 * PROBE_BYTES)
    assert codec.encode_parts(small, probe=True) == codec.encode_parts(small)
    assert (
        codec.decode("k", b"".join([bytes([CODEC_ZSTD]), codec.encode_parts(raw)[1]]), len(raw))
        == raw
    )


def test_a_damaged_header_digest_is_named_with_both_hashes() -> None:
    payload = b"a tree's payload"
    frame = bytearray(encode_frame(payload)[1])
    frame[20] ^= 0xFF  # in the stored digest; the payload is whole
    with pytest.raises(ChecksumMismatch) as caught:
        decode_frame("trees/ab/x", bytes(frame), expected=digest(payload))
    assert caught.value.expected != caught.value.actual
    assert caught.value.actual == digest(payload).hex()
