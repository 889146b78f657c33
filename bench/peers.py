"""The tools under test, behind one small interface: prepare, upload, download, list, stored.

Every tool gets a fresh folder per run (``prepare``) that holds its store, repository or
remote and any cache or config it would otherwise keep under ``$HOME``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path

from measure import Sample, StepFailed, capture, combine, run_cmd, tree_size

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / ".peers"
REPO = "bench"
AUTHOR = ("bench", "bench@localhost")


def _datamon_exe() -> Path:
    here = Path(sys.executable).parent / "datamon"
    if here.exists():
        return here
    found = shutil.which("datamon")
    if not found:
        raise FileNotFoundError("datamon is not installed in this interpreter's environment")
    return Path(found)


def compile_datamon() -> None:
    """Byte-compile Datamon's modules, as installing a package from a wheel does.

    An editable install run with PYTHONDONTWRITEBYTECODE set would otherwise compile every
    module again in every command (about 0.13 s of each start-up here), which the peers,
    installed from wheels, never pay.
    """
    spec = importlib.util.find_spec("datamon")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("datamon is not importable in this interpreter")
    folder = spec.submodule_search_locations[0]
    subprocess.run([sys.executable, "-m", "compileall", "-q", folder], check=True)


class Tool(ABC):
    """One tool under test. ``prepare`` must be called before anything else in a run."""

    name: str
    timeout: float = 3600.0

    def __init__(self) -> None:
        self.run_dir = Path()

    @abstractmethod
    def available(self) -> str | None:
        """None if the tool can run here, otherwise why not."""

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def prepare(self, run_dir: Path) -> None:
        """Create a fresh, empty store/repository/remote under ``run_dir`` (not timed)."""

    @abstractmethod
    def upload(self, src: Path, message: str) -> Sample:
        """Record ``src`` as a new version in the store (timed)."""

    @abstractmethod
    def download(self, dest: Path) -> tuple[Sample, Path]:
        """Write the latest version into a clean workspace; returns where its files are."""

    @abstractmethod
    def stored(self) -> int:
        """Bytes in the repository/remote now (apparent size, like ``du -sb``)."""

    def commit(self, src: Path, changed: list[Path], message: str) -> Sample:
        """Record a version of ``src`` in which only ``changed`` differ (timed). Tools that
        cannot be told what changed scan the whole tree: an upload."""
        return self.upload(src, message)

    def list_files(self) -> Sample:
        raise NotImplementedError(f"{self.name} has no file listing here")


# --- Datamon ---------------------------------------------------------------------------------
class Datamon(Tool):
    name = "datamon"

    def __init__(self, config: Path) -> None:
        super().__init__()
        self.exe = _datamon_exe()
        self.config = config
        self.store = ""

    def available(self) -> str | None:
        return None

    def version(self) -> str:
        return capture([os.fspath(self.exe), "--version"], self.env()).replace(", version", "")

    def env(self) -> dict[str, str]:
        return {
            "DATAMON_CONFIG": os.fspath(self.config),
            "DATAMON_CACHE_DIR": os.fspath(self.run_dir / "cache"),
        }

    def cmd(self, *args: str) -> list[str]:
        store = ["--store", self.store] if self.store else []
        return [os.fspath(self.exe), *store, *args]

    def write_config(self, store: str = "", options: dict[str, str] | None = None) -> None:
        extra = [f"--store={store}"] if store else []
        for k, v in (options or {}).items():
            extra += ["--option", f"{k}={v}"]
        run_cmd(
            [
                os.fspath(self.exe),
                "config",
                "create",
                "--name",
                AUTHOR[0],
                "--email",
                AUTHOR[1],
                *extra,
            ],
            self.env(),
        )

    def prepare(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.store = os.fspath(run_dir / "store")
        if not self.config.exists():
            self.write_config()
        run_cmd(self.cmd("repo", "create", "--repo", REPO, "--description", "bench"), self.env())

    def upload(self, src: Path, message: str) -> Sample:
        sample = run_cmd(
            self.cmd(
                "bundle", "upload", "--path", os.fspath(src), "--message", message, "--repo", REPO
            ),
            self.env(),
            timeout=self.timeout,
        )
        if "Uploaded bundle id:" not in sample.stdout_tail:
            raise StepFailed(f"datamon upload printed no bundle id: {sample.stdout_tail!r}")
        return sample

    def commit(self, src: Path, changed: list[Path], message: str) -> Sample:
        """``bundle upload --only-from``: only the changed paths are read (not timed: writing
        the list, as the user's pipeline that changed the files would)."""
        listing = self.run_dir / "changed.txt"
        listing.write_text("".join(f"{p.relative_to(src).as_posix()}\n" for p in changed))
        args = ["--path", os.fspath(src), "--message", message, "--repo", REPO]
        sample = run_cmd(
            self.cmd("bundle", "upload", *args, "--only-from", os.fspath(listing)),
            self.env(),
            timeout=self.timeout,
        )
        if "Uploaded bundle id:" not in sample.stdout_tail:
            raise StepFailed(f"datamon upload printed no bundle id: {sample.stdout_tail!r}")
        return sample

    def download(self, dest: Path) -> tuple[Sample, Path]:
        args = ["bundle", "download", "--repo", REPO, "--branch", "main"]
        sample = run_cmd(
            self.cmd(*args, "--destination", os.fspath(dest)), self.env(), timeout=self.timeout
        )
        return sample, dest

    def list_files(self) -> Sample:
        return run_cmd(
            self.cmd("bundle", "list", "files", "--repo", REPO, "--branch", "main"),
            self.env(),
            timeout=self.timeout,
            first_line=lambda line: line.startswith("name:"),
        )

    def stored(self) -> int:
        return tree_size(Path(self.store)).apparent


# --- DVC -------------------------------------------------------------------------------------
DVC_ENV = {"DVC_NO_ANALYTICS": "1"}


def _move_in(src: Path, dst: Path) -> None:
    """Rename a dataset into a tool's workspace (same file system: no data is copied)."""
    if dst.exists():
        raise StepFailed(f"{dst} already exists")
    src.rename(dst)


class Dvc(Tool):
    """``dvc add`` + ``dvc push`` to a local-folder remote; ``dvc pull`` into a clean workspace.

    DVC tracks data inside its project, so the dataset is renamed into the project for the
    upload and back afterwards (a rename, not a copy, and not timed).
    """

    name = "dvc"

    def __init__(self) -> None:
        super().__init__()
        self.exe = PEERS / "dvc" / "bin" / "dvc"

    def available(self) -> str | None:
        return None if self.exe.exists() else f"{self.exe} missing: run bench/setup.sh"

    def version(self) -> str:
        return capture([os.fspath(self.exe), "--version"], DVC_ENV)

    def env(self) -> dict[str, str]:
        # DVC's per-repo state (hashes, links) would otherwise go to /var/tmp/dvc.
        return {**DVC_ENV, "DVC_SITE_CACHE_DIR": os.fspath(self.run_dir / "dvc-site")}

    @property
    def project(self) -> Path:
        return self.run_dir / "proj"

    @property
    def remote(self) -> Path:
        return self.run_dir / "remote"

    def _config(self) -> str:
        return (
            "[core]\n    no_scm = True\n    analytics = false\n    check_update = false\n"
            "    remote = store\n"
            f"['remote \"store\"']\n    url = {self.remote}\n"
        )

    def prepare(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.remote.mkdir(parents=True)
        # What `dvc init --no-scm` writes, without its 1.5 s of start-up per run.
        (self.project / ".dvc").mkdir(parents=True)
        (self.project / ".dvc" / "config").write_text(self._config())
        (self.project / ".dvcignore").write_text("")

    def upload(self, src: Path, message: str) -> Sample:
        work = self.project / "data"
        _move_in(src, work)
        try:
            add = run_cmd([self.exe, "add", "-q", "data"], self.env(), self.project, self.timeout)
            push = run_cmd([self.exe, "push", "-q"], self.env(), self.project, self.timeout)
        finally:
            work.rename(src)
        return combine({"add": add, "push": push})

    def download(self, dest: Path) -> tuple[Sample, Path]:
        # A clean workspace: what `git clone` of the project would give (config + data.dvc).
        (dest / ".dvc").mkdir(parents=True)
        shutil.copy(self.project / ".dvc" / "config", dest / ".dvc" / "config")
        shutil.copy(self.project / "data.dvc", dest / "data.dvc")
        sample = run_cmd([self.exe, "pull", "-q"], self.env(), dest, self.timeout)
        return sample, dest / "data"

    def stored(self) -> int:
        return tree_size(self.remote).apparent


# --- restic ----------------------------------------------------------------------------------
class Restic(Tool):
    """``restic backup`` to a local repository, ``restic restore latest``, ``restic ls``."""

    name = "restic"

    def __init__(self) -> None:
        super().__init__()
        self.exe = shutil.which("restic") or "restic"

    def available(self) -> str | None:
        return None if shutil.which("restic") else "restic not installed: run bench/setup.sh"

    def version(self) -> str:
        return capture([self.exe, "version"])

    def env(self) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": "bench",
            "RESTIC_REPOSITORY": os.fspath(self.run_dir / "repo"),
            "RESTIC_CACHE_DIR": os.fspath(self.run_dir / "restic-cache"),
        }

    def prepare(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        run_cmd([self.exe, "init", "-q"], self.env())

    def upload(self, src: Path, message: str) -> Sample:
        return run_cmd(
            [self.exe, "backup", "-q", "--tag", message.replace(" ", "-"), os.fspath(src)],
            self.env(),
            timeout=self.timeout,
        )

    def download(self, dest: Path) -> tuple[Sample, Path]:
        sample = run_cmd(
            [self.exe, "restore", "-q", "latest", "--target", os.fspath(dest)],
            self.env(),
            timeout=self.timeout,
        )
        return sample, dest

    def list_files(self) -> Sample:
        return run_cmd(
            [self.exe, "ls", "latest"],
            self.env(),
            timeout=self.timeout,
            first_line=lambda line: line.startswith("/"),
        )

    def stored(self) -> int:
        return tree_size(self.run_dir / "repo").apparent


# --- Oxen ------------------------------------------------------------------------------------
class Oxen(Tool):
    """Oxen (PyPI ``oxenai``) through its Python API: ``add`` + ``commit``, ``restore``.

    Oxen's ``push``/``clone`` need an oxen-server, which PyPI does not ship; the local
    repository's ``.oxen`` folder plays the remote, and the download restores the committed
    tree into a workspace emptied of it.
    """

    name = "oxen"

    def __init__(self) -> None:
        super().__init__()
        self.python = PEERS / "oxen" / "bin" / "python"
        self.script = BENCH / "oxen_step.py"

    def available(self) -> str | None:
        if not self.python.exists():
            return "bench/.peers/oxen missing: bench/setup.sh could not install oxenai"
        probe = capture([os.fspath(self.python), "-c", "import oxen; print('ok')"])
        return None if probe == "ok" else f"oxenai does not import: {probe}"

    def version(self) -> str:
        return "oxenai " + capture(
            [
                os.fspath(self.python),
                "-c",
                "import importlib.metadata as m; print(m.version('oxenai'))",
            ]
        )

    def env(self) -> dict[str, str]:
        home = os.fspath(self.run_dir / "oxen-home")
        return {"HOME": home, "XDG_CONFIG_HOME": os.path.join(home, ".config")}

    def step(self, *args: str) -> Sample:
        return run_cmd(
            [self.python, self.script, *args],
            self.env(),
            cwd=self.run_dir,
            timeout=self.timeout,
        )

    @property
    def project(self) -> Path:
        return self.run_dir / "proj"

    def prepare(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.project.mkdir(parents=True)
        self.step("init", os.fspath(self.project), *AUTHOR)

    def upload(self, src: Path, message: str) -> Sample:
        work = self.project / "data"
        _move_in(src, work)
        try:
            return self.step("commit", os.fspath(self.project), message)
        finally:
            work.rename(src)

    def download(self, dest: Path) -> tuple[Sample, Path]:
        # The dataset was renamed back out of the workspace after the upload.
        return self.step("restore", os.fspath(self.project)), self.project / "data"

    def stored(self) -> int:
        return tree_size(self.project / ".oxen").apparent


# --- Raw object-store PUTs (W6 baseline) -----------------------------------------------------
class ObstorePut:
    """``bench/s3put.py``: every file of a tree PUT as one object, ``concurrency`` at a time."""

    name = "obstore-put"

    def __init__(self, options: dict[str, str], concurrency: int) -> None:
        self.options = options
        self.concurrency = concurrency

    def put_tree(self, bucket: str, src: Path, timeout: float) -> Sample:
        args = [sys.executable, os.fspath(BENCH / "s3put.py"), "--bucket", bucket]
        args += ["--src", os.fspath(src), "--concurrency", str(self.concurrency)]
        for k, v in self.options.items():
            args += ["--option", f"{k}={v}"]
        return run_cmd(args, timeout=timeout)


def all_peers() -> list[Tool]:
    return [Dvc(), Restic(), Oxen()]


__all__ = ["Datamon", "Dvc", "ObstorePut", "Oxen", "Restic", "Tool", "all_peers"]
