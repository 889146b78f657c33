"""The loop of an upload's worker process (started by :mod:`datamon.cafs.workers`).

A worker reads, cuts, hashes and (if asked) compresses groups of small files. It reads
requests from one pipe and answers each, in order, on another: frames of a 4-byte
little-endian length and a MessagePack body. The chunks go into a slot of the shared
mapping the request names; the reply carries their ids and sizes. This module imports only
what that needs, since every worker imports it at its start.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from typing import IO

import msgspec

from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.kinds import chunk_marks
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkerParams

# The largest group's raw bytes: the groups of an upload close once they reach 8 MiB, so the
# last file (at most 1 MiB, the small-file limit) may take one past that; a stored chunk is
# never larger than its raw bytes.
SLOT_BYTES = 10 << 20
LENGTH = struct.Struct("<I")
# Replies: a group's results, or the OSError reading one of its files raised; and the one
# frame a worker sends once it has started.
OK = "ok"
OS_ERROR = "oserror"
READY = "ready"


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame's body; None at the end of the stream (EOFError if cut short)."""
    head = stream.read(LENGTH.size)
    if not head:
        return None
    if len(head) < LENGTH.size:
        raise EOFError("a frame cut short")
    (size,) = LENGTH.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("a frame cut short")
    return body


def _encode(
    chunker: FastCDCChunker,
    codec: ChunkCodec,
    shared: mmap.mmap,
    paths: list[str],
    sizes: list[int],
    slot: int,
    compress: bool,
    plain: bytes | None = None,
) -> tuple[list[int], bytes, list[int], bytes | None, list[int] | list[bytes]]:
    """In a worker: the group's chunk counts per file, chunk ids (joined), raw sizes, codec
    bytes (None without ``compress``) and payload sizes; the payloads (the raw chunks
    without ``compress``) are written, in order, to the slot. With ``plain`` (a byte a
    file), the chunks of the files marked 1 are stored raw without being compressed. Files
    that grew since they were stat'ed may not fit: the payloads are then returned instead
    of their sizes."""
    read = FastCDCChunker.read
    counts: list[int] = []
    ids: list[bytes] = []
    raws: list[bytes] = []
    for path, size in zip(paths, sizes, strict=True):
        before = len(raws)
        for raw in chunker.chunks_of(read(path, size)):
            ids.append(digest(raw))
            raws.append(raw)
        counts.append(len(raws) - before)
    sizes_out = [len(raw) for raw in raws]
    codecs: bytes | None = None
    payloads: Sequence[bytes | memoryview] = raws
    if compress:
        encoded = codec.encode_group(raws, chunk_marks(plain, counts))
        codecs = bytes(codec_byte for codec_byte, _payload in encoded)
        payloads = [payload for _codec, payload in encoded]
    if sum(len(payload) for payload in payloads) > SLOT_BYTES:
        return counts, b"".join(ids), sizes_out, codecs, [bytes(p) for p in payloads]
    at = slot * SLOT_BYTES
    stored: list[int] = []
    for payload in payloads:
        n = len(payload)
        shared[at : at + n] = payload
        at += n
        stored.append(n)
    return counts, b"".join(ids), sizes_out, codecs, stored


def serve(source: IO[bytes], sink: IO[bytes], memfd: int) -> None:
    """A worker's loop: a set-up frame, then one reply per request, until ``source`` ends."""
    setup = read_frame(source)
    if setup is None:
        return
    params, level, slots = msgspec.msgpack.decode(setup)
    shared = mmap.mmap(memfd, SLOT_BYTES * slots)
    os.close(memfd)
    chunker = FastCDCChunker(msgspec.convert(params, ChunkerParams))
    codec = ChunkCodec(level)

    def reply(message: object) -> None:
        sink.write(frame(msgspec.msgpack.encode(message)))
        sink.flush()

    reply(READY)
    while (request := read_frame(source)) is not None:
        paths, sizes, slot, compress, plain = msgspec.msgpack.decode(request)
        try:
            result = _encode(chunker, codec, shared, paths, sizes, slot, compress, plain)
        except OSError as exc:
            reply([OS_ERROR, exc.errno, exc.strerror, exc.filename])
            continue
        reply([OK, *result])


def main(requests: int, replies: int, memfd: int) -> None:
    """A worker process's entry (see ``workers._BOOT``): requests and replies on those
    pipes, the shared mapping on ``memfd``."""
    with open(requests, "rb") as source, open(replies, "wb") as sink:
        serve(source, sink, memfd)
