"""What a running mount leaves for the commands that find it later, and the checks made
before mounting so that a bad request fails with one clear error and leaves nothing behind.

A mount's state lives in ``<cache dir>/mounts/<key>/``, the key derived from the mountpoint:
``state.json`` (process id, repo, bundle, writable), the control socket ``ctl.sock`` and, for
a writable mount, the ``staging`` folder of written files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from datamon.config import cache_dir
from datamon.errors import DatamonError


class MountError(DatamonError):
    """A mount cannot start, be found, commit or end; the message says why and what to do."""


@dataclass(frozen=True)
class MountInfo:
    pid: int
    mountpoint: str
    repo: str
    bundle: str | None
    writable: bool


class MountState:
    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = os.path.realpath(mountpoint)
        key = hashlib.sha256(self.mountpoint.encode()).hexdigest()[:16]
        self.folder = cache_dir() / "mounts" / key

    @property
    def socket(self) -> str:
        return str(self.folder / "ctl.sock")

    @property
    def staging(self) -> str:
        return str(self.folder / "staging")

    @property
    def journal(self) -> Path:
        """The tree of a writable mount whose final commit failed (see ``journal.py``)."""
        return self.folder / "journal.json"

    @property
    def log(self) -> Path:
        return self.folder.with_suffix(".log")

    def read(self) -> MountInfo | None:
        try:
            raw = json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return MountInfo(**raw)

    def write(self, info: MountInfo) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(info)))
        os.replace(tmp, self.folder / "state.json")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def rescue(self) -> tuple[str, int] | None:
        """Move the files a killed mount staged out of its state folder, which is then
        removed: ``(where, how many)``, or None if it staged none. Their content is whole as
        far as it was written; the paths they had in the mount died with its process."""
        staged = [p for p in Path(self.staging).rglob("*") if p.is_file()]
        if not staged:
            return None
        where = self.folder.parent / f"lost-{self.folder.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(self.staging, where)
        return str(where), len(staged)

    def live(self) -> MountInfo | None:
        """The state of the mount process, if it is still running."""
        info = self.read()
        return info if info is not None and alive(info.pid) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # A zombie has exited; only its parent has not collected it yet.
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def mounted(path: str) -> bool:
    """Whether something (alive or not) is mounted at ``path``, as the kernel lists it."""
    real = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return os.path.ismount(real)
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and _unescape(fields[1]) == real:
            return True
    return False


def _unescape(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def check_mountpoint(path: str) -> str:
    """The mountpoint's real path, if it is an existing, empty folder with nothing mounted."""
    if not os.path.lexists(path):
        raise MountError(f"mountpoint {path} does not exist: create an empty folder first")
    real = os.path.realpath(path)
    hint = f"run `datamon bundle unmount {path}` first"
    try:
        is_dir = os.path.isdir(real) and not os.path.islink(path)
        if mounted(real) or os.path.ismount(real):
            raise MountError(f"mountpoint {path} is busy: something is mounted there; {hint}")
        names = os.listdir(real) if is_dir else []
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(f"mountpoint {path} is busy: its mount process died; {hint}") from None
        raise MountError(f"mountpoint {path} cannot be read: {exc.strerror}") from None
    if not is_dir:
        raise MountError(f"mountpoint {path} is not a folder")
    if names:
        raise MountError(f"mountpoint {path} is not empty ({len(names)} entries)")
    if (MountState(real).folder / "journal.json").exists():
        raise MountError(
            f"mountpoint {path} has changes kept from a failed commit: run "
            f"`datamon bundle mount recover {path}` first"
        )
    if MountState(real).live() is not None:
        raise MountError(f"mountpoint {path} is busy: a mount process is serving it; {hint}")
    return real


def check_writable(folder: Path, what: str) -> None:
    """Refuse now, rather than on the first read, a local folder the mount cannot write."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MountError(f"the {what} {folder} is not writable: {reason}") from None
