"""``datamon label``: human names for bundles."""

from __future__ import annotations

import click

from datamon.cli.context import AppContext, pass_app
from datamon.cli.options import json_option, repo_option
from datamon.cli.output import emit_json, line, lines, timestamp
from datamon.core.model import Ref


def ref_row(ref: Ref, history: bool = False) -> dict[str, object]:
    row: dict[str, object] = {
        "name": ref.name,
        "bundle": ref.bundle,
        "timestamp": ref.timestamp.isoformat(),
    }
    if history:
        row["history"] = [
            {
                "bundle": m.bundle,
                "previous": m.previous,
                "timestamp": m.timestamp.isoformat(),
                "author": m.author,
            }
            for m in ref.history
        ]
    return row


@click.group()
def label() -> None:
    """Set, list and show labels (one bundle per label; setting again moves it).

    \b
    Example:
      datamon label set --repo my-data --label production --bundle 1a2b3c
      datamon label list --repo my-data
    """


@label.command("set")
@repo_option
@click.option("--label", "name", required=True, help="Label to set.")
@click.option("--bundle", required=True, help="Bundle id, or a unique prefix of one.")
@pass_app
def set_(app: AppContext, repo: str, name: str, bundle: str) -> None:
    """Point a label at a bundle.

    \b
    Example:
      datamon label set --repo my-data --label production --bundle 1a2b3c
    """
    ref = app.repo(repo).set_label(name, bundle, app.author)
    click.echo(f"Label {ref.name} set to bundle {ref.bundle}")


@label.command("list")
@repo_option
@json_option
@pass_app
def list_(app: AppContext, repo: str, as_json: bool) -> None:
    """List labels: label , bundle id , timestamp.

    \b
    Example:
      datamon label list --repo my-data
    """
    refs = app.repo(repo).labels()
    if as_json:
        emit_json([ref_row(r) for r in refs])
        return
    lines((r.name, r.bundle, timestamp(r.timestamp)) for r in refs)


@label.command("get")
@repo_option
@click.option("--label", "name", required=True, help="Label to show.")
@click.option(
    "--history",
    is_flag=True,
    help="Also list every move of the label, newest first (in --json, oldest first).",
)
@json_option
@pass_app
def get(app: AppContext, repo: str, name: str, history: bool, as_json: bool) -> None:
    """Show a label: label , bundle id , timestamp (and its moves with --history, newest
    first as lines, as `branch log` lists; oldest first in --json's history, as stored).

    \b
    Example:
      datamon label get --repo my-data --label production --history
    """
    ref = app.repo(repo).label(name)
    if as_json:
        emit_json(ref_row(ref, history))
        return
    line(ref.name, ref.bundle, timestamp(ref.timestamp))
    if history:
        for move in reversed(ref.history):
            line(f"  {move.bundle}", timestamp(move.timestamp), move.author)
