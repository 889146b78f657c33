"""User stories past the seed's CLI Guide: branches, get, diff, update, verify, JSON, help."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from datamon.cli import cli

from .support import (
    BUNDLE_ID,
    TIMESTAMP,
    Datamon,
    assert_clean_error,
    describe,
    make_tree,
    shortest_unique_prefix,
    snapshot,
    stderr_lines,
    stdout_lines,
    tree_files,
    uploaded_id,
)

REPO = "beyond"
AUTHOR = "Test User <t@example.com>"
# bundle diff init v2, as A/D/M lines
V1_TO_V2 = ["A data/new.txt", "D data/values.csv", "M a.txt", "M link"]


@dataclass(frozen=True)
class Shared:
    """One store holding repo ``beyond`` with v1 (label init) and v2 (label v2) on main."""

    dm: Datamon
    base: Path
    v1_tree: Path
    v2_tree: Path
    v1: str
    v2: str


def _derive(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    base = tmp_path_factory.mktemp("beyond")
    dm = Datamon.at(base / "user")
    v1_tree = make_tree(base / "v1")
    v2_tree = _derive(v1_tree, base / "v2")
    (v2_tree / "a.txt").write_text("hello again\n")
    (v2_tree / "data" / "values.csv").unlink()
    (v2_tree / "data" / "new.txt").write_text("new file\n")
    (v2_tree / "link").unlink()
    (v2_tree / "link").symlink_to("run.sh")
    v1, v2 = dm.prepare(
        REPO,
        [(v1_tree, "first", "--label", "init"), (v2_tree, "second", "--label", "v2")],
        description="beyond the seed",
    )
    return Shared(dm, base, v1_tree, v2_tree, v1, v2)


def _rows(result: subprocess.CompletedProcess[str], pattern: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for text in stdout_lines(result):
        match = re.match(pattern, text)
        assert match, f"unexpected line {text!r}\n{describe(result)}"
        rows.append(match.groups())
    return rows


def test_branch_create_list_and_log(shared: Shared, tmp_path: Path) -> None:
    dm = shared.dm
    made = dm("branch", "create", "--repo", REPO, "--name", "experiment", "--label", "init")
    assert stdout_lines(made) == [f"Created branch experiment at bundle {shared.v1}"]

    listed = dm("branch", "list", "--repo", REPO)
    heads = {name: bid for name, bid in _rows(listed, rf"^(\S+) , ({BUNDLE_ID}) , {TIMESTAMP}$")}
    assert heads["main"] == shared.v2
    assert heads["experiment"] == shared.v1

    tree = _derive(shared.v1_tree, tmp_path / "v3")
    (tree / "experiment.txt").write_text("only on the branch\n")
    v3 = dm.upload(tree, REPO, "on a branch", "--branch", "experiment")

    log_pattern = rf"^({BUNDLE_ID}) , {TIMESTAMP} , (.*)$"
    branch_log = _rows(dm("branch", "log", "--repo", REPO, "--branch", "experiment"), log_pattern)
    assert branch_log == [(v3, "on a branch"), (shared.v1, "first")]
    main_log = _rows(dm("branch", "log", "--repo", REPO), log_pattern)
    assert main_log == [(shared.v2, "second"), (shared.v1, "first")]

    got = stdout_lines(dm("bundle", "get", "--repo", REPO, "--branch", "experiment"))
    assert got[0].startswith(f"{v3} , ")
    assert f"parents: {shared.v1}" in got
    assert "branch: experiment" in got


def test_bundle_get(shared: Shared) -> None:
    dm = shared.dm
    lines = stdout_lines(dm("bundle", "get", "--repo", REPO, "--label", "v2"))
    assert re.match(rf"^{shared.v2} , {TIMESTAMP} , second$", lines[0]), lines
    sizes = {
        p: s for p, s in tree_files(shared.v2_tree).items() if not (shared.v2_tree / p).is_symlink()
    }
    assert lines[1:] == [
        f"author: {AUTHOR}",
        f"parents: {shared.v1}",
        "branch: main",
        f"files: {len(sizes)}",
        f"size: {sum(sizes.values())}",
    ]
    first = stdout_lines(dm("bundle", "get", "--repo", REPO, "--bundle", shared.v1))
    assert "parents: -" in first


def test_bundle_diff_between_bundles(shared: Shared) -> None:
    dm = shared.dm
    by_id = dm("bundle", "diff", "--repo", REPO, shared.v1, shared.v2)
    assert sorted(stdout_lines(by_id)) == V1_TO_V2
    assert stderr_lines(by_id) == ["1 added, 1 deleted, 2 modified"]
    by_name = dm("bundle", "diff", "--repo", REPO, "label:init", shared.v2[:12])
    assert by_name.stdout == by_id.stdout
    rows = json.loads(dm("bundle", "diff", "--repo", REPO, "init", "v2", "--json").stdout)
    marks = {"added": "A", "deleted": "D", "modified": "M"}
    assert sorted(f"{marks[r['status']]} {r['path']}" for r in rows) == V1_TO_V2
    same = dm("bundle", "diff", "--repo", REPO, "init", "init")
    assert same.stdout == ""


def test_bundle_diff_against_local_folder(shared: Shared) -> None:
    dm = shared.dm
    changed = dm("bundle", "diff", "--repo", REPO, "init", "--path", shared.v2_tree)
    assert sorted(stdout_lines(changed)) == V1_TO_V2
    same = dm("bundle", "diff", "--repo", REPO, "v2", "--path", shared.v2_tree)
    assert same.stdout == ""
    assert stderr_lines(same) == ["0 added, 0 deleted, 0 modified"]


def test_bundle_update_brings_folder_to_another_bundle(shared: Shared, tmp_path: Path) -> None:
    dm = shared.dm
    folder = tmp_path / "checkout"
    dm("bundle", "download", "--repo", REPO, "--label", "init", "--destination", folder)
    done = dm("bundle", "update", "--repo", REPO, "--label", "v2", "--destination", folder)
    assert stdout_lines(done) == [f"Updated {folder} to bundle {shared.v2}: 4 paths changed"]
    assert snapshot(folder, mtimes=True) == snapshot(shared.v2_tree, mtimes=True)
    assert dm("bundle", "diff", "--repo", REPO, "v2", "--path", folder).stdout == ""
    # and back again
    dm("bundle", "update", "--repo", REPO, "--bundle", shared.v1, "--destination", folder)
    assert snapshot(folder) == snapshot(shared.v1_tree)


@dataclass(frozen=True)
class Layout:
    """Bundle ``bid`` has v1's content with other modes and other empty folders."""

    tree: Path
    bid: str


@pytest.fixture(scope="module")
def layout(shared: Shared) -> Layout:
    tree = _derive(shared.v1_tree, shared.base / "layout")
    (tree / "empty").rmdir()
    (tree / "data" / "empty-too").mkdir()
    (tree / "run.sh").chmod(0o644)
    (tree / "a.txt").chmod(0o600)
    return Layout(tree, shared.dm.upload(tree, REPO, "layout only", "--branch", "layout"))


def test_bundle_update_reproduces_empty_folders_and_modes(
    shared: Shared, layout: Layout, tmp_path: Path
) -> None:
    dm = shared.dm
    folder = tmp_path / "checkout"
    dm("bundle", "download", "--repo", REPO, "--label", "init", "--destination", folder)
    dm("bundle", "update", "--repo", REPO, "--bundle", layout.bid, "--destination", folder)
    fresh = tmp_path / "fresh"
    dm("bundle", "download", "--repo", REPO, "--bundle", layout.bid, "--destination", fresh)
    assert snapshot(fresh) == snapshot(layout.tree)
    assert snapshot(folder) == snapshot(fresh)


def test_diff_of_two_bundles_agrees_with_diff_against_a_folder(
    shared: Shared, layout: Layout
) -> None:
    dm = shared.dm
    against_folder = dm("bundle", "diff", "--repo", REPO, "init", "--path", layout.tree)
    assert sorted(stdout_lines(against_folder)) == ["M a.txt", "M run.sh"]
    between = dm("bundle", "diff", "--repo", REPO, "init", layout.bid)
    assert sorted(stdout_lines(between)) == sorted(stdout_lines(against_folder))


def _flip_byte_of(store: Path, needle: bytes) -> Path:
    """Flip one byte of the pack that stores ``needle`` verbatim; returns the pack."""
    for pack in sorted((store / "packs").rglob("*")):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            at = data.find(needle)
            if at >= 0:
                data[at + len(needle) // 2] ^= 0xFF
                pack.write_bytes(bytes(data))
                return pack
    raise AssertionError(f"no pack under {store} holds the chunk")


def test_bundle_verify_reports_damaged_pack(datamon: Datamon, tree: Path) -> None:
    dm = datamon
    [bid] = dm.prepare("checked", [(tree, "to verify", "--label", "init")])
    files = sum(1 for p in tree_files(tree) if not (tree / p).is_symlink())
    healthy = dm("bundle", "verify", "--repo", "checked")
    assert re.match(rf"^{bid} , {files} files , \d+ chunks checked , ok$", healthy.stdout)

    # deep.bin is random, so its chunk is stored raw: find it in its pack and flip a byte.
    raw = (tree / "data" / "nested" / "deep.bin").read_bytes()
    pack = _flip_byte_of(dm.default_store, raw[1000:1064])
    key = pack.relative_to(dm.default_store).as_posix()

    for ref in (("--label", "init"), ()):
        damaged = dm("bundle", "verify", "--repo", "checked", *ref, check=False)
        assert damaged.returncode != 0, describe(damaged)
        assert "Traceback" not in damaged.stderr
        problems = [ln for ln in stdout_lines(damaged) if ln.startswith("DAMAGED ")]
        assert len(problems) == 1, describe(damaged)
        assert problems[0].startswith(f"DAMAGED {bid} data/nested/deep.bin: ")
        assert key in problems[0]
        assert re.search(rf"^{bid} , {files} files , .* , 1 problems$", damaged.stdout, re.M)
        assert stderr_lines(damaged) == ["error: 1 of 1 bundles are damaged"]

    as_json = dm("bundle", "verify", "--repo", "checked", "--json", check=False)
    assert as_json.returncode != 0
    [row] = json.loads(as_json.stdout)
    assert (row["bundle"], row["files"], row["ok"]) == (bid, files, False)
    assert len(row["problems"]) == 1 and key in row["problems"][0]


def test_json_output(shared: Shared) -> None:
    dm = shared.dm

    def as_json(*args: str) -> list[dict[str, object]]:
        data = json.loads(dm(*args, "--json").stdout)
        assert isinstance(data, list)
        return data

    repos = {r["name"]: r for r in as_json("repo", "list")}
    assert repos[REPO]["description"] == "beyond the seed"
    assert repos[REPO]["author"] == AUTHOR

    bundles = {b["id"]: b for b in as_json("bundle", "list", "--repo", REPO)}
    assert {shared.v1, shared.v2} <= bundles.keys()
    assert bundles[shared.v2]["parents"] == [shared.v1]
    assert bundles[shared.v2]["message"] == "second"
    assert bundles[shared.v1]["author"] == {"name": "Test User", "email": "t@example.com"}

    files = {
        f["name"]: f for f in as_json("bundle", "list", "files", "--repo", REPO, "--label", "init")
    }
    assert {name: f["size"] for name, f in files.items()} == tree_files(shared.v1_tree)
    assert files["link"]["kind"] == "symlink"
    assert files["link"]["target"] == "a.txt"
    assert files["run.sh"]["mode"] == 0o755

    labels = {r["name"]: r["bundle"] for r in as_json("label", "list", "--repo", REPO)}
    assert labels["init"] == shared.v1
    assert labels["v2"] == shared.v2

    branches = {r["name"]: r["bundle"] for r in as_json("branch", "list", "--repo", REPO)}
    assert branches["main"] == shared.v2

    log = [b["id"] for b in as_json("branch", "log", "--repo", REPO, "--branch", "main")]
    assert log == [shared.v2, shared.v1]


def test_unique_prefix_names_a_bundle(shared: Shared, tmp_path: Path) -> None:
    dm = shared.dm
    ids = [b["id"] for b in json.loads(dm("bundle", "list", "--repo", REPO, "--json").stdout)]
    prefix = shortest_unique_prefix(shared.v1, ids)
    got = stdout_lines(dm("bundle", "get", "--repo", REPO, "--bundle", prefix))
    assert got[0].startswith(f"{shared.v1} , ")
    out = tmp_path / "out"
    dm("bundle", "download", "--repo", REPO, "--bundle", prefix, "--destination", out)
    assert snapshot(out) == snapshot(shared.v1_tree)
    moved = dm("label", "set", "--repo", REPO, "--label", "by-prefix", "--bundle", prefix.upper())
    assert stdout_lines(moved) == [f"Label by-prefix set to bundle {shared.v1}"]


def _command_paths(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _command_paths(sub, (*path, name))


ALL_COMMANDS = list(_command_paths(cli))


def _helps_without_example(dm: Datamon, paths: list[tuple[str, ...]]) -> list[str]:
    """Every ``--help``, run in one process (each would cost a Python start-up)."""
    results = dm.batch([[*path, "--help"] for path in paths])
    return [
        describe(result)
        for result in results
        if result.returncode != 0 or "Example" not in result.stdout
    ]


def test_help_of_every_command_has_an_example(datamon: Datamon) -> None:
    assert len(ALL_COMMANDS) > 20
    assert ("bundle", "download", "file") in ALL_COMMANDS
    for path in ((), ("bundle",), ("bundle", "download", "file")):
        shown = datamon(*path, "--help")
        assert "Example" in shown.stdout, describe(shown)
    bad = _helps_without_example(datamon, ALL_COMMANDS)
    assert not bad, "\n".join(bad)


def test_upload_only_listed_paths(datamon: Datamon, tree: Path, tmp_path: Path) -> None:
    (v1,) = datamon.prepare("only", [(tree, "first")])
    (tree / "a.txt").write_text("edited\n")
    (tree / "data" / "values.csv").unlink()
    (tree / "data" / "added.txt").write_text("added\n")
    listing = tmp_path / "changed.txt"
    listing.write_text("data/values.csv\ndata/added.txt\n")
    v2 = datamon.upload(tree, "only", "two paths", "--only", "a.txt", "--only-from", str(listing))
    got = stdout_lines(datamon("bundle", "get", "--repo", "only", "--bundle", v2))
    assert f"parents: {v1}" in got
    diff = stdout_lines(datamon("bundle", "diff", "--repo", "only", v1, v2))
    assert sorted(diff) == ["A data/added.txt", "D data/values.csv", "M a.txt"]
    out = tmp_path / "out"
    datamon("bundle", "download", "--repo", "only", "--bundle", v2, "--destination", out)
    assert tree_files(out) == tree_files(tree)

    bad = datamon(
        "bundle",
        "upload",
        "--path",
        tree,
        "--message",
        "m",
        "--repo",
        "only",
        "--only",
        "../elsewhere",
        check=False,
    )
    assert bad.returncode == 1
    assert stderr_lines(bad) == [f"error: '../elsewhere' is not a path inside {tree}"]


def test_upload_reread_gives_the_same_tree(datamon: Datamon, tree: Path) -> None:
    (v1,) = datamon.prepare("reread", [(tree, "first")])
    v2 = datamon.upload(tree, "reread", "again, every file read", "--reread")
    assert stdout_lines(datamon("bundle", "diff", "--repo", "reread", v1, v2)) == []
    got = stdout_lines(datamon("bundle", "get", "--repo", "reread", "--bundle", v2))
    assert f"parents: {v1}" in got


def test_only_from_a_file_that_is_not_utf8_is_one_error_line(
    datamon: Datamon, tree: Path, tmp_path: Path
) -> None:
    datamon.prepare("notutf8", [(tree, "first")])
    listing = tmp_path / "latin1.txt"
    listing.write_bytes(b"a\xff.txt\n")
    done = datamon(
        "bundle", "upload", "--path", tree, "--message", "m", "--repo", "notutf8",
        "--only-from", listing, check=False,
    )  # fmt: skip
    assert_clean_error(done, "--only-from", "is not UTF-8 text")


def test_diff_takes_a_label_before_an_id_prefix(datamon: Datamon, tree: Path) -> None:
    """A label named like the start of another bundle's id names its own bundle."""
    (v1,) = datamon.prepare("shadow", [(tree, "first")])
    (tree / "more.txt").write_text("more\n")
    v2 = datamon.upload(tree, "shadow", "second")
    datamon("label", "set", "--repo", "shadow", "--label", v2[:3], "--bundle", v1)
    same = datamon("bundle", "diff", "--repo", "shadow", v2[:3], v1)
    assert stdout_lines(same) == [], describe(same)
    assert stdout_lines(datamon("bundle", "diff", "--repo", "shadow", v1, v2)) == ["A more.txt"]


def test_a_large_tree_uploaded_again_is_scanned_by_two_processes(
    datamon: Datamon, tmp_path: Path
) -> None:
    src = tmp_path / "many"
    for i in range(12):  # 4,200 files: more than a tree needs to be scanned by two
        folder = src / f"d{i:02d}"
        folder.mkdir(parents=True)
        for j in range(350):
            (folder / f"f{j}").write_bytes(b"%d %d" % (i, j))
    time.sleep(0.3)  # past the racy window: the stat cache may trust every file
    datamon.prepare("many", [(src, "first")])
    upload = ["--debug", "bundle", "upload", "--path", str(src), "--repo", "many"]
    again = datamon(*upload, "--message", "again")
    # 12 folders wait to be listed once the root is: the helper takes every other one.
    assert "DEBUG: scanning 6 folders in a helper process" in stderr_lines(again)
    size = sum(len(b"%d %d" % (i, j)) for i in range(12) for j in range(350))
    assert (
        f"4200 files, 0 bytes read ({size} more unchanged, not read again), 0/4200 chunks new,"
        " 0 bytes stored"
    ) in again.stderr
    for i in range(12):
        (src / f"d{i:02d}" / "f7").write_bytes(b"changed in %d" % i)
    changed = datamon(*upload, "--message", "changed")
    assert "DEBUG: scanning 6 folders in a helper process" in stderr_lines(changed)
    assert "12/4200 chunks new" in changed.stderr
    out = tmp_path / "out"
    bid = uploaded_id(changed)
    datamon("bundle", "download", "--repo", "many", "--bundle", bid, "--destination", out)
    assert snapshot(out) == snapshot(src)
