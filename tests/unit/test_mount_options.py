"""What a mount holds in memory follows --cache-size (no FUSE needed to check)."""

from __future__ import annotations

import pytest

from datamon import Store
from datamon.fuse.mount import MountOptions, Reading

MiB = 1 << 20


@pytest.mark.parametrize(
    ("cache_size", "stream", "memory", "prefetch"),
    [
        # Prefetch: at most half the memory bound in the store's typical chunks (192 KiB).
        (64 * MiB, False, 16 * MiB, 42),
        (256 * MiB, False, 64 * MiB, 170),
        (1024 * MiB, False, 128 * MiB, 256),
        (16 * 1024 * MiB, False, 128 * MiB, 256),
        (0, True, 16 * MiB, 42),
    ],
)
def test_memory_bound_and_prefetch_follow_the_cache_size(
    local_store: Store, cache_size: int, stream: bool, memory: int, prefetch: int
) -> None:
    options = MountOptions(cache_size=cache_size, stream=stream)
    assert options.memory_bound == memory
    reading = Reading(local_store, "r", options)
    try:
        assert reading.readahead.max_bytes == memory
        assert reading.readahead.prefetch == prefetch
    finally:
        reading.readahead.close()


def test_an_explicit_memory_bound_wins(local_store: Store) -> None:
    assert MountOptions(cache_size=64 * MiB, memory=200 * MiB).memory_bound == 200 * MiB
