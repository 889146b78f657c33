"""``datamon bundle lineage``: the recorded pipeline steps above and below a bundle.

Importing this module adds the command to the ``bundle`` group (``bundle_cmd`` imports
it at its end).
"""

from __future__ import annotations

import click

from datamon.cli.context import AppContext, pass_app
from datamon.cli.options import json_option, ref_options, repo_option, resolve
from datamon.cli.output import emit_json


@click.command("lineage")
@repo_option
@ref_options
@click.option("--depth", type=click.IntRange(1), default=None, help="Walk at most N steps.")
@click.option(
    "--direction",
    type=click.Choice(["both", "upstream", "downstream"]),
    default="both",
    show_default=True,
)
@json_option
@pass_app
def lineage(
    app: AppContext,
    repo: str,
    bundle: str | None,
    label: str | None,
    branch: str | None,
    depth: int | None,
    direction: str,
    as_json: bool,
) -> None:
    """Walk a bundle's lineage through the recorded runs: what made it, what used it.

    Lines: direction , depth , task , run , input bundles -> output bundle.

    \b
    Example:
      datamon bundle lineage --repo features --label latest
      datamon bundle lineage --repo raw --bundle 1a2b3c --direction downstream --json
    """
    from datamon.pipeline.lineage import format_lineage
    from datamon.pipeline.lineage import lineage as walk

    bid = resolve(app.repo(repo), bundle, label, branch)
    found = walk(app.store.meta, repo, bid, depth)
    if direction == "upstream":
        found.downstream = []
    elif direction == "downstream":
        found.upstream = []
    if as_json:
        emit_json(found)
        return
    for text in format_lineage(found):
        click.echo(text)
