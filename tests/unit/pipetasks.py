"""Tasks for the pipeline tests, at module level so the process executor can import them.

``numbers`` (label ``v1`` by default) is a bundle with ``values.txt``: one integer a line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from datamon.pipeline import (
    BoolParameter,
    BundleOutput,
    ExternalBundle,
    FloatParameter,
    IntParameter,
    RunContext,
    StrParameter,
    Task,
    WrapperTask,
)

CALLS: list[str] = []
"""Task ids run by the inline executor, in order."""
FAIL: set[str] = set()
"""Class names that raise when run."""

log = logging.getLogger(__name__)


def read_values(folder: Path) -> list[int]:
    return [int(x) for x in (folder / "values.txt").read_text().split()]


def write_values(folder: Path, values: list[int]) -> None:
    folder.mkdir()
    (folder / "values.txt").write_text("".join(f"{v}\n" for v in values))


class Scale(Task):
    factor = IntParameter(default=2)
    source = StrParameter(default="v1")
    verbose = BoolParameter(default=False, significant=False)

    def requires(self) -> ExternalBundle:
        return ExternalBundle("numbers", label=self.source)

    def output(self) -> BundleOutput:
        return BundleOutput("scaled", label="latest")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        if "Scale" in FAIL:
            raise ValueError("scale failed")
        values = read_values(ctx.input)
        write_values(ctx.output, [v * self.factor for v in values])
        print(f"scaled {len(values)} values")
        ctx.log.info("factor is %d", self.factor)
        log.warning("a warning from the module logger")


class Clip(Task):
    """Caps every value at ``limit``; a limit above every value changes nothing."""

    limit = IntParameter(default=100)

    def requires(self) -> ExternalBundle:
        return ExternalBundle("numbers", label="v1")

    def output(self) -> BundleOutput:
        return BundleOutput("clipped")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        write_values(ctx.output, [min(v, self.limit) for v in read_values(ctx.input)])


class Total(Task):
    factor = IntParameter(default=2)
    limit = IntParameter(default=100)

    def requires(self) -> dict[str, Task]:
        return {"scaled": Scale(factor=self.factor), "clipped": Clip(limit=self.limit)}

    def output(self) -> BundleOutput:
        return BundleOutput("totals", label="latest")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        if "Total" in FAIL:
            raise ValueError("total failed")
        total = sum(read_values(ctx.inputs["scaled"])) + sum(read_values(ctx.inputs["clipped"]))
        write_values(ctx.output, [total])
        ctx.log_metric("total", total)


class ClipTotal(Task):
    """Sums the clipped values; ``limit`` reaches it only through its input."""

    limit = IntParameter(default=100, significant=False)

    def requires(self) -> Clip:
        return Clip(limit=self.limit)

    def output(self) -> BundleOutput:
        return BundleOutput("cliptotal")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        write_values(ctx.output, [sum(read_values(ctx.input))])


class Report(Task):
    limit = IntParameter(default=100, significant=False)

    def requires(self) -> ClipTotal:
        return ClipTotal(limit=self.limit)

    def output(self) -> BundleOutput:
        return BundleOutput("report")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        write_values(ctx.output, read_values(ctx.input))


class Flaky(Task):
    """Fails until its ``counter`` file says it has been tried ``succeed_on`` times."""

    retry_count = 2
    retry_delay = 0.01
    counter = StrParameter(significant=False)
    succeed_on = IntParameter(default=2)

    def output(self) -> BundleOutput:
        return BundleOutput("flaky")

    def run(self, ctx: RunContext) -> None:
        path = Path(self.counter)
        tries = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(tries))
        print(f"try {tries}")
        if tries < self.succeed_on:
            raise RuntimeError(f"flaky failure {tries}")
        write_values(ctx.output, [tries])


class NoOutput(Task):
    def output(self) -> BundleOutput:
        return BundleOutput("nothing")

    def run(self, ctx: RunContext) -> None:
        print("forgot to create the output folder")


class CycleA(Task):
    def requires(self) -> Task:
        return CycleB()

    def output(self) -> BundleOutput:
        return BundleOutput("cycle")


class CycleB(Task):
    def requires(self) -> Task:
        return CycleA()

    def output(self) -> BundleOutput:
        return BundleOutput("cycle")


class Slow(Task):
    tag = StrParameter(default="x")
    seconds = FloatParameter(default=0.5, significant=False)

    def output(self) -> BundleOutput:
        return BundleOutput("slow")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        time.sleep(self.seconds)
        write_values(ctx.output, [len(self.tag)])


class SelfInterrupt(Task):
    """Sends Ctrl-C to its own process, as a user at the terminal would."""

    def requires(self) -> Task:
        return Scale()

    def output(self) -> BundleOutput:
        return BundleOutput("interrupted")

    def run(self, ctx: RunContext) -> None:
        CALLS.append(ctx.task_id)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        write_values(ctx.output, [1])


class Shout(Task):
    """Writes to stdout from Python and from a child process, and to a module logger."""

    word = StrParameter()

    def output(self) -> BundleOutput:
        return BundleOutput("shouts")

    def run(self, ctx: RunContext) -> None:
        print(f"python says {self.word} from pid {os.getpid()}")
        subprocess.run([sys.executable, "-c", f"print('child says {self.word}')"], check=True)
        log.info("module logger says %s", self.word)
        ctx.output.mkdir()
        (ctx.output / "word.txt").write_text(f"{self.word}\n")


class Join(Task):
    def requires(self) -> list[Task]:
        return [Shout(word="hello"), Shout(word="world")]

    def output(self) -> BundleOutput:
        return BundleOutput("joined")

    def run(self, ctx: RunContext) -> None:
        words = [(path / "word.txt").read_text().strip() for _name, path in ctx.inputs.items()]
        ctx.output.mkdir()
        (ctx.output / "joined.txt").write_text(" ".join(words))


class Everything(WrapperTask):
    def requires(self) -> list[Task]:
        return [Total(), ClipTotal()]
