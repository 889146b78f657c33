"""Bad input: a non-zero exit, one ``error:`` line on stderr, no traceback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import (
    UPLOADED,
    Datamon,
    assert_clean_error,
    make_tree,
    snapshot,
    stderr_lines,
    stdout_lines,
)

REPO = "errors"
MISSING_ID = "f" * 40
DEAD_ENDPOINT = "http://127.0.0.1:1"
UNREACHABLE_DEADLINE = 30.0


@dataclass(frozen=True)
class Populated:
    """Repo ``errors`` with one bundle, labelled ``init``, on branch main."""

    dm: Datamon
    tree: Path
    bid: str


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    base = tmp_path_factory.mktemp("errors")
    dm = Datamon.at(base / "user")
    tree = make_tree(base / "tree")
    [bid] = dm.prepare(REPO, [(tree, "first", "--label", "init")])
    return Populated(dm, tree, bid)


@dataclass(frozen=True)
class Case:
    """A bad command line (given the populated store and an empty folder) and what to say."""

    args: Callable[[Populated, Path], list[str | Path]]
    needles: tuple[str, ...]
    bug: str = ""


# fmt: off
CASES: dict[str, Case] = {
    "unknown-repo": Case(
        lambda p, t: ["bundle", "list", "--repo", "no-such-repo"],
        ("repo not found", "no-such-repo")),
    "unknown-repo-on-upload": Case(
        lambda p, t: ["bundle", "upload", "--path", p.tree, "--message", "m",
                      "--repo", "no-such-repo"],
        ("repo not found", "no-such-repo")),
    "unknown-label": Case(
        lambda p, t: ["bundle", "download", "--repo", REPO, "--label", "nope",
                      "--destination", t / "d"],
        ("label not found", "nope")),
    "unknown-branch": Case(
        lambda p, t: ["bundle", "list", "files", "--repo", REPO, "--branch", "nope"],
        ("branch not found", "nope")),
    "unknown-branch-log": Case(
        lambda p, t: ["branch", "log", "--repo", REPO, "--branch", "nope"],
        ("branch not found", "nope")),
    "unknown-bundle": Case(
        lambda p, t: ["bundle", "get", "--repo", REPO, "--bundle", MISSING_ID],
        ("bundle not found", MISSING_ID)),
    "unknown-bundle-for-label-set": Case(
        lambda p, t: ["label", "set", "--repo", REPO, "--label", "x", "--bundle", "not-an-id"],
        ("bundle not found", "not-an-id")),
    "unknown-file-in-bundle": Case(
        lambda p, t: ["bundle", "download", "file", "--repo", REPO, "--label", "init",
                      "--file", "no/such.file", "--destination", t],
        ("not found", "no/such.file")),
    "repo-already-exists": Case(
        lambda p, t: ["repo", "create", "--repo", REPO, "--description", "again"],
        ("already exists", REPO)),
    "source-does-not-exist": Case(
        lambda p, t: ["bundle", "upload", "--path", t / "missing", "--message", "m",
                      "--repo", REPO],
        ("cannot read", "missing")),
    "source-is-a-file": Case(
        lambda p, t: ["bundle", "upload", "--path", p.tree / "a.txt", "--message", "m",
                      "--repo", REPO],
        ("not a directory",)),
    "invalid-label-name": Case(
        lambda p, t: ["label", "set", "--repo", REPO, "--label", "bad name", "--bundle", p.bid],
        ("invalid label name", "bad name")),
    "empty-label-on-upload": Case(
        lambda p, t: ["bundle", "upload", "--path", p.tree, "--message", "m", "--repo", REPO,
                      "--label", ""],
        ("invalid label name",)),
    "invalid-name-filter": Case(
        lambda p, t: ["bundle", "download", "--repo", REPO, "--label", "init",
                      "--name-filter", "[", "--destination", t / "d"],
        ("[",)),
}
# fmt: on


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=case.bug)]
            if case.bug
            else [],
        )
        for name, case in CASES.items()
    ],
)
def test_bad_input_is_one_error_line(populated: Populated, tmp_path: Path, case: str) -> None:
    before = snapshot(tmp_path, mtimes=True)
    result = populated.dm(*CASES[case].args(populated, tmp_path), check=False)
    assert_clean_error(result, *CASES[case].needles)
    assert snapshot(tmp_path, mtimes=True) == before, "a failed command left files behind"


def test_destination_not_empty_is_left_untouched(populated: Populated, tmp_path: Path) -> None:
    dm = populated.dm
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "keep.txt").write_text("mine\n")
    (dest / "a.txt").write_text("not from the bundle\n")
    before = snapshot(dest, mtimes=True)

    whole = dm(
        "bundle", "download", "--repo", REPO, "--label", "init", "--destination", dest,
        check=False,
    )  # fmt: skip
    assert_clean_error(whole, "not empty", str(dest), "datamon bundle update")
    one = dm(
        "bundle", "download", "file", "--repo", REPO, "--label", "init",
        "--file", "a.txt", "--destination", dest, check=False,
    )  # fmt: skip
    assert_clean_error(one, "not empty", "a.txt", "it exists already")
    assert snapshot(dest, mtimes=True) == before


def test_ambiguous_id_prefix(populated: Populated, tmp_path: Path) -> None:
    dm = populated.dm
    # Upload in rounds (one process per round) until two ids share their first hex digit;
    # 17 ids cannot all differ there, so three rounds of six always suffice.
    by_first: dict[str, list[str]] = {}
    ids: list[str] = []
    for start in range(0, 18, 6):
        messages = [(populated.tree, f"upload {n}") for n in range(start, start + 6)]
        for bid in dm.prepare("crowded", messages, configure=False, create=start == 0):
            by_first.setdefault(bid[0], []).append(bid)
        prefix, ids = max(by_first.items(), key=lambda item: len(item[1]))
        if len(ids) > 1:
            break
    assert len(ids) > 1
    line = assert_clean_error(
        dm("bundle", "get", "--repo", "crowded", "--bundle", prefix, check=False), "ambiguous"
    )
    assert all(bid in line for bid in ids[:5]), line
    dest = tmp_path / "never"
    result = dm(
        "bundle", "download", "--repo", "crowded", "--bundle", prefix, "--destination", dest,
        check=False,
    )  # fmt: skip
    assert_clean_error(result, "ambiguous")
    assert not dest.exists()


DUMMY_CREDENTIALS = [
    "--option", "region=us-east-1",
    "--option", "access_key_id=testing",
    "--option", "secret_access_key=testing",
]  # fmt: skip


@pytest.mark.parametrize("how", ["config", "store-flag"])
def test_unreachable_store_fails_fast(datamon: Datamon, how: str) -> None:
    endpoint = ["--option", f"endpoint={DEAD_ENDPOINT}", *DUMMY_CREDENTIALS]
    if how == "config":
        datamon.configure("--store", "s3://bucket/x", *endpoint)
        prefix = []
    else:
        datamon.configure(*endpoint)
        prefix = ["--store", "s3://bucket/x"]
    commands = [
        [*prefix, "repo", "list"],
        [*prefix, "repo", "create", "--repo", "r", "--description", "d"],
    ]
    for command in commands:
        started = time.monotonic()
        result = datamon(*command, check=False, timeout=UNREACHABLE_DEADLINE)
        elapsed = time.monotonic() - started
        assert elapsed < UNREACHABLE_DEADLINE
        assert_clean_error(result, "127.0.0.1:1")


def test_upload_without_config_names_the_fix(datamon: Datamon, tree: Path) -> None:
    datamon.prepare(REPO)
    datamon.config_file.unlink()
    upload = datamon(
        "bundle", "upload", "--path", tree, "--message", "m", "--repo", REPO, check=False
    )  # fmt: skip
    assert_clean_error(upload, "no author", "datamon config create")
    assert "Using config file" not in upload.stderr
    create = datamon("repo", "create", "--repo", "other", "--description", "d", check=False)
    assert_clean_error(create, "no author")


def test_demo_runs_on_a_fresh_home(datamon: Datamon) -> None:
    result = datamon("demo")
    assert any(UPLOADED.match(text) for text in stdout_lines(result)), result.stdout
    assert not [ln for ln in stderr_lines(result) if ln.startswith("error")]
    assert (datamon.default_store / "config.json").is_file()


def test_a_group_without_a_command_prints_its_help(datamon: Datamon) -> None:
    done = datamon("bundle", check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("Usage: datamon bundle [OPTIONS] COMMAND")
    assert "error:" not in done.stderr


def test_a_config_file_that_is_not_yaml_is_one_error_line(datamon: Datamon) -> None:
    datamon.config_file.parent.mkdir(parents=True, exist_ok=True)
    datamon.config_file.write_text("name: a\nemail: [x\n")
    done = datamon("repo", "list", check=False)
    assert_clean_error(done, "is not valid YAML", "line 3")


def test_read_commands_make_no_store(datamon: Datamon, tmp_path: Path) -> None:
    """Only commands that write (repo create, a build, the demo) make a store; a command
    pointed at a mistyped location says there is none, and leaves nothing there."""
    where = tmp_path / "typo" / "store"
    for args in (
        ["repo", "list"],
        ["bundle", "list", "--repo", "r"],
        ["label", "list", "--repo", "r"],
    ):
        done = datamon("--store", where, *args, check=False)
        assert_clean_error(done, "no Datamon store at", "repo create")
    assert not (tmp_path / "typo").exists()
    datamon("config", "create", "--name", "A", "--email", "a@example.com")
    datamon("--store", where, "repo", "create", "--repo", "r", "--description", "d")
    assert (where / "config.json").is_file()
    assert datamon("--store", where, "repo", "list").returncode == 0
