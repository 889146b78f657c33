"""The root command group and the single place errors become exit codes."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from datamon import __version__
from datamon.cli.branch_cmd import branch
from datamon.cli.bundle_cmd import bundle
from datamon.cli.chain_cmd import chain
from datamon.cli.config_cmd import config
from datamon.cli.context import AppContext
from datamon.cli.demo_cmd import demo
from datamon.cli.label_cmd import label
from datamon.cli.lineage_cmd import lineage
from datamon.cli.mount_cmd import mount, unmount
from datamon.cli.repo_cmd import repo
from datamon.cli.run_cmd import run_group
from datamon.errors import DatamonError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option(
    "--store",
    "store_override",
    envvar="DATAMON_STORE",
    default=None,
    help="Store location (path or s3://, gs://, az:// URL), overriding the config file.",
)
@click.version_option(__version__, prog_name="datamon")
@click.pass_context
def cli(ctx: click.Context, debug: bool, store_override: str | None) -> None:
    """Datamon: git for data.

    Versioned, deduplicated datasets in a local folder or your own bucket.

    \b
    Example:
      datamon config create --name "Ada" --email ada@example.com
      datamon repo create --repo demo --description "first repo"
      datamon bundle upload --path ./data --message "v1" --repo demo --label init
    """
    ctx.obj = AppContext(debug=debug, store_override=store_override)
    ctx.call_on_close(ctx.obj.close)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s"
    )


@cli.command("version")
def version() -> None:
    """Print Datamon's version (as `datamon --version` does).

    \b
    Example:
      datamon version
    """
    click.echo(f"datamon, version {__version__}")


for command in (config, repo, bundle, label, branch, demo, run_group, chain):
    cli.add_command(command)
# Bundle commands that live in their own modules (they pull in FUSE and pipeline code lazily).
for sub in (mount, unmount, lineage):
    bundle.add_command(sub)


def run(group: click.Group, args: list[str] | None = None) -> int:
    """Run the CLI; a Datamon error prints one line and returns a non-zero code."""
    argv = sys.argv[1:] if args is None else args
    debug = "--debug" in argv
    try:
        group.main(args=argv, prog_name="datamon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        # A group run without a command: its help, as ``--help`` prints it, and the usage
        # error's exit code.
        click.echo(exc.format_message(), err=True)
        return exc.exit_code
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "datamon"
        click.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except (DatamonError, OSError) as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {message(exc)}", err=True)
        return EXIT_ERROR
    return 0


def message(exc: BaseException) -> str:
    """The error's own text, then where it happened (its notes: ``writing big.bin``)."""
    notes = getattr(exc, "__notes__", None)
    return f"{exc} ({'; '.join(notes)})" if notes else str(exc)
