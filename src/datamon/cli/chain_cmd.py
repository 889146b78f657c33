"""``datamon chain``: list and run the chains under ``chains/<type>/<name>_chain.py``.

The Datanectar convention: a chain is a ``*_chain.py`` module in a type folder of the
chains root, and its tasks are the ``*Task`` classes it defines. ``chain run`` takes the
task's parameters as options (``--factor 3``), parsed by the task's Parameter types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from datamon.cli.context import AppContext, pass_app
from datamon.cli.options import json_option
from datamon.cli.output import emit_json
from datamon.cli.run_cmd import BuildFlags, build_and_report, build_options
from datamon.errors import InvalidArgument, ParameterError

if TYPE_CHECKING:
    from datamon.pipeline import Task

chains_option = click.option(
    "--chains",
    "root",
    default="chains",
    show_default=True,
    envvar="DATAMON_CHAINS",
    metavar="DIR",
    help="The chains root, holding <type>/<name>_chain.py files.",
)


@click.group("chain")
def chain() -> None:
    """Chains in the Datanectar layout: chains/<type>/<name>_chain.py with *Task classes.

    \b
    Example:
      datamon chain list
      datamon chain run etl/hello_world/HelloTask --name Ada --workers 2
    """


@chain.command("list")
@chains_option
@json_option
def list_(root: str, as_json: bool) -> None:
    """List chains and their tasks: <type>/<chain>/<Task> , parameters.

    A chain that fails to import is listed with its import error.

    \b
    Example:
      datamon chain list --chains ./chains --json
    """
    from datamon.pipeline.chains import describe_param, discover

    chains = discover(root)
    if as_json:
        emit_json([c.describe() for c in chains])
        return
    for found in chains:
        if found.error is not None:
            click.echo(f"{found.ref} , import error: {found.error}")
            continue
        if not found.tasks:
            click.echo(f"{found.ref} , no tasks")
        for name, cls in found.tasks.items():
            params = " ".join(
                _param_text(p, describe_param(param)) for p, param in cls.parameters().items()
            )
            click.echo(f"{found.ref}/{name} , {params or '-'}")


def _param_text(name: str, described: dict[str, Any]) -> str:
    flag = f"--{name.replace('_', '-')}"
    text = f"{flag} {described['type']}"
    if "default" in described:
        import msgspec

        text += f"={msgspec.json.encode(described['default']).decode()}"
    if flag in _run_options():
        text += " (after --)"
    return text


def _run_options() -> set[str]:
    """The options of ``chain run`` itself: a task parameter of such a name goes after --."""
    return {opt for param in run.params for opt in getattr(param, "opts", ())}


@chain.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
)
@click.argument("target")
@click.argument("task_args", nargs=-1, type=click.UNPROCESSED)
@chains_option
@build_options
@json_option
@pass_app
def run(
    app: AppContext,
    target: str,
    task_args: tuple[str, ...],
    root: str,
    flags: BuildFlags,
    as_json: bool,
) -> None:
    """Run TARGET, a chain task <type>/<chain>/<Task>, with its parameters as options.

    A parameter named like an option of this command (--workers, --force, ...) goes after
    `--`, where everything is the task's.

    \b
    Example:
      datamon chain run etl/hello_world/HelloTask --name Ada
      datamon chain run ml/train/TrainTask --c 0.5 --dry-run
      datamon chain run agg/pool/PoolTask --workers 2 -- --workers 8
    """
    from datamon.pipeline.chains import find_task

    cls = find_task(root, target)
    _warn_of_shadowed(cls)
    task = cls(**parse_task_args(cls, task_args))
    build_and_report(app, task, flags, as_json)


def _shadowed(cls: type[Task]) -> list[str]:
    """The task's parameters named like an option of ``chain run`` (which takes them)."""
    own = _run_options()
    return [name for name in cls.parameters() if f"--{name.replace('_', '-')}" in own]


def _warn_of_shadowed(cls: type[Task]) -> None:
    """Say so when an option given before ``--`` has the name of one of the task's
    parameters: it set the build's option, not the task's parameter."""
    ctx = click.get_current_context()
    taken = [
        name
        for name in _shadowed(cls)
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]
    for name in taken:
        flag = f"--{name.replace('_', '-')}"
        click.echo(
            f"note: {flag} set the option of chain run; the task's parameter {name} is "
            f"given after --, as in: -- {flag} VALUE",
            err=True,
        )


def parse_task_args(cls: type[Task], args: tuple[str, ...]) -> dict[str, Any]:
    """``--name value``, ``--name=value``, and ``--flag`` / ``--no-flag`` for bools."""
    from datamon.pipeline.params import BoolParameter

    declared = cls.parameters()
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--") or token == "--":
            raise click.UsageError(
                f"unexpected argument {token!r}; give parameters as --NAME VALUE"
            )
        key, eq, text = token[2:].partition("=")
        name = key.replace("-", "_")
        negated = False
        if name not in declared and name.startswith("no_") and not eq:
            negated, name = True, name[3:]
        param = declared.get(name)
        if param is None:
            known = ", ".join(f"--{p.replace('_', '-')}" for p in sorted(declared)) or "none"
            raise click.UsageError(f"{cls.__name__} has no parameter --{key} (it has: {known})")
        if isinstance(param, BoolParameter) and not eq:
            if negated:
                values[name] = False
                continue
            if i < len(args) and not args[i].startswith("--"):
                text = args[i]
                i += 1
            else:
                text = "true"
        elif negated:
            raise click.UsageError(f"--no-{key[3:]} is only for bool parameters")
        elif not eq:
            if i >= len(args):
                raise click.UsageError(f"--{key} needs a value")
            text = args[i]
            i += 1
        try:
            values[name] = param.parse(text)
        except InvalidArgument as exc:
            raise ParameterError(cls.family(), name, str(exc)) from None
    return values
