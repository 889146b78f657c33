"""Real tools over FUSE mounts of bundles, driven through the ``datamon`` CLI.

Skipped locally without /dev/fuse, fusermount3 or libfuse 3; failed on CI (CI=true).
"""

from __future__ import annotations

import errno
import filecmp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon.testing.services import require_service

pytestmark = pytest.mark.timeout(120)


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        import mfusepy  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse3 cannot be loaded: {exc}"
    return None


class Cli:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ)
        self.env.update(
            DATAMON_CONFIG=str(root / "datamon.yaml"),
            DATAMON_CACHE_DIR=str(root / "cache"),
        )
        self.env.pop("DATAMON_STORE", None)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "datamon", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"datamon {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def sh(self, script: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-ec", script],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )


def _force_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


def _source(root: Path) -> Path:
    src = root / "src"
    (src / "deep" / "er").mkdir(parents=True)
    rng = random.Random(4)
    (src / "big.bin").write_bytes(rng.randbytes(3 << 20))
    (src / "a.txt").write_text("hello\n")
    (src / "deep" / "b.csv").write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(5000)))
    (src / "deep" / "er" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "deep" / "er" / "run.sh").chmod(0o755)
    (src / "empty").write_bytes(b"")
    os.symlink("deep/b.csv", src / "link.csv")
    os.utime(src / "a.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    return src


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    missing = _fuse_missing()
    if missing:
        require_service("FUSE", missing)
    (tmp_path / "datamon.yaml").write_text(
        f"name: Ada\nemail: ada@example.com\nstore: {tmp_path / 'store'}\n"
    )
    c = Cli(tmp_path)
    c.run("repo", "create", "--repo", "data", "--description", "fuse tests")
    src = str(_source(tmp_path))
    c.run("bundle", "upload", "--path", src, "--message", "v1", "--repo", "data", "--label", "v1")
    yield c
    for mnt in tmp_path.glob("mnt*"):
        _force_unmount(mnt)


def _head(c: Cli) -> str:
    return c.run("bundle", "list", "--repo", "data").stdout.strip().splitlines()[-1].split(" , ")[0]


@pytest.fixture
def mounted(cli: Cli, tmp_path: Path) -> Path:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(
        "bundle", "mount", "--repo", "data", "--label", "v1", "--mount", str(mnt), "--daemonize"
    )
    assert os.path.ismount(mnt)
    return mnt


def test_tools_read_the_mount(cli: Cli, mounted: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    found = cli.sh("find . | sort", mounted).stdout
    assert found == cli.sh("find . | sort", src).stdout
    cli.sh("find . -type f -print0 | xargs -0 sha256sum > ../sums", src)
    assert "OK" in cli.sh(f"sha256sum -c {tmp_path / 'sums'}", mounted).stdout
    assert cli.sh("cat a.txt link.csv | head -2", mounted).stdout == "hello\nx,y\n"
    cli.sh(f"tar cf {tmp_path / 'x.tar'} . && mkdir -p {tmp_path / 'untar'}", mounted)
    cli.sh(f"tar xf {tmp_path / 'x.tar'}", tmp_path / "untar")
    cli.sh(f"cp -a . {tmp_path / 'copy'}", mounted)
    for tree in ("untar", "copy"):
        cmp = filecmp.dircmp(src, tmp_path / tree)
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files), tree
        assert filecmp.cmp(src / "big.bin", tmp_path / tree / "big.bin", shallow=False)
    data = (src / "big.bin").read_bytes()
    for skip in (0, 17, 511, 3000, 6143):
        out = subprocess.run(
            ["dd", f"if={mounted / 'big.bin'}", "bs=512", f"skip={skip}", "count=3"],
            capture_output=True,
            check=True,
        ).stdout
        assert out == data[skip * 512 : skip * 512 + 1536]
    st = os.lstat(mounted / "deep" / "er" / "run.sh")
    assert st.st_mode & 0o777 == 0o755
    assert os.stat(mounted / "a.txt").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.readlink(mounted / "link.csv") == "deep/b.csv"
    # libfuse's request loop was given all it needs: it logged no complaint.
    log = next((tmp_path / "cache" / "mounts").glob("*.log")).read_text()
    assert "Ignoring invalid" not in log, log


def test_writes_fail_with_erofs(cli: Cli, mounted: Path) -> None:
    for script in ("touch new", "echo x >> a.txt", "rm a.txt", "mkdir d", "mv a.txt b.txt"):
        done = cli.sh(script, mounted, check=False)
        assert done.returncode != 0
        assert "Read-only file system" in done.stderr, script
    cli.run("bundle", "unmount", str(mounted))
    assert not os.path.ismount(mounted)
    assert list(mounted.iterdir()) == []


def test_unreachable_store_fails_the_read_with_eio(cli: Cli, mounted: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    cli.sh("ls -lR > /dev/null", mounted)
    store.rename(tmp_path / "gone")
    try:
        started = time.monotonic()
        done = cli.sh("cat deep/b.csv > /dev/null", mounted, check=False)
        assert done.returncode != 0 and "Input/output error" in done.stderr
        assert time.monotonic() - started < 30
    finally:
        (tmp_path / "gone").rename(store)
    log = next((tmp_path / "cache" / "mounts").glob("*.log")).read_text()
    assert "read of /deep/b.csv failed" in log


def test_kill_9_is_recovered_by_unmount(cli: Cli, mounted: Path, tmp_path: Path) -> None:
    state = next((tmp_path / "cache" / "mounts").glob("*/state.json"))
    pid = int(state.read_text().split('"pid": ')[1].split(",")[0])
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    again = cli.run(
        "bundle", "mount", "--repo", "data", "--label", "v1", "--mount", str(mounted), check=False
    )
    assert again.returncode == 1 and "busy" in again.stderr
    cli.run("bundle", "unmount", str(mounted))
    assert not state.parent.exists()
    cli.run(
        "bundle", "mount", "--repo", "data", "--label", "v1", "--mount", str(mounted), "--daemonize"
    )
    assert (mounted / "a.txt").read_text() == "hello\n"
    cli.run("bundle", "unmount", str(mounted))


def test_kill_9_of_a_writable_mount_keeps_what_was_written(cli: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(
        "bundle", "mount", "new", "--repo", "data", "--mount", str(mnt), "--message", "m",
        "--daemonize",
    )  # fmt: skip
    (mnt / "precious.txt").write_text("written once\n")
    state = next((tmp_path / "cache" / "mounts").glob("*/state.json"))
    os.kill(int(state.read_text().split('"pid": ')[1].split(",")[0]), signal.SIGKILL)
    time.sleep(0.2)
    done = cli.run("bundle", "unmount", str(mnt))
    assert "killed before it committed" in done.stderr
    kept = done.stderr.split(" are kept in ")[1].split(" (")[0]
    assert [p.read_text() for p in Path(kept).rglob("*") if p.is_file()] == ["written once\n"]
    assert not state.parent.exists()


def test_bad_requests_fail_cleanly(cli: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    args = ["bundle", "mount", "--repo", "data", "--mount", str(mnt), "--daemonize"]
    missing = cli.run(*args, "--label", "v1", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    mnt.mkdir()
    unknown = cli.run(*args, "--label", "nope", check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    (mnt / "x").write_text("x")
    full = cli.run(*args, "--label", "v1", check=False)
    assert full.returncode == 1 and "not empty" in full.stderr
    (mnt / "x").unlink()
    (tmp_path / "file").write_text("")
    cli.env["DATAMON_CACHE_DIR"] = str(tmp_path / "file" / "cache")
    unwritable = cli.run(*args, "--label", "v1", check=False)
    assert unwritable.returncode == 1 and "not writable" in unwritable.stderr
    for done in (missing, unknown, full, unwritable):
        assert len(done.stderr.strip().splitlines()[-1:]) == 1
    assert not os.path.ismount(mnt) and list(mnt.iterdir()) == []
    assert not (tmp_path / "cache" / "mounts").exists() or not any(
        (tmp_path / "cache" / "mounts").iterdir()
    )


def test_seed_sidecar_mount_keeps_chunks_in_its_destination(cli: Cli, tmp_path: Path) -> None:
    """The seed's sidecar: ``bundle mount --repo R --destination /tmp --mount M`` mounts the
    head of the main branch and keeps what it fetched below its destination."""
    mnt, dest = tmp_path / "mnt", tmp_path / "dest"
    mnt.mkdir()
    (dest / "ab").mkdir(parents=True)  # a folder of the user's, named as old cache folders were
    args = ["bundle", "mount", "--repo", "data", "--mount", str(mnt)]
    both = cli.run(*args, "--destination", str(dest), "--stream", check=False)
    assert both.returncode == 2 and "--destination" in both.stderr
    done = cli.run(*args, "--destination", str(dest), "--daemonize")
    assert f"Mounted bundle {_head(cli)} of repo data" in done.stdout
    assert (mnt / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()
    cli.run("bundle", "unmount", str(mnt))
    segments = list((dest / ".datamon-chunks" / "segments").iterdir())
    assert segments and sum(f.stat().st_size for f in segments) >= 3 << 20
    assert (dest / "ab").is_dir()
    assert not list((tmp_path / "cache").rglob("segments"))


OPS = """
echo created > new.txt
echo changed > a.txt
echo appended >> deep/b.csv
mv deep/er/run.sh deep/run2.sh
rm empty
mkdir -p made/inner && echo in > made/inner/f
mkdir gone && rmdir gone
rmdir deep/er
truncate -s 1000 big.bin
ln -s new.txt new.lnk
mv deep moved
"""


def test_writable_mount_commits_a_new_bundle(cli: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    v1 = _head(cli)
    # The branch moves on after v1: the mount starts from v1, and commits onto the head.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("another bundle\n")
    cli.run("bundle", "upload", "--path", str(other), "--message", "v2", "--repo", "data")
    parent = _head(cli)
    cli.run(
        "bundle", "mount", "new", "--repo", "data", "--mount", str(mnt), "--message", "edited",
        "--from", "label:v1", "--label", "edited", "--daemonize",
    )  # fmt: skip
    expected = tmp_path / "expected"
    shutil.copytree(tmp_path / "src", expected, symlinks=True)
    modes = "mkdir -m 700 private && echo x > private/run.sh && chmod 750 private/run.sh"
    for folder in (expected, mnt):
        cli.sh(OPS, folder)
        cli.sh(modes, folder)
    first = cli.run("bundle", "mount", "commit", str(mnt)).stdout
    assert "Uploaded bundle id:" in first
    cli.sh("echo later > later.txt", mnt)
    cli.sh("echo later > later.txt", expected)
    last = cli.run("bundle", "unmount", str(mnt)).stdout
    bid = last.split("Uploaded bundle id:")[1].strip()
    assert not os.path.ismount(mnt)
    got = tmp_path / "got"
    cli.run("bundle", "download", "--repo", "data", "--label", "edited", "--destination", str(got))
    assert cli.sh("find . | sort", got).stdout == cli.sh("find . | sort", expected).stdout
    cli.sh("find . -type f -print0 | xargs -0 sha256sum > ../want", expected)
    cli.sh(f"sha256sum -c {tmp_path / 'want'}", got)
    assert os.readlink(got / "new.lnk") == "new.txt"
    listing = "find . -mindepth 1 -printf '%p %y %m\\n' | sort"
    assert cli.sh(listing, got).stdout == cli.sh(listing, expected).stdout
    bundles = cli.run("bundle", "list", "--repo", "data", "--json").stdout
    import json

    rows = {row["id"]: row for row in json.loads(bundles)}
    first_id = first.split("Uploaded bundle id:")[1].strip()
    assert rows[first_id]["parents"] == [parent, v1]
    assert rows[bid]["parents"] == [first_id]


def test_two_mounts_of_one_branch_keep_each_other_s_commits(cli: Cli, tmp_path: Path) -> None:
    """Each mount commits its own changes on the branch's head: a mount that commits after
    another does not take the other's changes back, and one with no changes commits none."""
    ma, mb, idle = tmp_path / "mnt-a", tmp_path / "mnt-b", tmp_path / "mnt-idle"
    for mnt in (ma, mb, idle):
        mnt.mkdir()
        cli.run(
            "bundle", "mount", "new", "--repo", "data", "--mount", str(mnt), "--message", mnt.name,
            "--from", "branch:main", "--daemonize",
        )  # fmt: skip
    (ma / "a_only.txt").write_text("from a\n")
    (mb / "b_only.txt").write_text("from b\n")
    (mb / "a.txt").write_text("changed by b\n")
    cli.run("bundle", "mount", "commit", str(ma))
    cli.run("bundle", "mount", "commit", str(mb))
    head = _head(cli)
    assert "Nothing to commit" in cli.run("bundle", "unmount", str(idle)).stderr
    cli.run("bundle", "unmount", str(ma))
    cli.run("bundle", "unmount", str(mb))
    assert _head(cli) == head
    got = tmp_path / "got"
    cli.run("bundle", "download", "--repo", "data", "--branch", "main", "--destination", str(got))
    assert (got / "a_only.txt").read_text() == "from a\n"
    assert (got / "b_only.txt").read_text() == "from b\n"
    assert (got / "a.txt").read_text() == "changed by b\n"
    assert (got / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()


def test_a_commit_landing_as_a_mount_starts_is_kept(cli: Cli, tmp_path: Path) -> None:
    """The mount process is told the head its starter saw (--seen): a commit that lands
    between the two (here: before the process is started by hand) is not taken back."""
    seen = _head(cli)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "src", other, symlinks=True)
    (other / "landed.txt").write_text("landed meanwhile\n")
    cli.run("bundle", "upload", "--path", str(other), "--message", "meanwhile", "--repo", "data")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(
        "bundle", "mount", "new", "--repo", "data", "--mount", str(mnt), "--message", "m",
        "--branch", "main", "--from", f"bundle:{seen}", "--seen", seen, "--daemonize",
    )  # fmt: skip
    (mnt / "mine.txt").write_text("mine\n")
    cli.run("bundle", "unmount", str(mnt))
    got = tmp_path / "got"
    cli.run("bundle", "download", "--repo", "data", "--branch", "main", "--destination", str(got))
    assert (got / "landed.txt").read_text() == "landed meanwhile\n"
    assert (got / "mine.txt").read_text() == "mine\n"


def _renameat2(old: Path, new: Path, flags: int) -> int:
    """renameat2(2); the errno it failed with, or 0."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    done = libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags)
    return 0 if done == 0 else ctypes.get_errno()


def test_what_a_writable_mount_shows_is_what_it_commits(cli: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(
        "bundle", "mount", "new", "--repo", "data", "--mount", str(mnt), "--message", "m",
        "--from", "branch:main", "--daemonize",
    )  # fmt: skip
    before = time.time_ns()
    cli.sh("touch new.txt && touch a.txt", mnt)  # utimensat with UTIME_NOW
    assert os.stat(mnt / "new.txt").st_mtime_ns >= before - 10**9
    cli.sh("touch -a deep/b.csv", mnt)  # the access time only: UTIME_OMIT for the mtime
    assert (
        os.stat(mnt / "deep" / "b.csv").st_mtime_ns
        == os.stat(tmp_path / "src" / "deep" / "b.csv").st_mtime_ns
    )
    os.utime(mnt / "big.bin", ns=(0, 10**18), follow_symlinks=False)  # untouched file
    os.chmod(mnt / "deep" / "er", 0o711)  # a folder never listed
    os.utime(mnt / "deep", ns=(0, 2 * 10**18))  # a folder listed
    # A file removed while open is not committed under libfuse's hidden name.
    held = open(mnt / "empty", "rb")  # noqa: SIM115
    os.unlink(mnt / "empty")
    # Two files exchanged: refused, both kept.
    (mnt / "y1").write_text("one")
    (mnt / "y2").write_text("two")
    assert _renameat2(mnt / "y1", mnt / "y2", 2) == errno.EINVAL
    assert _renameat2(mnt / "y1", mnt / "y2", 1) == errno.EEXIST
    assert ((mnt / "y1").read_text(), (mnt / "y2").read_text()) == ("one", "two")
    # A reader of an untouched file sees what another handle writes.
    with open(mnt / "deep" / "b.csv", "rb") as reader, open(mnt / "deep" / "b.csv", "r+b") as w:
        w.write(b"NEW")
        w.flush()
        assert reader.read(3) == b"NEW"
    # Names and links a bundle cannot hold are refused when made, not at every commit.
    with pytest.raises(OSError):
        os.symlink("../../../etc/passwd", mnt / "esc")
    with pytest.raises(OSError):
        (mnt / "bad\udcff.txt").write_text("x")
    cli.run("bundle", "mount", "commit", str(mnt))
    held.close()
    cli.run("bundle", "unmount", str(mnt))
    _wait_gone(tmp_path / "cache" / "mounts")  # a clean end leaves no state behind
    got = tmp_path / "got"
    cli.run("bundle", "download", "--repo", "data", "--branch", "main", "--destination", str(got))
    assert not [p.name for p in got.rglob(".fuse_hidden*")]
    assert not (got / "empty").exists() and not (got / "esc").exists()
    assert os.stat(got / "new.txt").st_mtime_ns >= before - 10**9
    assert os.stat(got / "a.txt").st_mtime_ns >= before - 10**9
    assert os.stat(got / "big.bin").st_mtime_ns == 10**18
    assert os.stat(got / "deep" / "er").st_mode & 0o7777 == 0o711
    assert os.stat(got / "deep").st_mtime_ns == 2 * 10**18
    assert (got / "deep" / "b.csv").read_bytes()[:3] == b"NEW"
    assert ((got / "y1").read_text(), (got / "y2").read_text()) == ("one", "two")


def _wait_gone(folder: Path, timeout: float = 30.0) -> None:
    """Wait until ``folder`` holds no mount's state folder (a mount process removes its own
    as it ends; its log stays)."""
    deadline = time.monotonic() + timeout
    while folder.exists() and any(p.is_dir() for p in folder.iterdir()):
        assert time.monotonic() < deadline, list(folder.rglob("*"))
        time.sleep(0.05)


def _wait_exit(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"mount process {pid} did not exit")


@pytest.mark.parametrize("retry", ["recover", "unmount"])
def test_failed_commit_on_exit_is_kept_and_retried(cli: Cli, tmp_path: Path, retry: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli.run(
        "bundle", "mount", "new", "--repo", "data", "--mount", str(mnt), "--message", "kept",
        "--from", "label:v1", "--label", "kept", "--daemonize",
    )  # fmt: skip
    cli.sh("echo kept > new.txt && echo changed > a.txt && rm empty && mkdir d", mnt)
    state = next((tmp_path / "cache" / "mounts").glob("*/state.json"))
    pid = int(state.read_text().split('"pid": ')[1].split(",")[0])
    store = tmp_path / "store"
    store.rename(tmp_path / "away")
    store.write_text("not a store")  # the store vanished: every write to it fails
    try:
        os.kill(pid, signal.SIGTERM)
        _wait_exit(pid)
        assert not os.path.ismount(mnt)
        journal = state.parent / "journal.json"
        assert journal.exists()
        failed = cli.run("bundle", "mount", "recover", str(mnt), check=False)
        assert failed.returncode == 1 and journal.exists()
    finally:
        store.unlink()
        (tmp_path / "away").rename(store)
    again = cli.run(
        "bundle", "mount", "--repo", "data", "--label", "v1", "--mount", str(mnt), check=False
    )
    assert again.returncode == 1 and "recover" in again.stderr
    if retry == "recover":
        done = cli.run("bundle", "mount", "recover", str(mnt))
    else:
        done = cli.run("bundle", "unmount", str(mnt))
    assert "Uploaded bundle id:" in done.stdout
    assert not state.parent.exists()
    got = tmp_path / "got"
    cli.run("bundle", "download", "--repo", "data", "--label", "kept", "--destination", str(got))
    assert (got / "new.txt").read_text() == "kept\n"
    assert (got / "a.txt").read_text() == "changed\n"
    assert not (got / "empty").exists() and (got / "d").is_dir()
    assert filecmp.cmp(got / "big.bin", tmp_path / "src" / "big.bin", shallow=False)


@pytest.mark.s3
def test_mount_of_a_bundle_on_s3(tmp_path: Path, s3_location: tuple[str, dict[str, str]]) -> None:
    """The same reads through a mount of a bundle whose store is the moto S3 server."""
    missing = _fuse_missing()
    if missing:
        require_service("FUSE", missing)
    url, options = s3_location
    lines = [f"name: Ada\nemail: ada@example.com\nstore: {url}\noptions:"]
    lines += [f"  {key}: '{value}'" for key, value in options.items()]
    (tmp_path / "datamon.yaml").write_text("\n".join(lines) + "\n")
    cli = Cli(tmp_path)
    cli.run("repo", "create", "--repo", "data", "--description", "on s3")
    src = _source(tmp_path)
    cli.run("bundle", "upload", "--path", str(src), "--message", "v1", "--repo", "data")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        cli.run(
            "bundle", "mount", "--repo", "data", "--branch", "main", "--mount", str(mnt),
            "--cache-size", "64M", "--daemonize",
        )  # fmt: skip
        cli.sh("find . -type f -print0 | xargs -0 sha256sum > ../want", src)
        cli.sh(f"sha256sum -c {tmp_path / 'want'}", mnt)
        got = cli.sh("dd if=big.bin bs=4096 skip=500 count=3 status=none | sha256sum", mnt)
        want = cli.sh("dd if=big.bin bs=4096 skip=500 count=3 status=none | sha256sum", src)
        assert got.stdout == want.stdout
        assert os.readlink(mnt / "link.csv") == "deep/b.csv"
        cli.run("bundle", "unmount", str(mnt))
        assert not os.path.ismount(mnt)
    finally:
        _force_unmount(mnt)


def test_kernel_read_ahead_is_widened_where_allowed(mounted: Path) -> None:
    dev = os.stat(mounted).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    if not os.access(knob, os.W_OK):
        pytest.skip(f"{knob} is not writable here: the kernel's read-ahead stays")
    deadline = time.monotonic() + 10
    while knob.read_text().strip() != "1024" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert knob.read_text().strip() == "1024"
