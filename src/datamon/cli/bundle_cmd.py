"""``datamon bundle``: upload, list, download, diff, update and verify bundles."""

from __future__ import annotations

import dataclasses
from typing import TextIO

import click

from datamon.api.upload import DEFAULT_BRANCH, UploadOptions
from datamon.cli.context import AppContext, pass_app
from datamon.cli.heap import keep_freed_heap
from datamon.cli.options import (
    concurrency_option,
    json_option,
    ref_options,
    repo_option,
    required,
    resolve,
)
from datamon.cli.output import count, echo_lines, emit_json, line, lines, progress, timestamp
from datamon.core.model import Bundle
from datamon.errors import DatamonError


def bundle_row(bid: str, b: Bundle) -> dict[str, object]:
    return {
        "id": bid,
        "timestamp": b.timestamp.isoformat(),
        "message": b.message,
        "parents": list(b.parents),
        "author": {"name": b.author.name, "email": b.author.email},
        "files": b.files,
        "size": b.size,
        "branch": b.branch,
    }


@click.group()
def bundle() -> None:
    """Upload, list, download, compare and verify bundles.

    \b
    Example:
      datamon bundle upload --path ./data --message "v1" --repo my-data --label init
      datamon bundle download --repo my-data --label init --destination /tmp/data
    """


@bundle.command("upload")
@click.option("--path", required=True, type=click.Path(), help="Folder to upload.")
@click.option("--message", required=True, help="What this bundle is.")
@repo_option
@click.option("--label", default=None, help="Point this label at the new bundle.")
@click.option("--branch", default=DEFAULT_BRANCH, show_default=True, help="Branch to commit on.")
@click.option(
    "--only",
    "only",
    multiple=True,
    help="Upload only this path (relative to --path) onto the branch head; repeatable.",
)
@click.option(
    "--only-from",
    type=click.File("r"),
    default=None,
    help="Read --only paths from this file, one a line ('-' for stdin).",
)
@click.option(
    "--reread",
    is_flag=True,
    help="Read every file, even those this machine's stat cache records as unchanged.",
)
@concurrency_option
@pass_app
def upload(
    app: AppContext,
    path: str,
    message: str,
    repo: str,
    label: str | None,
    branch: str,
    only: tuple[str, ...],
    only_from: TextIO | None,
    reread: bool,
    concurrency: int,
) -> None:
    """Upload a folder as a new bundle; the last line prints its id.

    With --only or --only-from, only the listed paths are read: the new bundle is the
    branch head with those paths replaced by what is on disk now (a folder whole, a path
    gone from disk removed), so committing a few changes to a huge tree costs a few
    files, not a scan of the tree.

    A file whose size, times and inode are those an earlier upload from this machine
    recorded is not read again. --reread reads every file (for a folder whose files can
    change without that showing, such as another file system mounted in its place).

    \b
    Example:
      datamon bundle upload --path ./data --message "The initial commit" --repo my-data --label init
      datamon bundle upload --path ./data --message "fix two rows" --repo my-data --only a/x.csv
    """
    keep_freed_heap()
    options = UploadOptions(
        message=message,
        author=app.author,
        branch=branch,
        label=label,
        concurrency=concurrency,
        reread=reread,
    )
    paths = list(only)
    if only_from is not None:
        try:
            paths.extend(line.rstrip("\n") for line in only_from if line.strip())
        except UnicodeDecodeError as exc:
            raise click.BadParameter(
                f"{only_from.name} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                param_hint="--only-from",
            ) from None
    if only or only_from is not None:
        if not paths:
            raise click.UsageError("--only-from named no paths")
        result = app.repo(repo).upload_paths(path, paths, options, progress())
    else:
        result = app.repo(repo).upload(path, options, progress())
    read = result.bytes_read - result.bytes_unchanged
    unchanged = (
        f" ({result.bytes_unchanged} more unchanged, not read again)"
        if result.bytes_unchanged
        else ""
    )
    click.echo(
        f"{result.bundle.files} files, {read} bytes read{unchanged}, "
        f"{result.new_chunks}/{result.chunks} chunks new, {result.bytes_stored} bytes stored",
        err=True,
    )
    click.echo(f"Uploaded bundle id:{result.bundle_id}")


@bundle.group("list", invoke_without_command=True)
@click.option("--repo", default=None, help="Name of the repo.")
@json_option
@click.pass_context
def list_(ctx: click.Context, repo: str | None, as_json: bool) -> None:
    """List bundles: id , timestamp , message (oldest first).

    \b
    Example:
      datamon bundle list --repo my-data
      datamon bundle list files --repo my-data --label init
    """
    if ctx.invoked_subcommand:
        return
    app: AppContext = ctx.find_object(AppContext)  # type: ignore[assignment]
    bundles = app.repo(required(repo, "--repo")).bundles()
    if as_json:
        emit_json([bundle_row(bid, b) for bid, b in bundles])
        return
    lines((bid, timestamp(b.timestamp), b.message) for bid, b in bundles)


@list_.command("files")
@repo_option
@ref_options
@json_option
@pass_app
def list_files(
    app: AppContext,
    repo: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    as_json: bool,
) -> None:
    """List the files of a bundle: name , size , hash.

    \b
    Example:
      datamon bundle list files --repo my-data --bundle 1a2b3c
    """
    r = app.repo(repo)
    bid = resolve(r, bundle, label, branch)
    if as_json:
        emit_json(
            [
                {
                    "name": f.path,
                    "size": f.size,
                    "hash": f.hash,
                    "mode": f.mode,
                    "mtime_ns": f.mtime_ns,
                    "kind": f.kind.name.lower(),
                    "target": f.target,
                }
                for f in r.files(bid)
            ]
        )
        return
    lines(
        (f"name:{f.path}", f"size:{f.size}", f"link:{f.target}" if f.target else f"hash:{f.hash}")
        for f in r.files(bid)
    )


@bundle.group("download", invoke_without_command=True)
@click.option("--repo", default=None, help="Name of the repo.")
@click.option("--destination", default=None, type=click.Path(), help="Empty folder to write to.")
@click.option("--bundle", default=None, help="Bundle id, or a unique prefix of one.")
@click.option("--label", default=None, help="Use the bundle this label names.")
@click.option("--branch", default=None, help="Use the head of this branch.")
@click.option("--name-filter", default=None, help="Only files whose path matches this regex.")
@concurrency_option
@click.pass_context
def download(
    ctx: click.Context,
    repo: str | None,
    destination: str | None,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    name_filter: str | None,
    concurrency: int,
) -> None:
    """Download a bundle into an empty folder.

    \b
    Example:
      datamon bundle download --repo my-data --destination /tmp/data --label init
      datamon bundle download file --file a/b.csv --repo my-data --label init --destination /tmp
    """
    if ctx.invoked_subcommand:
        return
    app: AppContext = ctx.find_object(AppContext)  # type: ignore[assignment]
    r = app.repo(required(repo, "--repo"))
    dest = required(destination, "--destination")
    bid = resolve(r, bundle, label, branch)
    keep_freed_heap()
    result = r.download(bid, dest, name_filter, concurrency, progress())
    got = f"{count(result.files, 'file')} ({result.bytes} bytes)"
    click.echo(f"Downloaded {got} of bundle {bid} to {dest}")


@download.command("file")
@click.option("--file", "path", required=True, help="Path of the file inside the bundle.")
@repo_option
@ref_options
@click.option(
    "--destination",
    default=".",
    type=click.Path(),
    help="Folder to write into.  [default: the current folder]",
)
@pass_app
def download_file(
    app: AppContext,
    path: str,
    repo: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    destination: str,
) -> None:
    """Download one file of a bundle to DESTINATION/FILE.

    \b
    Example:
      datamon bundle download file --file cmd/x.go --repo my-data --label init --destination /tmp
    """
    r = app.repo(repo)
    target = r.download_file(resolve(r, bundle, label, branch), path, destination)
    click.echo(f"Downloaded {path} to {target}")


@bundle.command("get")
@repo_option
@ref_options
@json_option
@pass_app
def get(
    app: AppContext,
    repo: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    as_json: bool,
) -> None:
    """Show one bundle: id , timestamp , message, then its details.

    \b
    Example:
      datamon bundle get --repo my-data --label init
    """
    r = app.repo(repo)
    bid = resolve(r, bundle, label, branch)
    b = r.bundle(bid)
    if as_json:
        emit_json(bundle_row(bid, b))
        return
    line(bid, timestamp(b.timestamp), b.message)
    click.echo(f"author: {b.author.name} <{b.author.email}>")
    click.echo(f"parents: {' '.join(b.parents) or '-'}")
    click.echo(f"branch: {b.branch or '-'}")
    click.echo(f"files: {b.files}")
    click.echo(f"size: {b.size}")


def _ref(r: object, text: str) -> str:
    """A bundle named as ``label:x``, ``branch:x``, an id prefix, a label or a branch."""
    from datamon.api.repository import Repository

    assert isinstance(r, Repository)
    kind, sep, name = text.partition(":")
    if sep and kind in ("label", "branch", "bundle"):
        return r.resolve(**{kind: name})
    # A label or a branch before an id prefix, as datamon:// URLs and mounts take them: a
    # label "2" is not the bundle whose id starts with 2. A whole id is an id.
    whole = len(text) == 40 and all(c in "0123456789abcdef" for c in text)
    attempts = [{"bundle": text}] if whole else [{"label": text}, {"branch": text}]
    for attempt in attempts:
        try:
            return r.resolve(**attempt)
        except DatamonError:
            continue
    return r.resolve(bundle=text)


@bundle.command("diff")
@repo_option
@click.argument("old")
@click.argument("new", required=False)
@click.option("--path", "folder", default=None, type=click.Path(), help="Compare OLD to a folder.")
@json_option
@pass_app
def diff(
    app: AppContext, repo: str, old: str, new: str | None, folder: str | None, as_json: bool
) -> None:
    """Files added, deleted and modified from bundle OLD to bundle NEW (or to --path).

    OLD and NEW are bundle ids (or prefixes), labels or branches; write label:NAME or
    branch:NAME to be explicit.

    \b
    Example:
      datamon bundle diff --repo my-data init main
      datamon bundle diff --repo my-data init --path ./data
    """
    if (new is None) == (folder is None):
        raise click.UsageError("give either NEW or --path")
    r = app.repo(repo)
    a = _ref(r, old)
    changes = r.diff_local(a, folder) if folder else r.diff(a, _ref(r, new or ""))
    rows = [{"status": c.status, "path": c.path} for c in changes]
    if as_json:
        emit_json(rows)
        return
    marks = {"added": "A", "deleted": "D", "modified": "M"}
    echo_lines(f"{marks[row['status']]} {row['path']}" for row in rows)
    counts = {s: sum(1 for x in rows if x["status"] == s) for s in marks}
    click.echo(
        f"{counts['added']} added, {counts['deleted']} deleted, {counts['modified']} modified",
        err=True,
    )


@bundle.command("update")
@repo_option
@ref_options
@click.option("--destination", required=True, type=click.Path(exists=True, file_okay=False))
@pass_app
def update(
    app: AppContext,
    repo: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    destination: str,
) -> None:
    """Bring a downloaded folder to another bundle, writing only what differs.

    Local files that the bundle does not have are deleted; changed files are replaced.

    \b
    Example:
      datamon bundle update --repo my-data --label v2 --destination /tmp/data
    """
    r = app.repo(repo)
    bid = resolve(r, bundle, label, branch)
    changes = r.update(bid, destination, progress())
    click.echo(f"Updated {destination} to bundle {bid}: {len(changes)} paths changed")


@bundle.command("verify")
@repo_option
@ref_options
@json_option
@pass_app
def verify(
    app: AppContext,
    repo: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    as_json: bool,
) -> None:
    """Re-read and re-hash every tree and chunk; report any damage (all bundles by default).

    With --json, one object a bundle once all are checked: bundle, files, chunks, bytes,
    ok, problems. The exit code is not zero if one is damaged, either way.

    \b
    Example:
      datamon bundle verify --repo my-data --label init
    """
    r = app.repo(repo)
    if bundle or label or branch:
        ids = [resolve(r, bundle, label, branch)]
    else:
        ids = [bid for bid, _b in r.bundles()]
    damaged = 0
    rows: list[dict[str, object]] = []
    for bid in ids:
        report = r.verify(bid, progress())
        damaged += not report.ok
        if as_json:
            rows.append({"bundle": bid, **dataclasses.asdict(report), "ok": report.ok})
            continue
        for problem in report.problems:
            click.echo(f"DAMAGED {bid} {problem}")
        status = "ok" if report.ok else f"{len(report.problems)} problems"
        click.echo(f"{bid} , {report.files} files , {report.chunks} chunks checked , {status}")
    if as_json:
        emit_json(rows)
    if damaged:
        raise DatamonError(f"{damaged} of {len(ids)} bundles are damaged")
