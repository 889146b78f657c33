"""``datamon run``: failures, bad input, logs and Ctrl-C, through the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import Datamon, assert_clean_error, describe

TASKS = """
import os, time
from pathlib import Path
from datamon.pipeline import BundleOutput, IntParameter, StrParameter, Task

class Make(Task):
    text = StrParameter(default="hello")

    def output(self):
        return BundleOutput("made")

    def run(self, ctx):
        ctx.output.mkdir()
        (ctx.output / "text.txt").write_text(self.text)
        print("made", self.text)


class Broken(Task):
    def requires(self):
        return Make()

    def output(self):
        return BundleOutput("broken")

    def run(self, ctx):
        print("about to fail")
        raise RuntimeError("this step is broken")


class Sleepy(Task):
    marker = StrParameter(significant=False, default="")

    def requires(self):
        return Make()

    def output(self):
        return BundleOutput("sleepy")

    def run(self, ctx):
        Path(self.marker).write_text("started")
        time.sleep(60)
        ctx.output.mkdir()


class Ticker(Task):
    def output(self):
        return BundleOutput("ticks")

    def run(self, ctx):
        for i in range(6):
            print(f"tick {i}", flush=True)
            time.sleep(0.4)
        ctx.output.mkdir()


class Cycle(Task):
    def requires(self):
        return Cycle2()

    def output(self):
        return BundleOutput("c")


class Cycle2(Task):
    def requires(self):
        return Cycle()

    def output(self):
        return BundleOutput("c")
"""


@pytest.fixture
def dm(tmp_path: Path) -> Datamon:
    code = tmp_path / "code"
    code.mkdir()
    (code / "cli_tasks.py").write_text(TASKS)
    runner = Datamon.at(tmp_path / "user", PYTHONPATH=str(code))
    runner("config", "create", "--name", "Test User", "--email", "t@example.com")
    return runner


def test_failed_step_exits_non_zero_with_traceback_in_logs(dm: Datamon) -> None:
    result = dm("run", "start", "cli_tasks:Broken", "--executor", "inline", check=False)
    assert "RUN     failed      Broken-" in result.stdout, describe(result)
    assert "error: RuntimeError: this step is broken" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(": failed")
    logs = dm("run", "logs", "latest", "Broken")
    assert "about to fail" in logs.stdout
    assert "Traceback (most recent call last)" in logs.stdout
    assert "RuntimeError: this step is broken" in logs.stdout
    show = dm("run", "show", "latest")
    assert "task Make-" in show.stdout and "RUN , succeeded" in show.stdout
    # The upstream output stays committed: running again starts at the failed step.
    again = dm("run", "start", "cli_tasks:Broken", "--executor", "inline", check=False)
    assert "REUSE   reused      Make-" in again.stdout, describe(again)


def test_a_script_and_the_cli_build_the_same_task(dm: Datamon, tmp_path: Path) -> None:
    """A task defined in the script run as the program (module ``__main__``) has the
    identity ``run start script:Task`` gives it: the second build reuses the first's."""
    code = tmp_path / "code"
    (code / "script_tasks.py").write_text(
        TASKS
        + """
if __name__ == "__main__":
    from datamon.pipeline import build
    print(build([Make(text="same")], executor="process").format())
"""
    )
    first = dm("run", "start", "script_tasks:Make", "--param", "text=same", "--json")
    [step] = json.loads(first.stdout)["steps"]
    assert step["decision"] == "RUN"
    script = _python(dm, str(code / "script_tasks.py"))
    assert f"REUSE   reused      {step['id']}" in script.stdout, script.stdout
    # Under a runner (the program's module is cProfile), the task is still the script's.
    profiled = _python(dm, "-m", "cProfile", "-o", os.devnull, str(code / "script_tasks.py"))
    assert f"REUSE   reused      {step['id']}" in profiled.stdout, profiled.stdout
    # Another file of that name, run with -P (its folder not on sys.path), is not taken
    # for the module its name imports: its step is its own, and runs.
    other = tmp_path / "other"
    other.mkdir()
    (other / "script_tasks.py").write_text(
        (code / "script_tasks.py").read_text().replace('print("made"', 'print("other"')
    )
    elsewhere = _python(dm, "-P", str(other / "script_tasks.py"))
    assert "REUSE" not in elsewhere.stdout and "RUN     succeeded" in elsewhere.stdout


def _python(dm: Datamon, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], env=dm.env, cwd=dm.cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def test_bad_input_is_one_clean_error(dm: Datamon) -> None:
    assert_clean_error(dm("run", "start", "cli_tasks:Cycle", check=False), "dependency cycle")
    assert_clean_error(
        dm("run", "start", "cli_tasks:Make", "--param", "nope=1", check=False), "no parameter"
    )
    assert_clean_error(dm("run", "start", "no_such_module:Task", check=False), "cannot import")
    missing = assert_clean_error(dm("run", "start", "cli_tasks:Nope", check=False), "has no Nope")
    assert "its tasks: Broken, " in missing and "Make" in missing
    assert_clean_error(dm("run", "start", "cli_tasks:os", check=False), "is not a datamon")
    assert_clean_error(dm("run", "show", "nope", check=False), "run not found")
    assert_clean_error(dm("run", "start", "cli_tasks:Make", "--force", "X", check=False), "no such")


def test_dry_run_and_json_listings(dm: Datamon) -> None:
    plan = dm("run", "start", "cli_tasks:Make", "--dry-run")
    assert "RUN     Make-" in plan.stdout and "no previous run" in plan.stdout
    # A plan writes nothing: with no store yet, it made none.
    assert not dm.default_store.exists()
    assert_clean_error(dm("run", "list", "--json", check=False), "no Datamon store at")
    dm("repo", "create", "--repo", "made", "--description", "d")
    assert json.loads(dm("run", "start", "cli_tasks:Make", "--dry-run", "--json").stdout)["steps"]
    assert json.loads(dm("run", "list", "--json").stdout) == []
    dm("run", "start", "cli_tasks:Make", "--param", "text=hi", "--executor", "inline")
    built = json.loads(dm("run", "start", "cli_tasks:Make", "--param", "text=hi", "--json").stdout)
    assert built["status"] == "succeeded"
    assert [s["decision"] for s in built["steps"]] == ["REUSE"]
    assert len(json.loads(dm("run", "list", "--json").stdout)) == 2
    lines = dm("run", "list").stdout.splitlines()
    assert len(lines) == 2 and lines[0].count(" , ") == 3
    reused = dm("run", "logs", built["run_id"])
    assert reused.stdout == ""
    assert "no logs: no step ran in it (reused, blocked or skipped)" in reused.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_marks_the_run_interrupted_and_rerun_resumes(
    dm: Datamon, tmp_path: Path, stop: signal.Signals
) -> None:
    marker = tmp_path / "started"
    args = ["run", "start", "cli_tasks:Sleepy", "--param", f"marker={marker}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "datamon", *args],
        env=dm.env,
        cwd=dm.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), process.communicate()
    process.send_signal(stop)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert "interrupted" in err
    show = json.loads(dm("run", "show", "latest", "--json").stdout)
    assert show["status"] == "interrupted"
    status = {t["family"].rpartition(".")[2]: t["status"] for t in show["tasks"]}
    assert status == {"Make": "succeeded", "Sleepy": "interrupted"}
    plan = dm("run", "start", "cli_tasks:Sleepy", "--dry-run")
    assert "REUSE   Make-" in plan.stdout and "RUN     Sleepy-" in plan.stdout


def test_a_task_module_that_fails_to_import_is_one_error_line(dm: Datamon) -> None:
    (dm.cwd / "broken_tasks.py").write_text("raise ValueError('nope')\n")
    (dm.cwd / "unparsable_tasks.py").write_text("def (:\n")
    assert_clean_error(
        dm("run", "start", "broken_tasks:T", check=False), "cannot import broken_tasks", "nope"
    )
    assert_clean_error(
        dm("run", "start", "unparsable_tasks:T", check=False),
        "cannot import unparsable_tasks",
        "SyntaxError",
    )


def test_logs_follow_prints_output_while_the_run_goes_on(dm: Datamon) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "datamon", "run", "start", "cli_tasks:Ticker"],
        env=dm.env,
        cwd=dm.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = dm.default_store / "runs"
    deadline = time.monotonic() + 60
    while not list(runs.glob("*/logs/*.log")) and time.monotonic() < deadline:
        time.sleep(0.05)
    followed = dm("run", "logs", "latest", "Ticker", "--follow")
    assert process.wait(timeout=60) == 0
    ticks = [ln for ln in followed.stdout.splitlines() if ln.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(6)], describe(followed)
    show = json.loads(dm("run", "show", "latest", "--json").stdout)
    assert show["status"] == "succeeded"
