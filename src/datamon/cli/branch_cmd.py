"""``datamon branch``: lines of bundles whose heads move by compare-and-swap."""

from __future__ import annotations

import click

from datamon.cli.bundle_cmd import bundle_row
from datamon.cli.context import AppContext, pass_app
from datamon.cli.label_cmd import ref_row
from datamon.cli.options import json_option, ref_options, repo_option, resolve
from datamon.cli.output import emit_json, lines, timestamp


@click.group()
def branch() -> None:
    """Create, list and follow branches (uploads go to 'main' unless told otherwise).

    \b
    Example:
      datamon branch create --repo my-data --name experiment --label init
      datamon branch log --repo my-data --branch experiment
    """


@branch.command("create")
@repo_option
@click.option("--name", "name", required=True, help="The new branch.")
@ref_options
@pass_app
def create(
    app: AppContext,
    repo: str,
    name: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
) -> None:
    """Start a branch at a bundle.

    \b
    Example:
      datamon branch create --repo my-data --name experiment --label init
    """
    r = app.repo(repo)
    ref = r.create_branch(name, resolve(r, bundle, label, branch), app.author)
    click.echo(f"Created branch {ref.name} at bundle {ref.bundle}")


@branch.command("list")
@repo_option
@json_option
@pass_app
def list_(app: AppContext, repo: str, as_json: bool) -> None:
    """List branches: branch , head bundle id , timestamp.

    \b
    Example:
      datamon branch list --repo my-data
    """
    refs = app.repo(repo).branches()
    if as_json:
        emit_json([ref_row(r) for r in refs])
        return
    lines((r.name, r.bundle, timestamp(r.timestamp)) for r in refs)


@branch.command("log")
@repo_option
@click.option("--branch", "name", default="main", show_default=True, help="Branch to follow.")
@json_option
@pass_app
def log(app: AppContext, repo: str, name: str, as_json: bool) -> None:
    """The branch's bundles, newest first: id , timestamp , message.

    \b
    Example:
      datamon branch log --repo my-data --branch main
    """
    history = list(app.repo(repo).log(name))
    if as_json:
        emit_json([bundle_row(bid, b) for bid, b in history])
        return
    lines((bid, timestamp(b.timestamp), b.message) for bid, b in history)
