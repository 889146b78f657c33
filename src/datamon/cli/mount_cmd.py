"""``datamon bundle mount`` / ``mount new`` / ``mount commit`` and ``datamon bundle unmount``.

The FUSE code (and its binding) is imported only when one of these commands runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from datamon.api.upload import DEFAULT_BRANCH
from datamon.cli.context import AppContext, pass_app
from datamon.cli.options import required, resolve
from datamon.config import cache_dir

# The folder of a mount's chunk cache inside its --destination: the cache removes folders of
# its own earlier layout from the folder it is given, so it never gets a user's folder.
CHUNKS = ".datamon-chunks"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``1G``, ``2GiB`` or a number of bytes."""
    found = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not found:
        raise click.BadParameter(f"{text!r} is not a size such as 512M or 2G", param_hint="SIZE")
    return int(found.group(1)) * _UNITS[found.group(2).upper()]


def _app(ctx: click.Context) -> AppContext:
    app: AppContext = ctx.find_object(AppContext)  # type: ignore[assignment]
    return app


def _check_cache() -> None:
    """Before the store is opened: opening it writes its index under the cache folder."""
    from datamon.fuse import check_writable

    check_writable(cache_dir(), "cache folder")


def _prepare(app: AppContext, mountpoint: str, stream: bool, chunks: str | None = None) -> str:
    """Every check that can fail before anything is mounted or written."""
    from datamon.fuse import check_mountpoint, check_writable

    real = check_mountpoint(mountpoint)
    if not stream:
        check_writable(
            Path(chunks) if chunks else app.store.cache_dir / "chunks", "chunk cache folder"
        )
    return real


def _daemonize(app: AppContext, mountpoint: str, args: list[str]) -> None:
    """Run this command again in the background and return once its mount is ready."""
    from datamon.fuse import MountError, MountState
    from datamon.fuse.mount import wait_ready

    argv = [sys.executable, "-m", "datamon"]
    if app.debug:
        argv.append("--debug")
    if app.store_override:
        argv += ["--store", app.store_override]
    state = MountState(mountpoint)
    state.log.parent.mkdir(parents=True, exist_ok=True)
    with open(state.log, "wb") as log:
        process = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(mountpoint, process, str(state.log))
    except MountError:
        process.wait(10)
        state.log.unlink(missing_ok=True)
        raise
    click.echo(f"Mount process {process.pid} serves {mountpoint}; log: {state.log}", err=True)


def _options(cache_size: str, prefetch: int, stream: bool, chunks: str | None = None) -> Any:
    from datamon.fuse import MountOptions

    return MountOptions(
        prefetch=prefetch, cache_size=parse_size(cache_size), stream=stream, chunks=chunks
    )


@click.group("mount", invoke_without_command=True)
@click.option("--repo", default=None, help="Name of the repo.")
@click.option("--bundle", default=None, help="Bundle id, or a unique prefix of one.")
@click.option("--label", default=None, help="Mount the bundle this label names.")
@click.option("--branch", default=None, help="Mount the head of this branch.")
@click.option("--mount", "mountpoint", default=None, type=str, help="Empty folder.")
@click.option("--stream", is_flag=True, help="Keep no chunks in the local disk cache.")
@click.option(
    "--destination",
    default=None,
    type=click.Path(file_okay=False),
    help="Keep the fetched chunks (the disk chunk cache) in this folder's .datamon-chunks."
    "  [default: the cache folder's, shared by mounts]",
)
@click.option(
    "--cache-size",
    default="1G",
    show_default=True,
    help="Disk chunk cache bound; a quarter of it (16M-128M) bounds chunks held in memory.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(0, 1024),
    default=256,
    show_default=True,
    help="Chunks read ahead on sequential reads.",
)
@click.option("--daemonize", is_flag=True, help="Return once mounted; serve in the background.")
@click.pass_context
def mount(
    ctx: click.Context,
    repo: str | None,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    mountpoint: str | None,
    stream: bool,
    destination: str | None,
    cache_size: str,
    prefetch: int,
    daemonize: bool,
) -> None:
    """Mount a bundle read-only; files are fetched lazily as they are read.

    Without --bundle, --label or --branch, mounts the head of the main branch. Runs until
    unmounted (or Ctrl-C); with --daemonize it returns once the mount is ready.

    \b
    Example:
      datamon bundle mount --repo my-data --label init --mount /mnt/data --daemonize
      datamon bundle unmount /mnt/data
    """
    if ctx.invoked_subcommand:
        return
    if stream and destination:
        raise click.UsageError("--stream keeps no chunks on disk: --destination has no use")
    app = _app(ctx)
    _check_cache()
    r = app.repo(required(repo, "--repo"))
    where = required(mountpoint, "--mount")
    chunks = os.path.join(os.path.abspath(destination), CHUNKS) if destination else None
    options = _options(cache_size, prefetch, stream, chunks)
    real = _prepare(app, where, stream, chunks)
    bid = resolve(r, bundle, label, branch, default_branch=DEFAULT_BRANCH)
    if daemonize:
        args = ["bundle", "mount", "--repo", r.name, "--bundle", bid, "--mount", real]
        args += ["--cache-size", cache_size, "--prefetch", str(prefetch)]
        args += ["--stream"] if stream else []
        args += ["--destination", os.path.dirname(chunks)] if chunks else []
        _daemonize(app, real, args)
        click.echo(f"Mounted bundle {bid} of repo {r.name} at {real}")
        return
    from datamon.fuse import serve_readonly

    click.echo(f"Mounting bundle {bid} of repo {r.name} at {real} (Ctrl-C to unmount)", err=True)
    serve_readonly(app.store, r.name, bid, real, options)


def _from(app: AppContext, repo: str, ref: str) -> tuple[str, str | None]:
    """The bundle ``--from`` names (``label:X``, ``branch:X``, ``bundle:X`` or a bare name),
    and the branch it names, if any."""
    from datamon.fs.view import resolve_ref

    r = app.repo(repo)
    kind, sep, name = ref.partition(":")
    if sep and kind in ("label", "branch", "bundle"):
        return r.resolve(**{kind: name}), name if kind == "branch" else None
    bid = resolve_ref(r, ref)
    if bid is None:
        raise click.UsageError(f"--from {ref}: nothing to start from")
    is_branch = app.store.refs.read(repo, "branch", ref) is not None
    return bid, ref if is_branch else None


def _print_commit(reply: dict[str, Any]) -> None:
    if reply.get("bundle"):
        click.echo(f"{reply.get('new_chunks', 0)} new chunks stored", err=True)
        click.echo(f"Uploaded bundle id:{reply['bundle']}")
    else:
        click.echo("Nothing to commit: the mount matches its branch head", err=True)


@mount.command("new")
@click.option("--repo", required=True, help="Name of the repo.")
@click.option("--mount", "mountpoint", required=True, type=str, help="Empty folder.")
@click.option("--message", required=True, help="Message of the bundles committed.")
@click.option("--label", default=None, help="Point this label at each committed bundle.")
@click.option("--branch", default=None, help="Branch to commit on [default: --from's or main].")
@click.option(
    "--from",
    "from_ref",
    default=None,
    help="Start from this bundle: label:NAME, branch:NAME, bundle:ID or a bare name.",
)
@click.option(
    "--cache-size",
    default="1G",
    show_default=True,
    help="Disk chunk cache bound; a quarter of it (16M-128M) bounds chunks held in memory.",
)
@click.option("--prefetch", type=click.IntRange(0, 1024), default=256, show_default=True)
@click.option("--daemonize", is_flag=True, help="Return once mounted; serve in the background.")
# The branch head the starting command saw ("-" for none), for the process it starts.
@click.option("--seen", default=None, hidden=True)
@pass_app
def mount_new(
    app: AppContext,
    repo: str,
    mountpoint: str,
    message: str,
    label: str | None,
    branch: str | None,
    from_ref: str | None,
    cache_size: str,
    prefetch: int,
    daemonize: bool,
    seen: str | None,
) -> None:
    """Mount a writable tree, empty or starting from a bundle; changes stay on local disk
    until unmount, Ctrl-C or `datamon bundle mount commit DIR` commit them as a new bundle.

    \b
    Example:
      datamon bundle mount new --repo my-data --mount /mnt/w --message "fix" --from label:init
      datamon bundle mount commit /mnt/w
      datamon bundle unmount /mnt/w
    """
    from datamon.fuse import CommitTarget

    options = _options(cache_size, prefetch, False)
    _check_cache()
    author = app.author
    app.store.repos.get(repo)
    real = _prepare(app, mountpoint, False)
    base, from_branch = _from(app, repo, from_ref) if from_ref else (None, None)
    target_branch = branch or from_branch or DEFAULT_BRANCH
    target = CommitTarget(repo, target_branch, message, author, label)
    # The head the mount's changes will be made against: read once, here, so that a commit
    # landing before the mount process starts is not taken back by the mount's first.
    if seen is None and from_branch is not None and from_branch == target_branch:
        seen = base or "-"  # the head its tree came from, whatever moved since
    elif seen is None:
        head = app.store.refs.read(repo, "branch", target_branch)
        seen = head[0].bundle if head else "-"
    if daemonize:
        args = ["bundle", "mount", "new", "--repo", repo, "--mount", real, "--message", message]
        args += ["--branch", target_branch, "--cache-size", cache_size, "--prefetch", str(prefetch)]
        args += ["--label", label] if label else []
        args += ["--from", f"bundle:{base}"] if base else []
        args += ["--seen", seen]
        _daemonize(app, real, args)
        click.echo(f"Mounted a writable tree of repo {repo} at {real} (branch {target_branch})")
        return
    from datamon.fuse import serve_writable

    click.echo(f"Mounting a writable tree of repo {repo} at {real} (Ctrl-C to commit)", err=True)
    head_seen = None if seen == "-" else seen
    serve_writable(app.store, target, base, real, options, _print_commit, head_seen, True)


@mount.command("commit")
@click.argument("mountpoint", type=str)
def mount_commit(mountpoint: str) -> None:
    """Commit what a writable mount has staged, as one new bundle; the mount stays.

    \b
    Example:
      datamon bundle mount commit /mnt/w
    """
    from datamon.fuse import MountState, commit, pending_journal, recover

    if MountState(mountpoint).live() is None and pending_journal(mountpoint) is not None:
        reply = recover(_app(click.get_current_context()).store, mountpoint)
        assert reply is not None
        _print_commit(reply)
        return
    _print_commit(commit(mountpoint))


@mount.command("recover")
@click.argument("mountpoint", type=str)
def mount_recover(mountpoint: str) -> None:
    """Commit the changes a writable mount kept because its last commit failed (for
    example when the store was unreachable as it was unmounted); retry until it succeeds.

    \b
    Example:
      datamon bundle mount recover /mnt/w
    """
    from datamon.fuse import MountError, recover

    reply = recover(_app(click.get_current_context()).store, mountpoint)
    if reply is None:
        raise MountError(f"no changes are kept for {mountpoint}: nothing to recover")
    _print_commit(reply)


@click.command("unmount")
@click.argument("mountpoint", type=str)
def unmount(mountpoint: str) -> None:
    """Unmount (committing a writable mount first); also cleans up after a killed mount.

    \b
    Example:
      datamon bundle unmount /mnt/data
    """
    from datamon.fuse import MountState, pending_journal, recover
    from datamon.fuse import unmount as do_unmount

    if MountState(mountpoint).live() is None and pending_journal(mountpoint) is not None:
        reply = recover(_app(click.get_current_context()).store, mountpoint)
        if reply is not None:
            _print_commit(reply)
        click.echo(f"Unmounted {os.path.realpath(mountpoint)}", err=True)
        return
    reply = do_unmount(mountpoint)
    if reply is not None and reply.get("kept"):
        click.echo(
            f"warning: the mount process was killed before it committed: the {reply['files']} "
            f"file(s) written through it are kept in {reply['kept']} (their paths in the "
            "mount were lost with it)",
            err=True,
        )
    elif reply is not None:
        _print_commit(reply)
    click.echo(f"Unmounted {os.path.realpath(mountpoint)}", err=True)


__all__ = ["mount", "unmount"]
