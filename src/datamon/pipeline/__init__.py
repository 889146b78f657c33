"""Pipelines whose steps read and write bundles, skip done work, and record every run.

Tasks look like luigi's::

    class Clean(Task):
        threshold = FloatParameter(default=0.5)

        def requires(self):
            return ExternalBundle("raw", label="latest")

        def output(self):
            return BundleOutput("clean", label="latest")

        def run(self, ctx):
            ctx.output.mkdir()
            ...  # read ctx.input, write into ctx.output, log with ctx.log

    result = build([Clean(threshold=0.7)], workers=2)

A step is *reused* when its fingerprint, the hash of its family, code, significant
parameters and input tree ids (see :mod:`datamon.pipeline.fingerprint`), already has a
committed output; otherwise it runs, and the plan says why (which parameter, code file or
input changed since the nearest recorded step of its family). Every run is recorded in
the store under ``runs/`` with logs, code version, environment and per-step decisions.

The default executor is a process pool started with ``spawn``: task classes must be
defined at module level of an importable module (``executor="inline"`` runs them in the
build's threads instead).
"""

from datamon.pipeline.build import BuildOptions, build
from datamon.pipeline.params import (
    BoolParameter,
    DictParameter,
    FloatParameter,
    IntParameter,
    ListParameter,
    Parameter,
    StrParameter,
)
from datamon.pipeline.result import BuildResult, StepResult
from datamon.pipeline.task import (
    BundleOutput,
    ExternalBundle,
    ExternalTask,
    InputPaths,
    RunContext,
    Task,
    WrapperTask,
)

__all__ = [
    "BoolParameter",
    "BuildOptions",
    "BuildResult",
    "BundleOutput",
    "DictParameter",
    "ExternalBundle",
    "ExternalTask",
    "FloatParameter",
    "InputPaths",
    "IntParameter",
    "ListParameter",
    "Parameter",
    "RunContext",
    "StepResult",
    "StrParameter",
    "Task",
    "WrapperTask",
    "build",
]
