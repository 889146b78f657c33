"""The seed README's "CLI Guide", replayed command by command, on a local and an S3 store."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from .support import (
    BUNDLE_ID,
    CONFIG_ANNOUNCE,
    TIMESTAMP,
    Datamon,
    snapshot,
    stdout_lines,
    tree_files,
)

REPO = "ritesh-datamon-test-repo"
EMAIL = "ritesh@example.com"
MESSAGE = "The initial commit for the repo"
LOS_ANGELES = Path("/usr/share/zoneinfo/America/Los_Angeles")
FILE_LINE = re.compile(r"^name:(\S+) , size:(\d+) , (?:hash:[0-9a-f]{64}|link:\S+)$")


def _store_args(request: pytest.FixtureRequest, backend: str) -> tuple[list[str], dict[str, str]]:
    """``config create`` arguments naming the store, and the options expected in the YAML."""
    if backend == "local":
        return [], {}
    url, options = request.getfixturevalue("s3_location")
    args = ["--store", url]
    for key, value in options.items():
        args += ["--option", f"{key}={value}"]
    return args, {"store": url, **{f"options.{k}": v for k, v in options.items()}}


def _flatten(data: dict[str, object]) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_seed_cli_guide(
    request: pytest.FixtureRequest, backend: str, datamon: Datamon, tmp_path: Path, tree: Path
) -> None:
    dm = datamon
    # The seed's timestamps are in US Pacific time ("-0700 PDT"); use that zone if we can.
    pacific = LOS_ANGELES.exists()
    if pacific:
        dm.extra_env["TZ"] = "America/Los_Angeles"
    zone = r"(?:-0700 PDT|-0800 PST)" if pacific else r"[+-]\d{4} \S+"
    stamp = TIMESTAMP.replace(r"[+-]\d{4} \S+", zone)
    store_args, expected_store = _store_args(request, backend)

    # Configure datamon: with a credential file, then without (as inside kubernetes).
    credential = tmp_path / "application_default_credentials.json"
    credential.write_text("{}")
    done = dm(
        "config", "create", "--email", EMAIL, "--name", "Ritesh H Shukla",
        "--credential", credential, *store_args,
    )  # fmt: skip
    assert done.stdout.strip() == f"Config file written to {dm.config_file}"
    written = _flatten(yaml.safe_load(dm.config_file.read_text()))
    assert written["name"] == "Ritesh H Shukla"
    assert written["email"] == EMAIL
    assert written["credential"] == str(credential)
    for key, value in expected_store.items():
        assert written[key] == value, key

    dm("config", "create", "--name", "Ritesh Shukla", "--email", EMAIL, *store_args)
    written = _flatten(yaml.safe_load(dm.config_file.read_text()))
    assert written["name"] == "Ritesh Shukla"
    assert written["email"] == EMAIL
    assert "credential" not in written
    for key, value in expected_store.items():
        assert written[key] == value, key

    # Create repo.
    dm("repo", "create", "--description", "Ritesh's repo for testing", "--repo", REPO)
    if backend == "local":
        assert (dm.default_store / "config.json").is_file()

    # Upload a bundle: the last line prints the commit hash.
    up = dm(
        "bundle", "upload", "--path", tree, "--message", MESSAGE, "--repo", REPO,
        "--label", "init",
    )  # fmt: skip
    last = stdout_lines(up)[-1]
    match = re.match(rf"^Uploaded bundle id:({BUNDLE_ID})$", last)
    assert match, up.stdout
    bid = match.group(1)

    # List bundles (the config file is announced on stderr, as in the seed).
    listed = dm("bundle", "list", "--repo", REPO)
    assert listed.stderr.splitlines()[0] == f"{CONFIG_ANNOUNCE} {dm.config_file}"
    lines = stdout_lines(listed)
    assert len(lines) == 1, listed.stdout
    assert re.match(rf"^{bid} , {stamp} , {re.escape(MESSAGE)}$", lines[0]), lines[0]

    # List labels.
    labels = stdout_lines(dm("label", "list", "--repo", REPO))
    assert len(labels) == 1
    assert re.match(rf"^init , {bid} , {stamp}$", labels[0]), labels[0]

    # Download a bundle, by hash and by label: the tree comes back identical.
    want = snapshot(tree, mtimes=True)
    by_id, by_label = tmp_path / "by-id", tmp_path / "by-label"
    dm("bundle", "download", "--repo", REPO, "--destination", by_id, "--bundle", bid)
    assert snapshot(by_id, mtimes=True) == want
    # (by label as on another machine: same HOME and store, an empty chunk-index cache)
    elsewhere = replace(dm, cache=tmp_path / "other-machine-cache")
    elsewhere("bundle", "download", "--repo", REPO, "--destination", by_label, "--label", "init")
    assert snapshot(by_label, mtimes=True) == want

    # List bundle contents, by hash and by label.
    files = dm("bundle", "list", "files", "--repo", REPO, "--bundle", bid)
    seen: dict[str, int] = {}
    for text in stdout_lines(files):
        entry = FILE_LINE.match(text)
        assert entry, text
        seen[entry.group(1)] = int(entry.group(2))
    assert seen == tree_files(tree)
    assert "link:a.txt" in files.stdout
    again = dm("bundle", "list", "files", "--repo", REPO, "--label", "init")
    assert again.stdout == files.stdout

    # Download a file, by hash and by label.
    single = tmp_path / "single"
    single.mkdir()
    dm(
        "bundle", "download", "file", "--file", "data/nested/deep.bin", "--repo", REPO,
        "--bundle", bid, "--destination", single,
    )  # fmt: skip
    got = single / "data" / "nested" / "deep.bin"
    assert got.read_bytes() == (tree / "data" / "nested" / "deep.bin").read_bytes()
    dm(
        "bundle", "download", "file", "--file", "run.sh", "--repo", REPO,
        "--label", "init", "--destination", single,
    )  # fmt: skip
    assert snapshot(single)["run.sh"] == snapshot(tree)["run.sh"]
    assert (single / "run.sh").stat().st_mode & 0o777 == 0o755
    # The tech talk's form, without --destination: into the current folder.
    here = dm(
        "bundle", "download", "file", "--file", "data/nested/deep.bin", "--repo", REPO,
        "--bundle", bid,
    )  # fmt: skip
    assert (dm.cwd / "data" / "nested" / "deep.bin").read_bytes() == got.read_bytes()
    assert stdout_lines(here) == ["Downloaded data/nested/deep.bin to ./data/nested/deep.bin"]

    # Set a label: both labels now name the bundle.
    dm("label", "set", "--repo", REPO, "--label", "anotherlabel", "--bundle", bid)
    labels = stdout_lines(dm("label", "list", "--repo", REPO))
    assert len(labels) == 2, labels
    names = set()
    for text in labels:
        entry = re.match(rf"^(\S+) , {bid} , {stamp}$", text)
        assert entry, text
        names.add(entry.group(1))
    assert names == {"init", "anotherlabel"}

    # "setting a label or uploading a bundle with a label that already exists overwrites
    # the commit hash previously associated with the label"
    (tree / "more.txt").write_text("a second bundle\n")
    fresh_cache = replace(dm, cache=tmp_path / "fresh-cache")
    up = fresh_cache(
        "bundle", "upload", "--path", tree, "--message", "Updating test bundle", "--repo", REPO,
        "--label", "init",
    )  # fmt: skip
    second = re.match(rf"^Uploaded bundle id:({BUNDLE_ID})$", stdout_lines(up)[-1])
    assert second, up.stdout
    bid2 = second.group(1)
    assert bid2 != bid
    # only the new file's chunk is stored, though the uploader's chunk-index cache was empty
    assert re.search(r"\b1/\d+ chunks new\b", up.stderr), up.stderr
    dm("label", "set", "--repo", REPO, "--label", "anotherlabel", "--bundle", bid2)
    labels = stdout_lines(dm("label", "list", "--repo", REPO))
    assert [text.split(" , ")[:2] for text in labels] == [
        ["anotherlabel", bid2],
        ["init", bid2],
    ]

    # "try the version verb in the wrapped binary"
    assert re.fullmatch(r"datamon, version \S+\n", dm("version").stdout)

    # The S3 store holds everything: nothing went to the default local store.
    assert dm.default_store.exists() == (backend == "local")
