"""Tasks: ``requires()``, ``output()`` and ``run(ctx)``, as luigi users know them.

A task's identity is its family (``module.QualName``) plus its significant parameters;
two equal tasks in one DAG are one step. Its output is a bundle (:class:`BundleOutput`),
built from the folder ``ctx.output`` that ``run`` creates and fills.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from datamon.core.codecs import to_json
from datamon.core.ids import hexdigest
from datamon.errors import InvalidArgument, ParameterError, TaskDefinitionError
from datamon.metadata.layout import check_name
from datamon.pipeline.code import module_name
from datamon.pipeline.params import MISSING, Parameter, StrParameter, json_value

ID_HASH_CHARS = 10


@dataclass(frozen=True)
class BundleOutput:
    """Where a task's output goes: a bundle of ``repo`` on ``branch``, and a label to move."""

    repo: str
    label: str | None = None
    branch: str = "main"

    def __post_init__(self) -> None:
        check_name("repo", self.repo)
        check_name("branch", self.branch)
        if self.label is not None:
            check_name("label", self.label)


@dataclass(frozen=True)
class ExternalBundle:
    """An existing bundle, named by exactly one of a label, a branch or a bundle id."""

    repo: str
    label: str | None = None
    branch: str | None = None
    bundle: str | None = None

    def __post_init__(self) -> None:
        check_name("repo", self.repo)
        if sum(x is not None for x in (self.label, self.branch, self.bundle)) != 1:
            raise InvalidArgument(
                f"ExternalBundle({self.repo!r}) needs exactly one of label=, branch= or bundle="
            )

    def describe(self) -> str:
        if self.label is not None:
            return f"{self.repo} label {self.label}"
        if self.branch is not None:
            return f"{self.repo} branch {self.branch}"
        return f"{self.repo} bundle {self.bundle}"


Requirements = Any
"""What ``requires()`` returns: None, a task, a sequence of tasks, or a mapping name -> task.

An :class:`ExternalBundle` may stand wherever a task may.
"""


class Task:
    """A step of a pipeline. Subclass it; declare parameters as class attributes.

    ``run(ctx)`` must create the folder ``ctx.output`` and write the output into it; the
    folder becomes a bundle only if ``run`` returns normally. The class must be importable
    (module level, not inside a function) to run on the process-pool executor.
    """

    retry_count: ClassVar[int] = 0
    """How many times a failed ``run`` is tried again (so ``1 + retry_count`` attempts)."""
    retry_delay: ClassVar[float] = 1.0
    """Seconds before the first retry; each later retry waits ``retry_backoff`` times longer."""
    retry_backoff: ClassVar[float] = 2.0
    code_version: ClassVar[str | None] = None
    """Pin the code's identity; by default the task's module and its local imports are hashed."""

    _parameters: ClassVar[dict[str, Parameter[Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Parameter[Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Parameter):
                    found[name] = value
        # A parameter named like something of Task itself would hide it (``params``, say,
        # which the build reads): refused where the class is written.
        taken = sorted(name for name in found if hasattr(Task, name) or name.startswith("_"))
        if taken:
            raise TaskDefinitionError(
                f"{cls.__qualname__}: parameter {taken[0]!r} is a name Task uses itself; "
                "name it otherwise"
            )
        cls._parameters = found

    def __init__(self, **kwargs: Any) -> None:
        family = self.family()
        unknown = sorted(set(kwargs) - set(self._parameters))
        if unknown:
            raise ParameterError(family, unknown[0], "no such parameter")
        values: dict[str, Any] = {}
        for name, param in self._parameters.items():
            if name in kwargs:
                raw = kwargs[name]
            elif param.default is not MISSING:
                raw = param.default
            else:
                raise ParameterError(family, name, "no value given and no default")
            try:
                values[name] = param.normalize(raw)
            except InvalidArgument as exc:
                raise ParameterError(family, name, str(exc)) from None
        self.__dict__["_param_values"] = values

    # identity ------------------------------------------------------------------------------

    @classmethod
    def family(cls) -> str:
        return f"{module_name(cls)}.{cls.__qualname__}"

    @classmethod
    def parameters(cls) -> dict[str, Parameter[Any]]:
        return dict(cls._parameters)

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter's value, by name."""
        values: dict[str, Any] = self.__dict__["_param_values"]
        return dict(values)

    @property
    def significant_params(self) -> dict[str, Any]:
        values: dict[str, Any] = self.__dict__["_param_values"]
        return {n: values[n] for n, p in self._parameters.items() if p.significant}

    @property
    def task_id(self) -> str:
        """``ClassName-<hash>``: readable, and unique for a family and significant parameters."""
        key = to_json({"family": self.family(), "params": self.significant_params})
        return f"{type(self).__name__}-{hexdigest(key)[:ID_HASH_CHARS]}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return (self.family(), to_json(self.significant_params)) == (
            other.family(),
            to_json(other.significant_params),
        )

    def __hash__(self) -> int:
        return hash((self.family(), to_json(self.significant_params)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # the luigi trio ------------------------------------------------------------------------

    def requires(self) -> Requirements:
        """The tasks (or external bundles) whose outputs this task reads."""
        return None

    def output(self) -> BundleOutput | ExternalBundle | None:
        """Where the output goes; every task but a :class:`WrapperTask` must say."""
        raise TaskDefinitionError(f"{self.family()} does not define output()")

    def run(self, ctx: RunContext) -> None:
        raise TaskDefinitionError(f"{self.family()} does not define run(ctx)")


class ExternalTask(Task):
    """A bundle made outside the pipeline: ``output()`` returns an :class:`ExternalBundle`.

    Its label or branch is resolved once per run, at plan time; a missing bundle blocks
    the tasks that need it.
    """

    def output(self) -> ExternalBundle:
        raise TaskDefinitionError(f"{self.family()} does not define output()")


class WrapperTask(Task):
    """Groups tasks: has no output of its own and is done when its requirements are."""

    def output(self) -> None:
        return None


class PinnedBundle(ExternalTask):
    """The task that an :class:`ExternalBundle` in ``requires()`` stands for."""

    repo = StrParameter()
    label = StrParameter(default="")
    branch = StrParameter(default="")
    bundle = StrParameter(default="")

    def output(self) -> ExternalBundle:
        return ExternalBundle(
            self.repo,
            label=self.label or None,
            branch=self.branch or None,
            bundle=self.bundle or None,
        )

    @classmethod
    def of(cls, pin: ExternalBundle) -> PinnedBundle:
        return cls(
            repo=pin.repo, label=pin.label or "", branch=pin.branch or "", bundle=pin.bundle or ""
        )


class InputPaths:
    """The local folders of a task's inputs, by position (``[0]``) or by name (``["raw"]``).

    Names are the keys of the mapping ``requires()`` returned, or positions as strings.
    """

    def __init__(self, items: Sequence[tuple[str, Path]]) -> None:
        self._items = list(items)
        self._by_name = dict(self._items)

    def __getitem__(self, key: int | str) -> Path:
        if isinstance(key, int):
            return self._items[key][1]
        return self._by_name[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, Path]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"InputPaths({dict(self._items)!r})"


@dataclass
class RunContext:
    """What ``run(ctx)`` gets: input folders, the output folder to create, a logger."""

    inputs: InputPaths
    output: Path
    log: logging.Logger
    params: Mapping[str, Any]
    run_id: str
    task_id: str
    attempt: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def input(self) -> Path:
        """The folder of the only input."""
        if len(self.inputs) != 1:
            raise TaskDefinitionError(
                f"{self.task_id} has {len(self.inputs)} inputs; use ctx.inputs[...]"
            )
        return self.inputs[0]

    def log_metric(self, name: str, value: Any) -> None:
        """Record a metric (a JSON value) in the run record."""
        self.metrics[name] = json_value(value, f"metric {name}")
