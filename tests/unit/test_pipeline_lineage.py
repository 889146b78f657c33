"""Bundle lineage through the recorded steps, and ``datamon bundle lineage``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pipetasks import CALLS, FAIL, Total

from datamon import Author, Repository, Store, UploadOptions
from datamon.cli.main import cli
from datamon.pipeline import BuildOptions, build
from datamon.pipeline.lineage import format_lineage, lineage

AUTHOR = Author("Ada Lovelace", "ada@example.com")


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[Path]:
    CALLS.clear()
    FAIL.clear()
    path = tmp_path / "store"
    store = Store.open(str(path))
    repo = Repository.create(store, "numbers", "input numbers", AUTHOR)
    for label, values in (("v1", [1, 2, 3, 4, 5]), ("v2", [10, 20, 30])):
        folder = tmp_path / f"numbers-{label}"
        folder.mkdir()
        (folder / "values.txt").write_text("".join(f"{v}\n" for v in values))
        repo.upload(str(folder), UploadOptions(label, AUTHOR, label=label))
    result = build([Total()], store=store, executor="inline", options=BuildOptions(author=AUTHOR))
    assert result.ok, result.format()
    store.close()
    yield path
    CALLS.clear()


def test_lineage_walks_up_and_down(store_path: Path) -> None:
    store = Store.open(str(store_path))
    try:
        numbers = Repository(store, "numbers").label("v1").bundle
        scaled = Repository(store, "scaled").label("latest").bundle
        totals = Repository(store, "totals").label("latest").bundle
        up = lineage(store.meta, "totals", totals)
        found = sorted((e.depth, e.step.task.split("-")[0]) for e in up.upstream)
        assert found == [(1, "Total"), (2, "Clip"), (2, "Scale")]
        assert up.downstream == []
        assert ("numbers", numbers) in [(r, b) for e in up.upstream for _n, r, b in e.step.inputs]
        down = lineage(store.meta, "numbers", numbers)
        assert down.upstream == []
        assert sorted(e.step.task.split("-")[0] for e in down.downstream) == [
            "Clip",
            "Scale",
            "Total",
        ]
        middle = lineage(store.meta, "scaled", scaled)
        assert [e.step.output[0] for e in middle.upstream] == ["scaled"]
        assert [e.step.output[0] for e in middle.downstream] == ["totals"]
        lines = format_lineage(middle)
        assert lines[0] == f"bundle scaled@{scaled}"
        assert lines[1].startswith("upstream , 1 , Scale-")
        assert f"numbers@{numbers} -> scaled@{scaled}" in lines[1]
        assert lines[2].startswith("downstream , 1 , Total-")
        assert lineage(store.meta, "totals", totals, max_depth=1).upstream[0].depth == 1
        assert len(lineage(store.meta, "totals", totals, max_depth=1).upstream) == 1
        other = Repository(store, "numbers").label("v2").bundle
        assert format_lineage(lineage(store.meta, "numbers", other))[1].startswith("no recorded")
    finally:
        store.close()


def test_a_forced_rerun_keeps_the_lineage_of_the_bundle_it_replaced(store_path: Path) -> None:
    store = Store.open(str(store_path))
    try:
        numbers = Repository(store, "numbers").label("v1").bundle
        before = Repository(store, "scaled").label("latest").bundle
        result = build(
            [Total()],
            store=store,
            executor="inline",
            force=["Scale"],
            options=BuildOptions(author=AUTHOR),
        )
        assert result.ok, result.format()
        after = Repository(store, "scaled").label("latest").bundle
        assert after != before
        for bundle in (before, after):
            up = lineage(store.meta, "scaled", bundle)
            inputs = [(r, b) for e in up.upstream for _n, r, b in e.step.inputs]
            assert ("numbers", numbers) in inputs, bundle
        # Downstream of the input: the step in force and the one it replaced, each with
        # what it made.
        down = lineage(store.meta, "numbers", numbers, max_depth=1)
        made = sorted(e.step.output[1] for e in down.downstream if e.step.output[0] == "scaled")
        assert made == sorted([before, after])
    finally:
        store.close()


def test_bundle_lineage_command(store_path: Path) -> None:
    runner = CliRunner()
    env = {"DATAMON_STORE": str(store_path)}
    args = ["bundle", "lineage", "--repo", "scaled", "--label", "latest"]
    done = runner.invoke(cli, args, env=env)
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].startswith("bundle scaled@")
    assert [x.split(" , ")[0] for x in lines[1:]] == ["upstream", "downstream"]
    done = runner.invoke(cli, [*args, "--direction", "upstream", "--json"], env=env)
    data = json.loads(done.output)
    assert data["bundle"][0] == "scaled" and data["downstream"] == []
    assert data["upstream"][0]["step"]["task"].startswith("Scale-")
    bad = runner.invoke(cli, ["bundle", "lineage", "--repo", "scaled"], env=env)
    assert bad.exit_code != 0
