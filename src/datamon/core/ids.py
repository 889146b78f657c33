"""Object ids: BLAKE3 digests, and the short ids that name bundles."""

from __future__ import annotations

import re

import blake3

DIGEST_SIZE = 32
BUNDLE_ID_BYTES = 20
_HEX = re.compile(r"^[0-9a-f]+$")


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte BLAKE3 digest of ``data``."""
    return blake3.blake3(data).digest()


def hexdigest(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def bundle_id(canonical: bytes) -> str:
    """A bundle's id: the first 20 bytes of the BLAKE3 of its stored form, in hex."""
    return blake3.blake3(canonical).digest()[:BUNDLE_ID_BYTES].hex()


def is_hex(text: str) -> bool:
    return bool(_HEX.match(text))


def shard(oid: str) -> str:
    """The key fragment ``ab/abcdef...`` that spreads ids over 256 folders."""
    return f"{oid[:2]}/{oid}"
