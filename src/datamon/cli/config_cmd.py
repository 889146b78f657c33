"""``datamon config``: who you are and where the store is."""

from __future__ import annotations

import click

from datamon.cli.context import AppContext, pass_app
from datamon.config import Config, config_path


@click.group()
def config() -> None:
    """Create or show the configuration file (~/.datamon/datamon.yaml).

    \b
    Example:
      datamon config create --name "Ada" --email ada@example.com
      datamon config show
    """


@config.command("create")
@click.option("--name", required=True, help="Your name, recorded as bundle author.")
@click.option("--email", required=True, help="Your email, recorded as bundle author.")
@click.option("--credential", default="", help="Path to a cloud credential file.")
@click.option("--store", default="", help="One location for everything: a path or bucket URL.")
@click.option("--metadata", default="", help="Separate location for metadata (repos, bundles).")
@click.option("--blob", default="", help="Separate location for blobs (packs).")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Object-store client option, e.g. endpoint=http://127.0.0.1:9000 (repeatable).",
)
@pass_app
def create(
    app: AppContext,
    name: str,
    email: str,
    credential: str,
    store: str,
    metadata: str,
    blob: str,
    options: tuple[str, ...],
) -> None:
    """Write the configuration file.

    \b
    Example:
      datamon config create --name "Ada Lovelace" --email ada@example.com
      datamon config create --name Ada --email ada@example.com --store s3://bucket/datamon
    """
    parsed: dict[str, str] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        parsed[key] = value
    cfg = Config(
        name=name,
        email=email,
        credential=credential,
        store=store,
        metadata=metadata,
        blob=blob,
        options=parsed,
    )
    path = cfg.save(config_path())
    click.echo(f"Config file written to {path}")


@config.command("show")
@pass_app
def show(app: AppContext) -> None:
    """Print the configuration and the store it points at.

    \b
    Example:
      datamon config show
    """
    cfg = app.config
    click.echo(f"# {cfg.path}")
    click.echo(cfg.to_yaml(), nl=False)
    click.echo(f"# metadata location: {app.store_override or cfg.metadata_location}")
    click.echo(f"# blob location: {app.store_override or cfg.blob_location}")
