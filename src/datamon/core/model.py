"""Value objects stored in a Datamon store. See docs/design.md for their encodings."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

FORMAT_VERSION = 1
# Pack indexes have a version of their own (design §2): 2 added an entry's offset in a shared
# frame (``PackEntry.at``). Readers read both; writers write 2.
PACK_INDEX_FORMAT = 2
PACK_INDEX_FORMATS = (1, 2)


class Kind(enum.IntEnum):
    FILE = 0
    DIR = 1
    SYMLINK = 2


class ChunkerParams(msgspec.Struct, frozen=True):
    """FastCDC's parameters, written into a store's config when it is created.

    The defaults give chunks of about 192 KiB (pyfastcdc's average is ``avg_size + min_size``).
    Stores created before these defaults keep the 16/48/256 KiB they were created with.
    """

    algorithm: str = "fastcdc2020"
    min_size: int = 64 * 1024
    avg_size: int = 128 * 1024
    max_size: int = 1024 * 1024
    normalization: int = 1
    seed: int = 0

    @property
    def typical_size(self) -> int:
        """The average chunk these parameters give, as pyfastcdc documents it."""
        return self.avg_size + self.min_size


class StoreConfig(msgspec.Struct, frozen=True):
    """``config.json`` at the root of the metadata location."""

    format: int
    id: str
    created: datetime
    chunker: ChunkerParams = ChunkerParams()
    compression_level: int = 1
    pack_size: int = 16 * 1024 * 1024


class ChunkRef(msgspec.Struct, array_like=True, frozen=True):
    """One chunk of a file: its BLAKE3 id and its raw (uncompressed) size."""

    id: bytes
    size: int


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One name in a directory tree."""

    name: str
    kind: Kind
    mode: int
    mtime_ns: int
    size: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    target: str = ""
    tree: bytes = b""
    files: int = 0


class Tree(msgspec.Struct, frozen=True, omit_defaults=True):
    """A directory. Large directories list their entries in ``parts``, each a Tree of entries."""

    format: int
    entries: tuple[Entry, ...] = ()
    parts: tuple[bytes, ...] = ()


class PackEntry(msgspec.Struct, array_like=True, frozen=True):
    id: bytes
    offset: int
    length: int
    size: int
    # Where the chunk starts in the content of a shared frame (codec 2); 0 otherwise, and
    # absent from the entries of a version 1 pack index.
    at: int = 0


class PackIndex(msgspec.Struct, frozen=True):
    format: int
    pack: str
    entries: tuple[PackEntry, ...]


class Author(msgspec.Struct, frozen=True):
    name: str
    email: str


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable snapshot of a tree. Its id is derived from its canonical JSON."""

    format: int
    repo: str
    parents: tuple[str, ...]
    message: str
    author: Author
    timestamp: datetime
    tree: str
    packs: tuple[str, ...]
    files: int
    size: int
    branch: str = ""


class RefMove(msgspec.Struct, frozen=True, kw_only=True):
    bundle: str
    previous: str | None
    timestamp: datetime
    author: str


class Ref(msgspec.Struct, frozen=True, kw_only=True):
    """A label or a branch: its current bundle and every move it has made."""

    format: int
    kind: str
    name: str
    bundle: str
    timestamp: datetime
    history: tuple[RefMove, ...] = ()


class Repo(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    name: str
    description: str
    created: datetime
    author: Author
