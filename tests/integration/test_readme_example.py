"""The README's notebook example runs as written, against a fresh store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.config import CACHE_ENV, CONFIG_ENV
from datamon.fs import DatamonFileSystem

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(
    r"<!-- sdk-example -->\s*```python\n(?P<code>.*?)```\s*<!-- /sdk-example -->", re.DOTALL
)


def example() -> str:
    found = BLOCK.search(README.read_text(encoding="utf-8"))
    assert found, "README.md lost its <!-- sdk-example --> block"
    return found["code"]


def test_the_readme_notebook_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    location = tmp_path / "store"
    author = Author("Ada Lovelace", "ada@example.com")
    config = tmp_path / "datamon.yaml"
    config.write_text(f"name: {author.name}\nemail: {author.email}\nstore: {location}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "sales.csv").write_text("region,amount\nnorth,10\nsouth,32\n")
    repo = Repository.create(Store.open(str(location)), "sales", "sales", author)
    repo.upload(str(src), UploadOptions("first", author, label="v1"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    DatamonFileSystem.clear_instance_cache()

    exec(compile(example(), str(README), "exec"), {"__name__": "readme"})

    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "['sales.csv']"
    assert sorted(printed[1:]) == [
        "added notes.txt",
        "added reports/input.csv",
        "added reports/summary.csv",
    ]
    downloaded = sorted(p.relative_to(work / "sales-v2").as_posix() for p in work.rglob("*.*"))
    assert downloaded == ["notes.txt", "reports/input.csv", "reports/summary.csv", "sales.csv"]
    assert (work / "sales-v2" / "notes.txt").read_text() == "checked\n"
    assert (work / "sales-v2" / "reports" / "input.csv").read_bytes() == (
        src / "sales.csv"
    ).read_bytes()
    DatamonFileSystem.clear_instance_cache()
