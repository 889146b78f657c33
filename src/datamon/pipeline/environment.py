"""The code version (git) and the environment (Python, platform, packages) of a run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys

from datamon.core.ids import hexdigest
from datamon.pipeline.records import CodeVersion, Environment

_GIT_TIMEOUT = 20.0


def _git(folder: str, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=folder,
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(folder: str) -> CodeVersion:
    """The git commit of ``folder``'s work tree, and a hash of its uncommitted changes."""
    if not os.path.isdir(folder):
        return CodeVersion()
    head = _git(folder, "rev-parse", "HEAD")
    if head is None:
        return CodeVersion()
    root = _git(folder, "rev-parse", "--show-toplevel")
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    dirty = bool(status and status.strip())
    diff = _git(folder, "diff", "HEAD") if dirty else None
    return CodeVersion(
        commit=head.decode().strip(),
        dirty=dirty,
        diff=hexdigest(diff) if diff is not None else None,
        root=root.decode().strip() if root else None,
    )


def environment() -> Environment:
    """Python, the platform, and every installed distribution with its version."""
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(str(name), str(dist.version))
    return Environment(
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=platform.platform(),
        packages=dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
    )
