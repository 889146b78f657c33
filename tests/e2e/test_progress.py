"""Progress bars: drawn when stdout is a terminal, absent when it is not."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from datamon.testing.workloads import random_bytes


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMON_")}
    env.update(HOME=str(home), DATAMON_CACHE_DIR=str(home / "cache"), TERM="xterm")
    return env


def _run(args: list[str], env: dict[str, str], tty: bool) -> str:
    cmd = [sys.executable, "-m", "datamon", *args]
    if not tty:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdout=follower, stderr=follower, stdin=follower)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_progress_only_on_a_terminal(tmp_path: Path) -> None:
    env = _env(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(random_bytes(i, 2 << 20))
    _run(["config", "create", "--name", "T", "--email", "t@example.com"], env, tty=False)
    _run(["repo", "create", "--repo", "r", "--description", "d"], env, tty=False)
    upload = ["bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r"]
    on_terminal = _run(upload, env, tty=True)
    assert "uploading" in on_terminal
    assert "Uploaded bundle id:" in on_terminal
    piped = _run(upload, env, tty=False)
    assert "uploading" not in piped
    assert "Uploaded bundle id:" in piped
    download = ["bundle", "download", "--repo", "r", "--branch", "main", "--destination"]
    assert "downloading" in _run([*download, str(tmp_path / "d1")], env, tty=True)
    assert "downloading" not in _run([*download, str(tmp_path / "d2")], env, tty=False)
