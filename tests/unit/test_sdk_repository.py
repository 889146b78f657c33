"""``datamon.Repository`` is the notebook SDK: upload, download, open, ls, diff, labels."""

from __future__ import annotations

from pathlib import Path

import datamon
from datamon import Author, Store, UploadOptions
from datamon.api.repository import Repository as CoreRepository


def test_facade_repository_reads_by_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tables").mkdir(parents=True)
    (src / "tables" / "a.csv").write_text("id,v\n1,2\n")
    (src / "notes.txt").write_text("hello\n")
    me = Author("Ada", "ada@example.com")
    store = Store.open(str(tmp_path / "store"), cache=tmp_path / "cache")
    repo = datamon.Repository.create(store, "sales", "sales data", me)
    assert isinstance(repo, CoreRepository)
    first = repo.upload(str(src), UploadOptions("v1", me, label="v1")).bundle_id
    assert [f.path for f in repo.ls(ref="v1")] == ["notes.txt", "tables"]
    assert [f.path for f in repo.ls("tables", ref="v1")] == ["tables/a.csv"]
    with repo.open("tables/a.csv", ref="v1") as f:
        assert f.read() == b"id,v\n1,2\n"
    (src / "notes.txt").write_text("changed\n")
    second = repo.upload(str(src), UploadOptions("v2", me, label="v2")).bundle_id
    assert [(c.status, c.path) for c in repo.diff(first, second)] == [("modified", "notes.txt")]
    assert sorted(r.name for r in repo.labels()) == ["v1", "v2"]
    repo.download(second, str(tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "changed\n"


def test_a_repository_reads_what_it_just_wrote(tmp_path: Path) -> None:
    from datamon import Author, Store, UploadOptions
    from datamon.fs.sdk import NotebookRepository

    me = Author("Ada", "ada@example.com")
    store = Store.open(str(tmp_path / "store"))
    repo = NotebookRepository.create(store, "images", "d", me)
    assert repo.ls() == []  # pins the empty head
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    first = repo.upload(str(src), UploadOptions("v1", me, label="v1"))
    assert [f.path for f in repo.ls()] == ["a.txt"]
    assert repo.open("a.txt").read() == b"one"
    (src / "a.txt").write_text("two")
    second = repo.upload(str(src), UploadOptions("v2", me))
    assert repo.open("a.txt", ref="v1").read() == b"one"
    repo.set_label("v1", second.bundle_id, me)
    assert repo.open("a.txt", ref="v1").read() == b"two"
    assert first.bundle_id != second.bundle_id
