"""Many OS processes uploading to one repo and branch, and moving one label, at once.

Nothing may be lost: every bundle a writer reports exists and is listed, the branch is
one chain through all of them, and the label's history holds every move.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.config import CACHE_ENV
from datamon.testing.workloads import describe_tree, small_files, write_file

WRITERS = 8
REPO = "shared"
LABEL = "latest"
START_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0

WORKER = f"""
import json, os, sys, time
from datamon import Author, Repository, Store, UploadOptions

location, options, source, ready, go, n = sys.argv[1:7]
store = Store.open(location, options=json.loads(options))
repo = Repository(store, {REPO!r})
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
who = Author("writer " + n, "w" + n + "@example.com")
result = repo.upload(source, UploadOptions("upload " + n, who, label={LABEL!r}, concurrency=2))
print(json.dumps({{"n": int(n), "bundle": result.bundle_id, "new": result.new_chunks}}))
"""


def _make_trees(root: Path) -> list[Path]:
    trees = []
    shared = b"the same bytes in every tree\n" * 2000
    for n in range(WRITERS):
        tree = root / f"tree{n}"
        small_files(tree, count=12, size=3_000, seed=1000 + n, per_dir=5)
        write_file(tree / "common" / "shared.txt", shared)  # concurrent writers of one chunk
        trees.append(tree)
    return trees


def _run_writers(
    location: str,
    options: dict[str, str],
    trees: list[Path],
    work: Path,
    cache_per_writer: bool,
) -> tuple[list[dict[str, int | str]], float]:
    procs = []
    for n, tree in enumerate(trees):
        env = dict(os.environ)
        cache = work / (f"cache-{n}" if cache_per_writer else "cache")
        env[CACHE_ENV] = str(cache)
        args = [
            sys.executable,
            "-c",
            WORKER,
            location,
            json.dumps(options),
            str(tree),
            str(work / f"ready-{n}"),
            str(work / "go"),
            str(n),
        ]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not all((work / f"ready-{n}").exists() for n in range(WRITERS)):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                _out, err = failed[0].communicate()
                pytest.fail(f"writer died while starting:\n{err.decode()}")
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.01)
        started = time.monotonic()
        (work / "go").touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            assert proc.returncode == 0, err.decode()
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results, time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check(kind: str, location: str, options: dict[str, str], tmp_path: Path) -> None:
    author = Author("setup", "setup@example.com")
    store = Store.open(location, options=options)
    repo = Repository.create(store, REPO, "written by many", author)
    (tmp_path / "initial").mkdir()
    write_file(tmp_path / "initial" / "start.txt", b"start")
    initial = repo.upload(str(tmp_path / "initial"), UploadOptions("initial", author, label=LABEL))
    trees = _make_trees(tmp_path / "trees")
    work = tmp_path / "work"
    work.mkdir()

    results, elapsed = _run_writers(location, options, trees, work, cache_per_writer=kind == "s3")

    written = {int(r["n"]): str(r["bundle"]) for r in results}
    assert sorted(written) == list(range(WRITERS))
    assert len(set(written.values())) == WRITERS

    store = Store.open(location, options=options)
    repo = Repository(store, REPO)
    listed = [bid for bid, _b in repo.bundles()]
    assert set(written.values()) | {initial.bundle_id} == set(listed)

    # The branch is one chain through every bundle, newest first, ending at the initial one.
    log = list(repo.log("main"))
    chain = [bid for bid, _b in log]
    assert len(chain) == WRITERS + 1
    assert set(chain) == set(listed)
    assert chain[-1] == initial.bundle_id
    for (_bid, bundle), (parent, _p) in itertools.pairwise(log):
        assert bundle.parents == (parent,)

    # The label moved once per writer, each move on top of the previous one.
    label = repo.label(LABEL)
    moves = [m.bundle for m in label.history]
    assert len(moves) == WRITERS + 1
    assert set(moves) == set(listed)
    assert label.bundle == moves[-1]
    previous = [m.previous for m in label.history]
    assert previous == [None, *moves[:-1]]

    # Every bundle is whole and holds its writer's tree.
    for n, bid in written.items():
        report = repo.verify(bid)
        assert report.ok, report.problems
        files = {f.path for f in repo.files(bid)}
        assert files == {p for p, d in describe_tree(trees[n]).items() if d[0] == "file"}
    dest = tmp_path / "check"
    repo.download(written[WRITERS - 1], str(dest))
    assert describe_tree(dest) == describe_tree(trees[WRITERS - 1])

    print(
        f"\nconcurrency[{kind}]: {WRITERS} processes, {len(listed)} bundles "
        f"({WRITERS} concurrent + 1), {len(moves)} label moves, {elapsed:.2f}s"
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "test-cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


def test_concurrent_uploads_local(tmp_path: Path, cache: Path) -> None:
    _check("local", str(tmp_path / "store"), {}, tmp_path)


@pytest.mark.s3
def test_concurrent_uploads_s3(tmp_path: Path, cache: Path, request: pytest.FixtureRequest) -> None:
    url, options = request.getfixturevalue("s3_location")
    _check("s3", url, dict(options), tmp_path)
