"""Serving a mount in this process, and the commands that talk to a running one.

The FUSE loop runs in the foreground until the mountpoint is unmounted or the process gets
SIGINT or SIGTERM (libfuse handles both by leaving its loop and unmounting). A writable mount
then commits what is staged. A control socket lets ``datamon bundle mount commit`` and
``datamon bundle unmount`` ask the process to commit.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamon.api.store import Store
from datamon.cafs.chunkcache import DEFAULT_CACHE_SIZE, CachedChunkReader, ChunkCache
from datamon.fs.view import BundleView, TreeCache
from datamon.fuse.journal import Journal
from datamon.fuse.journal import load as load_journal
from datamon.fuse.journal import save as save_journal
from datamon.fuse.readahead import DEFAULT_MEMORY, DEFAULT_TIMEOUT, ReadAhead
from datamon.fuse.readonly import BundleOperations
from datamon.fuse.state import MountError, MountInfo, MountState, alive, mounted
from datamon.fuse.writable import CommitTarget, StagingOperations

log = logging.getLogger("datamon.fuse")

# Python's own collection thresholds.
DEFAULT_GC = (700, 10, 10)

READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 120.0
CONTROL_TIMEOUT = 600.0
# Bundles never change: the kernel may keep pages and attributes as long as it likes.
FOREVER = 86400.0
# The kernel's read-ahead on a mount, when it may be set: FUSE's largest request.
READ_AHEAD_KB = 1024
# Idle threads libfuse 3 keeps waiting for requests (its default before 3.12). Given
# explicitly: left unset, some libfuse 3 releases (3.14 here) log "Ignoring invalid max
# threads value 4294967295" on every mount.
IDLE_THREADS = 10


MIN_MEMORY = 16 << 20


@dataclass(frozen=True)
class MountOptions:
    """How a mount reads: ``prefetch`` chunks ahead on sequential reads, a disk chunk cache
    of ``cache_size`` bytes (none with ``stream``) in the folder ``chunks`` (by default
    ``chunks`` in the store's cache folder), at most ``memory`` bytes of chunks held.

    Without ``memory``, the chunks held follow the cache size: a quarter of it, between
    16 MiB and 128 MiB, so a smaller ``--cache-size`` makes a smaller mount process.
    """

    prefetch: int = 256
    cache_size: int = DEFAULT_CACHE_SIZE
    stream: bool = False
    memory: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    chunks: str | None = None

    @property
    def memory_bound(self) -> int:
        if self.memory is not None:
            return self.memory
        return max(MIN_MEMORY, min(DEFAULT_MEMORY, self.cache_size // 4))


class Reading:
    """The chunk reader and the bundle views of one mount."""

    def __init__(self, store: Store, repo: str, options: MountOptions) -> None:
        cache = None
        if options.cache_size > 0 and not options.stream:
            folder = Path(options.chunks) if options.chunks else store.cache_dir / "chunks"
            cache = ChunkCache(folder, options.cache_size)
        self.store = store
        self.repo = repo
        self.trees = TreeCache(store.trees)
        reader = CachedChunkReader(store.reader, cache)
        self.readahead = ReadAhead(
            reader,
            options.prefetch,
            options.memory_bound,
            options.timeout,
            chunk_size=store.config.chunker.typical_size,
        )

    def view(self, bid: str | None) -> BundleView:
        return BundleView(self.store, self.repo, bid, self.trees, self.readahead.reader)


def serve_readonly(
    store: Store, repo: str, bid: str, mountpoint: str, options: MountOptions
) -> None:
    reading = Reading(store, repo, options)
    ops = BundleOperations(reading.view(bid), reading.readahead)
    info = MountInfo(os.getpid(), mountpoint, repo, bid, writable=False)
    fuse_options: dict[str, Any] = {"ro": True, "kernel_cache": True}
    fuse_options |= {"attr_timeout": FOREVER, "entry_timeout": FOREVER}
    try:
        _serve(ops, info, fuse_options, {})
    finally:
        reading.readahead.close()


def serve_writable(
    store: Store,
    target: CommitTarget,
    base: str | None,
    mountpoint: str,
    options: MountOptions,
    on_commit: Callable[[dict[str, Any]], None],
    seen: str | None = None,
    seen_known: bool = False,
) -> None:
    """Serve until unmounted, then commit what is staged. If that commit fails, the staged
    files stay in the mount's state folder and the error is raised. ``seen`` is the branch
    head the command saw as it started the mount (when ``seen_known``)."""
    reading = Reading(store, target.repo, options)
    state = MountState(mountpoint)
    ops = StagingOperations(
        store,
        target,
        reading.view(base),
        reading.view,
        reading.readahead,
        state.staging,
        seen,
        seen_known,
    )
    info = MountInfo(os.getpid(), mountpoint, target.repo, base, writable=True)
    try:
        _serve(ops, info, {"attr_timeout": 1.0, "entry_timeout": 1.0}, {"commit": ops})
        try:
            reply = _commit(ops)
        except Exception as exc:
            _keep(state, ops, exc)
            raise MountError(
                f"the commit of {mountpoint} failed: {type(exc).__name__}: {exc}; the changes "
                f"are kept: run `datamon bundle mount recover {mountpoint}` to commit them"
            ) from exc
        on_commit(reply)
    finally:
        reading.readahead.close()
    ops.discard()
    state.remove()  # committed: nothing is left for recover, and no pid to mistake later


def _keep(state: MountState, ops: StagingOperations, exc: Exception) -> None:
    """Write the tree of a mount whose final commit failed, for :func:`recover`."""
    with ops.locked():
        found = Journal(
            ops.target,
            ops.tree.view.bid,
            ops.tree.root,
            f"{type(exc).__name__}: {exc}",
            seen=ops.seen,
            seen_known=True,
        )
        save_journal(state.journal, found)
    log.warning("commit failed (%s): changes kept in %s", exc, state.folder)


def pending_journal(mountpoint: str) -> Journal | None:
    """The journal a mount left when its final commit failed, if any."""
    return load_journal(MountState(mountpoint).journal)


def recover(
    store: Store, mountpoint: str, options: MountOptions | None = None
) -> dict[str, Any] | None:
    """Commit the changes a writable mount kept when its final commit failed; None if it
    kept none. On failure they stay kept, and this can be run again."""
    state = MountState(mountpoint)
    found = load_journal(state.journal)
    if found is None:
        return None
    live = state.live()
    if live is not None:
        raise MountError(f"{mountpoint} is still served by process {live.pid}")
    if mounted(state.mountpoint):
        _fusermount("-u", "-z", state.mountpoint)
    reading = Reading(store, found.target.repo, options or MountOptions(stream=True))
    try:
        ops = StagingOperations(
            store,
            found.target,
            reading.view(found.base),
            reading.view,
            reading.readahead,
            state.staging,
        )
        ops.tree.root = found.root
        if found.seen_known:
            ops.seen = found.seen
        try:
            reply = _commit(ops)
        except Exception as exc:
            raise MountError(
                f"the commit of the changes kept for {mountpoint} failed again: "
                f"{type(exc).__name__}: {exc}; they are still kept"
            ) from exc
    finally:
        reading.readahead.close()
    state.remove()
    return reply


def _commit(ops: StagingOperations) -> dict[str, Any]:
    result = ops.commit()
    if result is None:
        return {"ok": True, "bundle": None}
    return {"ok": True, "bundle": result.bundle_id, "new_chunks": result.new_chunks}


def _FUSE(mfusepy: Any) -> Any:
    """mfusepy's ``FUSE``, but a rename's flags reach the operations: mfusepy drops them, so
    an exchange of two files (``RENAME_EXCHANGE``) was done as a plain rename, losing one."""

    class FUSE(mfusepy.FUSE):  # type: ignore[misc]
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            if not flags:
                return int(self.rename_fuse_2(old, new))
            names = (old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors))
            return int(self.operations.rename(*names, flags))

    return FUSE


def _loop_options(mfusepy: Any) -> dict[str, Any]:
    """Options of libfuse 3's request loop; libfuse 2 knows none of them."""
    return {"max_idle_threads": IDLE_THREADS} if mfusepy.fuse_version_major == 3 else {}


def _serve(
    ops: object, info: MountInfo, fuse_options: dict[str, Any], control: dict[str, Any]
) -> None:
    import mfusepy  # type: ignore[import-untyped]

    # A mount runs for long and its memory is bounded: collect cycles at Python's usual
    # pace, not at the sparse one the command line sets for bulk uploads.
    gc.set_threshold(*DEFAULT_GC)
    state = MountState(info.mountpoint)
    state.remove()
    state.write(info)
    server = _control_server(state, control)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="datamon-control")
    thread.start()
    widen = threading.Thread(
        target=_widen_readahead,
        args=(info.mountpoint, lambda: bool(getattr(ops, "started", False))),
        daemon=True,
        name="datamon-readahead",
    )
    widen.start()
    try:
        _FUSE(mfusepy)(
            ops,
            info.mountpoint,
            foreground=True,
            fsname=f"datamon:{info.repo}",
            subtype="datamon",
            **_loop_options(mfusepy),
            **fuse_options,
        )
    except RuntimeError as exc:
        # libfuse 3 reports leaving its loop on SIGINT/SIGTERM as an error too; once the
        # file system was initialised, that is the normal end of a mount.
        if not getattr(ops, "started", False):
            raise MountError(f"could not mount {info.mountpoint}: libfuse returned {exc}") from None
        log.info("mount of %s ended by a signal (libfuse returned %s)", info.mountpoint, exc)
    finally:
        server.shutdown()
        server.server_close()
        with contextlib.suppress(OSError):
            os.unlink(state.socket)
    if not control:
        state.remove()


def _widen_readahead(mountpoint: str, started: Callable[[], bool]) -> None:
    """Let the kernel read ahead READ_AHEAD_KB at a time on this mount, not 128 KiB.

    Sequential reads then reach the file system as 1 MiB requests instead of 128 KiB ones
    (about a quarter faster here). It takes write access to /sys/class/bdi, which only
    root has; otherwise the kernel's default stays.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while not (started() and os.path.ismount(mountpoint)):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    try:
        dev = os.stat(mountpoint).st_dev
        if os.major(dev) != 0:
            return  # not an anonymous (FUSE) device: the mount is gone
        knob = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(knob, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("kept the kernel's read-ahead for %s: %s", mountpoint, exc)
        return
    log.info("kernel read-ahead for %s set to %d KiB", mountpoint, READ_AHEAD_KB)


def _control_server(state: MountState, control: dict[str, Any]) -> socketserver.UnixStreamServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request = json.loads(self.rfile.readline() or b"{}")
            op = request.get("op")
            try:
                if op == "commit" and "commit" in control:
                    reply = _commit(control["commit"])
                elif op == "status":
                    reply = {"ok": True, "pid": os.getpid()}
                else:
                    reply = {"ok": False, "error": f"unknown request {op!r}"}
            except Exception as exc:
                log.warning("commit failed: %s", exc)
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    with contextlib.suppress(OSError):
        os.unlink(state.socket)
    return socketserver.UnixStreamServer(state.socket, Handler)


# talking to a running mount -----------------------------------------------------------------


def request(mountpoint: str, op: str) -> dict[str, Any]:
    """Send ``op`` to the process serving ``mountpoint`` and return its reply."""
    state = MountState(mountpoint)
    if state.live() is None:
        raise MountError(f"no running datamon mount at {mountpoint}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONTROL_TIMEOUT)
        try:
            sock.connect(state.socket)
            sock.sendall(json.dumps({"op": op}).encode() + b"\n")
            raw = sock.makefile("rb").readline()
        except OSError as exc:
            raise MountError(f"the mount at {mountpoint} did not answer: {exc}") from None
    reply: dict[str, Any] = json.loads(raw or b'{"ok": false, "error": "no reply"}')
    if not reply.get("ok"):
        raise MountError(f"{op} failed at {mountpoint}: {reply.get('error')}")
    return reply


def commit(mountpoint: str) -> dict[str, Any]:
    """Commit what a writable mount has staged; on failure it stays staged."""
    info = MountState(mountpoint).live()
    if info is not None and not info.writable:
        raise MountError(f"{mountpoint} is a read-only mount: nothing to commit")
    return request(mountpoint, "commit")


def unmount(mountpoint: str) -> dict[str, Any] | None:
    """Commit (if writable), unmount and wait for the process to end; a mount whose process
    died is detached lazily. Returns the commit reply of a writable mount."""
    state = MountState(mountpoint)
    path = state.mountpoint
    info = state.live()
    if info is None:
        if load_journal(state.journal) is not None:
            raise MountError(
                f"{mountpoint} has changes kept from a failed commit: run "
                f"`datamon bundle mount recover {mountpoint}` to commit them"
            )
        stale = state.read() is not None
        if mounted(path):
            _fusermount("-u", "-z", path)
        elif not stale:
            raise MountError(f"nothing is mounted at {mountpoint}")
        rescued = state.rescue()
        state.remove()
        if rescued is None:
            return None
        return {"ok": False, "bundle": None, "kept": rescued[0], "files": rescued[1]}
    reply = commit(path) if info.writable else None
    _fusermount("-u", path)
    deadline = time.monotonic() + EXIT_TIMEOUT
    while alive(info.pid):
        if time.monotonic() > deadline:
            raise MountError(f"the mount process {info.pid} did not exit after unmounting")
        time.sleep(0.05)
    return reply


def _fusermount(*args: str) -> None:
    try:
        done = subprocess.run(["fusermount3", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MountError("fusermount3 not found: install fuse3") from None
    if done.returncode != 0:
        reason = done.stderr.strip() or f"exit code {done.returncode}"
        if "busy" in reason.lower():
            reason += " (close the files open under it, or leave the folder)"
        raise MountError(f"could not unmount {args[-1]}: {reason}")


def wait_ready(mountpoint: str, process: subprocess.Popen[bytes], log_file: str) -> None:
    """Return once ``mountpoint`` is mounted by ``process``; raise with its last log line if
    it exits first or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not os.path.ismount(mountpoint):
        code = process.poll()
        if code is not None:
            raise MountError(_last_error(log_file) or f"mount process exited with code {code}")
        if time.monotonic() > deadline:
            process.terminate()
            raise MountError(f"{mountpoint} was not mounted within {READY_TIMEOUT:.0f}s")
        time.sleep(0.05)


def _last_error(log_file: str) -> str:
    with contextlib.suppress(OSError), open(log_file, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
        for line in reversed(lines):
            if line.startswith("error:"):
                return line.removeprefix("error:").strip()
        return lines[-1] if lines else ""
    return ""
