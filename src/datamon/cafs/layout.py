"""Keys of blob objects in the blob location."""

from __future__ import annotations

from datamon.core.ids import shard

PACKS = "packs/"
INDEX = "index/"


def pack_key(pack_id: str) -> str:
    return PACKS + shard(pack_id)


def index_key(pack_id: str) -> str:
    return INDEX + shard(pack_id)


def pack_id_of(key: str) -> str:
    return key.rsplit("/", 1)[-1]
