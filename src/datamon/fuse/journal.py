"""The journal of a writable mount whose commit failed as its process ended.

The mount's tree (what changed, and which staged files hold new content) lives in memory;
if the commit made on unmount, SIGINT or SIGTERM fails, the tree is written to
``journal.json`` in the mount's state folder next to the staged files, so that
``datamon bundle mount recover DIR`` (or ``datamon bundle unmount DIR``) can commit it later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from datamon.fuse.namespace import Node
from datamon.fuse.writable import CommitTarget

VERSION = 1


@dataclass
class Journal:
    target: CommitTarget
    base: str | None
    root: Node
    error: str = ""
    version: int = VERSION
    # The branch head the changes were made against (``StagingOperations.seen``); journals
    # written before it was kept have ``seen_known`` false: the head at recovery stands in.
    seen: str | None = None
    seen_known: bool = False


def save(path: Path, journal: Journal) -> None:
    """Write the journal atomically (a reader sees the old one or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(journal))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> Journal | None:
    """The journal at ``path``, or None if there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return msgspec.json.decode(raw, type=Journal)
