"""Scanning a folder: entries stat'ed relative to their folder, named by full path."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from datamon.api import scan as scan_module
from datamon.api.scan import LocalFile, scan
from datamon.errors import SourceUnreadable, UnsafePath
from datamon.testing.workloads import write_tree


def test_paths_stats_and_links(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write_tree(root, {"a.txt": b"a", "d/b.txt": b"bb", "d/e/c.txt": b"ccc"})
    os.symlink("../a.txt", root / "d" / "up")
    os.mkfifo(root / "pipe")
    for given in (str(root), str(root) + "/"):
        top = scan(given)
        assert [f.path for f in top.files] == [os.path.join(str(root), "a.txt")]
        (d,) = top.dirs
        assert d.path == os.path.join(str(root), "d")
        assert d.rel == "d/"
        assert sorted(f.path for f in d.files) == [os.path.join(str(root), "d", "b.txt")]
        assert [(link.name, link.target) for link in d.links] == [("up", "../a.txt")]
        (e,) = d.dirs
        assert e.rel == "d/e/"
        (c,) = e.files
        assert c.path == os.path.join(str(root), "d", "e", "c.txt")
        assert (c.st.st_ino, c.st.st_size) == (os.lstat(c.path).st_ino, 3)
        assert d.links[0].st.st_ino == os.lstat(root / "d" / "up").st_ino
        assert top.all_links() == [("d/up", d.links[0])]


def test_link_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"d/x": b"x"})
    os.symlink("../../outside", tmp_path / "t" / "d" / "bad")
    with pytest.raises(UnsafePath, match="outside"):
        scan(str(tmp_path / "t"))


def test_read_bits_for_everyone_need_no_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if this process were neither owner nor in the group, and access(2) said no.
    monkeypatch.setattr(scan_module, "_permission_check", lambda: lambda _st: False)
    monkeypatch.setattr(scan_module.os, "access", lambda *_a: False)
    write_tree(tmp_path / "t", {"open.txt": b"x"})
    os.chmod(tmp_path / "t" / "open.txt", 0o444)
    assert [f.name for f in scan(str(tmp_path / "t")).files] == ["open.txt"]
    os.chmod(tmp_path / "t" / "open.txt", 0o440)
    with pytest.raises(SourceUnreadable) as info:
        scan(str(tmp_path / "t"))
    assert info.value.path == os.path.join(str(tmp_path / "t"), "open.txt")


def test_unlistable_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "t", {"d/x": b"x"})
    real_open = os.open

    def refuse(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if str(path).endswith("/d"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(scan_module.os, "open", refuse)
    with pytest.raises(SourceUnreadable) as info:
        scan(str(tmp_path / "t"))
    assert info.value.path == os.path.join(str(tmp_path / "t"), "d")


def test_files_keep_a_compact_stat_with_the_fields_uploads_read(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    top = scan(str(tmp_path))
    [f] = top.files
    st = os.lstat(tmp_path / "f")
    assert f.st is f
    fields = (f.st_mode, f.st_size, f.st_mtime_ns, f.st_ctime_ns, f.st_ino)
    assert fields == (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def test_equal_stat_fields_are_held_once() -> None:
    # Distinct integer objects of equal value, as two stat calls return them.
    def stat_of(mode: str, mtime: str, ctime: str) -> SimpleNamespace:
        return SimpleNamespace(
            st_mode=int(mode), st_size=7, st_mtime_ns=int(mtime), st_ctime_ns=int(ctime), st_ino=42
        )

    a = LocalFile.of("/t/", "a", stat_of("33188", "1764000000123456789", "1764000000123456789"))
    b = LocalFile.of("/t/", "b", stat_of("33188", "1764000000123456789", "1764000000999999999"))
    assert a.st_mode is b.st_mode
    assert a.st_ctime_ns is a.st_mtime_ns
    assert b.st_ctime_ns == 1764000000999999999


def test_paths_are_absolute_whatever_root_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path / "t", {"d/x": b"x"})
    monkeypatch.chdir(tmp_path)
    for given in ("t", "./t/", "t/d/.."):
        top = scan(given)
        assert top.path == str(tmp_path / "t")
        assert [f.path for f in top.dirs[0].files] == [str(tmp_path / "t" / "d" / "x")]


def test_the_files_of_a_folder_share_its_path(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"d/x": b"x", "d/y": b"y", "z": b"z"})
    top = scan(str(tmp_path / "t"))
    x, y = sorted(top.dirs[0].files, key=lambda f: f.name)
    assert x.folder is y.folder and x.folder == str(tmp_path / "t" / "d") + "/"
    assert (x.path, y.path) == (str(tmp_path / "t" / "d" / "x"), str(tmp_path / "t" / "d" / "y"))
    assert top.files[0].path == str(tmp_path / "t" / "z")


def test_a_scan_calls_back_once_when_it_has_found_many_files(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {f"d{i % 4}/f{i}": b"x" for i in range(40)})
    calls: list[int] = []
    scan(str(tmp_path / "t"), many=(10, lambda: calls.append(1)))
    assert calls == [1]
    scan(str(tmp_path / "t"), many=(41, lambda: calls.append(2)))
    assert calls == [1]  # 40 files: never enough
