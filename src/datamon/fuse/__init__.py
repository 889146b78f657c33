"""FUSE mounts of bundles: read-only (lazy chunk reads with read-ahead) and writable
(changes staged on local disk, committed as one new bundle).

The binding is mfusepy, the maintained fork of fusepy: a ctypes binding over libfuse 3, so it
needs no compiler or libfuse headers (only the ``fuse3`` package), and its synchronous,
path-based operations map directly onto the path lookups of :class:`BundleView`. pyfuse3 is
inode-based and async (trio), which would mean an inode table and an event loop around our
blocking reads for no gain here. mfusepy is imported only when a mount starts, so the CLI
starts without it.
"""

from datamon.fuse.mount import (
    MountOptions,
    commit,
    pending_journal,
    recover,
    serve_readonly,
    serve_writable,
    unmount,
)
from datamon.fuse.state import MountError, MountState, check_mountpoint, check_writable
from datamon.fuse.writable import CommitTarget

__all__ = [
    "CommitTarget",
    "MountError",
    "MountOptions",
    "MountState",
    "check_mountpoint",
    "check_writable",
    "commit",
    "pending_journal",
    "recover",
    "serve_readonly",
    "serve_writable",
    "unmount",
]
