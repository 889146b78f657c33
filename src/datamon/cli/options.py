"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from datamon.api.repository import Repository

F = TypeVar("F", bound=Callable[..., Any])

repo_option = click.option("--repo", required=True, help="Name of the repo.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
concurrency_option = click.option(
    "--concurrency-factor",
    "concurrency",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help=(
        "How many files are read or written at once. Uploads read and hash with at most one"
        " thread per core (at least 2), or as many worker processes for 2,000 small files"
        " or more (1 turns them off); downloads from local disk use as many threads, or one"
        " more when most of the bytes are in files over 8 MiB."
    ),
)


def ref_options(f: F) -> F:
    """``--bundle`` / ``--label`` / ``--branch``: exactly one names the bundle."""
    f = click.option("--branch", default=None, help="Use the head of this branch.")(f)
    f = click.option("--label", default=None, help="Use the bundle this label names.")(f)
    f = click.option("--bundle", default=None, help="Bundle id, or a unique prefix of one.")(f)
    return f


def resolve(
    repo: Repository,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    default_branch: str | None = None,
) -> str:
    """The bundle the one given of ``--bundle``, ``--label`` and ``--branch`` names, or the
    head of ``default_branch`` when none is given and the command has one."""
    given = [x for x in (bundle, label, branch) if x]
    if not given and default_branch is not None:
        return repo.resolve(branch=default_branch)
    if len(given) != 1:
        raise click.UsageError("give exactly one of --bundle, --label or --branch")
    return repo.resolve(bundle=bundle, label=label, branch=branch)


def required(value: str | None, flag: str) -> str:
    """The value of an option a group needs when it runs itself, which click cannot mark
    required because the group's subcommands do not take it; worded as click words it."""
    if not value:
        raise click.UsageError(f"Missing option '{flag}'.")
    return value
