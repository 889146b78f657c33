"""An upload killed part-way leaves no visible bundle, and the next upload reuses its chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.config import CACHE_ENV
from datamon.storage.local import TMP_MARK
from datamon.testing.workloads import MiB, describe_tree, large_files

TOTAL = 200 * MiB
REPO = "big"
STORED_TIMEOUT = 60.0

WORKER = f"""
import sys
from datamon import Author, Repository, Store, UploadOptions

store = Store.open(sys.argv[1])
who = Author("killed", "killed@example.com")
repo = Repository(store, {REPO!r})
repo.upload(sys.argv[2], UploadOptions("never lands", who, label="never", concurrency=1))
print("finished")
"""


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big") / "src"
    stats = large_files(root, TOTAL, 8 * MiB, seed=7)
    assert stats.bytes == TOTAL
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "test-cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


def _files_under(folder: Path) -> list[Path]:
    """Whole objects below ``folder``: the local backend's temporary files do not count."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and TMP_MARK not in p.name]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_upload(
    big_tree: Path, tmp_path: Path, cache: Path, sig: signal.Signals
) -> None:
    location = tmp_path / "store"
    author = Author("tester", "tester@example.com")
    Repository.create(Store.open(str(location)), REPO, "", author)

    # The writer keeps its own cache: what it leaves must be found through the store alone.
    env = dict(os.environ)
    env[CACHE_ENV] = str(tmp_path / "writer-cache")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(location), str(big_tree)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Wait until a pack and its index are stored (the index is written after its pack).
        deadline = time.monotonic() + STORED_TIMEOUT
        while not (_files_under(location / "packs") and _files_under(location / "index")):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no pack was stored"
            time.sleep(0.005)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"finished" not in out, "the upload completed before it could be interrupted"
    assert proc.returncode != 0
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert b"KeyboardInterrupt" in err or proc.returncode == -signal.SIGINT, err.decode()
    packs_left = len(_files_under(location / "packs"))

    # Nothing is visible: no bundle, no branch, no label.
    store = Store.open(str(location))
    repo = Repository(store, REPO)
    assert repo.bundles() == []
    assert repo.branches() == []
    assert repo.labels() == []

    # Uploading again reuses what was stored, and the result is whole.
    result = repo.upload(str(big_tree), UploadOptions("again", author, label="done"))
    reused = result.chunks - result.new_chunks
    assert reused > 0
    assert result.new_chunks < result.chunks
    assert [bid for bid, _b in repo.bundles()] == [result.bundle_id]
    assert repo.verify(result.bundle_id).ok
    dest = tmp_path / "dest"
    repo.download(result.bundle_id, str(dest))
    assert describe_tree(dest) == describe_tree(big_tree)
    print(
        f"\ninterrupt[{sig.name}]: {packs_left} packs left behind, {reused}/{result.chunks} "
        f"chunks reused on retry, {time.monotonic() - started:.2f}s"
    )
