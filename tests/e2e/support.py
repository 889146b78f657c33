"""End-to-end helpers: the ``datamon`` CLI run in a subprocess with a private HOME.

Every run gets ``HOME`` and ``DATAMON_CACHE_DIR`` pointed at temporary folders and no
``DATAMON_CONFIG`` / ``DATAMON_STORE``, so the config lands in ``$HOME/.datamon/datamon.yaml``
and the store defaults to ``$HOME/.datamon/store``, exactly as for a fresh user.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUNDLE_ID = r"[0-9a-f]{40}"
# Go's time.String() as the seed shows it: 2019-03-12 22:10:24.159704 -0700 PDT
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ [+-]\d{4} \S+"
UPLOADED = re.compile(rf"^Uploaded bundle id:({BUNDLE_ID})$")
CONFIG_ANNOUNCE = "Using config file:"
DEFAULT_TIMEOUT = 60.0
NAME = "Test User"
EMAIL = "t@example.com"

Snapshot = dict[str, tuple[object, ...]]
_FOREIGN_ENV = ("DATAMON_", "AWS_", "GOOGLE_", "AZURE_")

_BATCH_DRIVER = """
import contextlib, io, json, sys
from datamon.cli.main import cli, run
report = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(cli, args)
    report.append([args, code, out.getvalue(), err.getvalue()])
print(json.dumps(report))
"""


def _clean_env(home: Path, cache: Path, extra: Mapping[str, str]) -> dict[str, str]:
    # No Datamon settings and no cloud credentials leak in from the developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    env.update(
        HOME=str(home),
        DATAMON_CACHE_DIR=str(cache),
        # A non-terminal stdout already disables progress bars; keep click output plain too.
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """Everything about a run, for assertion messages."""
    args = result.args[3:] if isinstance(result.args, list) else result.args
    return (
        f"datamon {args!r} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
    )


@dataclass
class Datamon:
    """Runs ``python -m datamon ARGS`` as a user whose HOME is ``home``."""

    home: Path
    cache: Path
    cwd: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def at(cls, base: Path, **extra_env: str) -> Datamon:
        home, cache, cwd = base / "home", base / "cache", base / "work"
        for folder in (home, cache, cwd):
            folder.mkdir(parents=True, exist_ok=True)
        return cls(home, cache, cwd, dict(extra_env))

    @property
    def config_file(self) -> Path:
        return self.home / ".datamon" / "datamon.yaml"

    @property
    def default_store(self) -> Path:
        return self.home / ".datamon" / "store"

    @property
    def env(self) -> dict[str, str]:
        return _clean_env(self.home, self.cache, self.extra_env)

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool | None = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI. ``check=True`` wants exit 0, ``False`` wants non-zero, None either."""
        result = subprocess.run(
            [sys.executable, "-m", "datamon", *(os.fspath(a) for a in args)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        if check is True and result.returncode != 0:
            pytest.fail(describe(result), pytrace=False)
        if check is False and result.returncode == 0:
            pytest.fail("expected a failure\n" + describe(result), pytrace=False)
        return result

    def batch(self, commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
        """Run several commands in one subprocess, through the CLI's own entry point.

        Starting Python and importing Datamon costs ~0.3 s; this pays it once for commands
        whose process boundary does not matter (help texts, setting up many bundles).
        """
        done = subprocess.run(
            [sys.executable, "-c", _BATCH_DRIVER, json.dumps([list(c) for c in commands])],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            timeout=DEFAULT_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(describe(done), pytrace=False)
        report = json.loads(done.stdout)
        assert len(report) == len(commands), describe(done)
        return [
            subprocess.CompletedProcess(
                [sys.executable, "-m", "datamon", *args], code, stdout=out, stderr=err
            )
            for args, code, out, err in report
        ]

    def prepare(
        self,
        repo: str,
        uploads: Sequence[Sequence[str | Path]] = (),
        *,
        description: str = "made by a test",
        configure: bool = True,
        create: bool = True,
    ) -> list[str]:
        """Set-up in one process: config, ``repo``, then ``uploads``; returns the bundle ids.

        Each upload is ``(path, message, *extra_flags)``.
        """
        commands: list[list[str]] = []
        if configure:
            commands.append(["config", "create", "--name", NAME, "--email", EMAIL])
        if create:
            commands.append(["repo", "create", "--repo", repo, "--description", description])
        for path, message, *extra in uploads:
            flags = ["--path", path, "--message", message, "--repo", repo, *extra]
            commands.append(["bundle", "upload", *(os.fspath(f) for f in flags)])
        results = self.batch(commands)
        for result in results:
            if result.returncode != 0:
                pytest.fail(describe(result), pytrace=False)
        return [uploaded_id(r) for r in results[len(commands) - len(uploads) :]]

    # the seed's steps, as helpers -------------------------------------------------------

    def configure(self, *extra: str, name: str = NAME, email: str = EMAIL) -> None:
        self("config", "create", "--name", name, "--email", email, *extra)

    def upload(self, path: Path, repo: str, message: str, *extra: str) -> str:
        """``bundle upload``; returns the id printed on the last stdout line."""
        result = self(
            "bundle", "upload", "--path", path, "--message", message, "--repo", repo, *extra
        )
        return uploaded_id(result)


def uploaded_id(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stdout.splitlines()
    assert lines, describe(result)
    match = UPLOADED.match(lines[-1])
    assert match, f"last stdout line is not 'Uploaded bundle id:<id>'\n{describe(result)}"
    return match.group(1)


def stdout_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the ``Using config file:`` announcement."""
    return [ln for ln in result.stderr.splitlines() if not ln.startswith(CONFIG_ANNOUNCE)]


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, one ``error:`` line on stderr, no traceback; returns that line."""
    text = describe(result)
    assert result.returncode != 0, text
    assert "Traceback" not in result.stderr + result.stdout, text
    lines = stderr_lines(result)
    assert len(lines) == 1, text
    assert lines[0].startswith("error:"), text
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in the error line\n{text}"
    return lines[0]


# trees ------------------------------------------------------------------------------------


def make_tree(root: Path, seed: int = 1) -> Path:
    """A small tree: files, a nested folder, an empty folder, symlinks, a 0755 script."""
    rng = random.Random(seed)
    (root / "data" / "nested").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("hello datamon\n")
    (root / "data" / "values.csv").write_text(
        "id,value\n" + "".join(f"{i},{rng.random():.6f}\n" for i in range(200))
    )
    (root / "data" / "nested" / "deep.bin").write_bytes(rng.randbytes(3000))
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "link").symlink_to("a.txt")
    (root / "data" / "nested" / "up").symlink_to("../../a.txt")
    return root


def snapshot(root: Path, *, mtimes: bool = False) -> Snapshot:
    """Every entry below ``root``: kind, permission bits, content or link target."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                when = (st.st_mtime_ns,) if mtimes else ()
                found[rel] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes(), *when)
    return found


def tree_files(root: Path) -> dict[str, int]:
    """Files and symlinks (what ``bundle list files`` shows) with their sizes (0 for links)."""
    found: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            st = full.lstat()
            if not stat.S_ISDIR(st.st_mode):
                found[full.relative_to(root).as_posix()] = (
                    0 if stat.S_ISLNK(st.st_mode) else st.st_size
                )
    return found


def shortest_unique_prefix(target: str, others: Sequence[str]) -> str:
    for n in range(1, len(target) + 1):
        prefix = target[:n]
        if not any(o != target and o.startswith(prefix) for o in others):
            return prefix
    return target
