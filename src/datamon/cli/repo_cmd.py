"""``datamon repo``: create and inspect repos."""

from __future__ import annotations

import click

from datamon.api.repository import Repository
from datamon.cli.context import AppContext, pass_app
from datamon.cli.options import json_option, repo_option
from datamon.cli.output import emit_json, line, lines, timestamp
from datamon.core.model import Repo


@click.group()
def repo() -> None:
    """Create, list and inspect repos.

    \b
    Example:
      datamon repo create --repo my-data --description "training data"
      datamon repo list
    """


@repo.command("create")
@repo_option
@click.option("--description", required=True, help="What the repo holds.")
@pass_app
def create(app: AppContext, repo: str, description: str) -> None:
    """Create a repo.

    \b
    Example:
      datamon repo create --repo my-data --description "Ritesh's repo for testing"
    """
    app.may_create = True
    Repository.create(app.store, repo, description, app.author)
    click.echo(f"Created repo {repo}")


def _row(r: Repo) -> dict[str, str]:
    return {
        "name": r.name,
        "description": r.description,
        "created": r.created.isoformat(),
        "author": f"{r.author.name} <{r.author.email}>",
    }


@repo.command("list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List repos: name , description , author , created.

    \b
    Example:
      datamon repo list
    """
    repos = app.store.repos.all()
    if as_json:
        emit_json([_row(r) for r in repos])
        return
    lines(
        (r.name, r.description, f"{r.author.name} <{r.author.email}>", timestamp(r.created))
        for r in repos
    )


@repo.command("get")
@repo_option
@json_option
@pass_app
def get(app: AppContext, repo: str, as_json: bool) -> None:
    """Show one repo.

    \b
    Example:
      datamon repo get --repo my-data
    """
    r = app.store.repos.get(repo)
    if as_json:
        emit_json(_row(r))
        return
    line(r.name, r.description, f"{r.author.name} <{r.author.email}>", timestamp(r.created))
