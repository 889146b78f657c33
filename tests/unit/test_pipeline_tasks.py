"""Task definitions: typed parameters, identity, requires() forms, code hashing, fingerprints."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipetasks import Clip, CycleA, Scale, Total

from datamon import Author, Store
from datamon.errors import DependencyCycle, InvalidArgument, ParameterError, TaskDefinitionError
from datamon.pipeline import (
    BoolParameter,
    BuildOptions,
    BundleOutput,
    DictParameter,
    ExternalBundle,
    ExternalTask,
    FloatParameter,
    IntParameter,
    ListParameter,
    Parameter,
    StrParameter,
    Task,
    WrapperTask,
    build,
)
from datamon.pipeline.code import CodeHasher, code_manifest, top_folder
from datamon.pipeline.fingerprint import SCHEME, Manifest, changes, fingerprint
from datamon.pipeline.graph import EXTERNAL, TASK, WRAPPER, build_graph
from datamon.pipeline.task import PinnedBundle


class Typed(Task):
    n = IntParameter(default=3)
    x = FloatParameter(default=0.5)
    name = StrParameter()
    flag = BoolParameter(default=False)
    items = ListParameter(default=[1, 2])
    options = DictParameter(default={"a": 1})
    anything = Parameter[Any](default=None)
    threads = IntParameter(default=1, significant=False)

    def output(self) -> BundleOutput:
        return BundleOutput("typed")


def test_parameters_are_typed_with_defaults() -> None:
    t = Typed(name="a", x=2)
    assert (t.n, t.x, t.name, t.flag, t.items, t.options, t.anything) == (
        3,
        2.0,
        "a",
        False,
        [1, 2],
        {"a": 1},
        None,
    )
    assert isinstance(t.x, float)
    assert Typed.n.name == "n" and isinstance(Typed.n, IntParameter)
    assert t.params["threads"] == 1
    assert "threads" not in t.significant_params
    assert repr(Typed(name="b")).startswith("Typed(n=3, x=0.5, name='b'")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no value given and no default"),
        ({"name": "a", "nope": 1}, "no such parameter"),
        ({"name": 1}, "expected a str"),
        ({"name": "a", "n": True}, "expected an int"),
        ({"name": "a", "n": 1.5}, "expected an int"),
        ({"name": "a", "x": float("nan")}, "not JSON-serialisable"),
        ({"name": "a", "items": "abc"}, "expected a list"),
        ({"name": "a", "items": [object()]}, "not JSON-serialisable"),
        ({"name": "a", "options": {1: 2}}, "not a string"),
        ({"name": "a", "anything": {1, 2}}, "set is not JSON-serialisable"),
        ({"name": "a", "flag": "yes"}, "expected a bool"),
    ],
)
def test_bad_parameter_values_are_refused_when_the_task_is_made(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParameterError, match=message) as caught:
        Typed(**kwargs)
    assert caught.value.task.endswith("Typed")


def test_parameters_parse_command_line_text() -> None:
    assert Typed.n.parse("7") == 7
    assert Typed.x.parse("1e-3") == 0.001
    assert Typed.flag.parse("Yes") is True and Typed.flag.parse("0") is False
    assert Typed.items.parse("[1, 2, 3]") == [1, 2, 3]
    assert Typed.options.parse('{"k": [1]}') == {"k": [1]}
    assert Typed.anything.parse("plain words") == "plain words"
    for param, text in ((Typed.n, "x"), (Typed.flag, "maybe"), (Typed.x, "inf")):
        with pytest.raises(InvalidArgument):
            param.parse(text)


def test_identity_is_family_and_significant_parameters() -> None:
    a, b = Typed(name="a", threads=1), Typed(name="a", threads=8)
    assert a == b and hash(a) == hash(b) and a.task_id == b.task_id
    assert a != Typed(name="c")
    assert a.task_id.startswith("Typed-") and len(a.task_id) == len("Typed-") + 10
    assert Typed.family() == f"{__name__}.Typed"
    # Values are copies: changing the caller's list does not change the task.
    items = [1]
    t = Typed(name="a", items=items)
    items.append(2)
    assert t.items == [1]


def test_external_bundle_needs_exactly_one_ref() -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        ExternalBundle("raw")
    with pytest.raises(InvalidArgument, match="exactly one"):
        ExternalBundle("raw", label="a", branch="b")
    assert ExternalBundle("raw", branch="main").describe() == "raw branch main"


def test_graph_walks_every_requires_form() -> None:
    graph = build_graph([Total()])
    kinds = {n.id.split("-")[0]: n.kind for n in graph.nodes.values()}
    assert kinds == {"PinnedBundle": EXTERNAL, "Scale": TASK, "Clip": TASK, "Total": TASK}
    # Upstream first; equal tasks (Scale and Clip share the pinned bundle) are one node.
    order = [n.id.split("-")[0] for n in graph.nodes.values()]
    assert order.index("Total") == 3
    total = graph.nodes[Total().task_id]
    assert [name for name, _up in total.inputs] == ["scaled", "clipped"]
    pinned = graph.nodes[PinnedBundle.of(ExternalBundle("numbers", label="v1")).task_id]
    assert sorted(pinned.downstream) == sorted([Scale().task_id, Clip().task_id])
    assert graph.select("Scale") == [Scale().task_id]
    assert graph.select(Clip) == [Clip().task_id]
    assert graph.downstream_closure([pinned.id]) == set(graph.nodes)


def test_cycles_and_malformed_tasks_are_errors() -> None:
    with pytest.raises(DependencyCycle, match="CycleA\\(\\) -> CycleB\\(\\) -> CycleA\\(\\)"):
        build_graph([CycleA()])

    class NoOutput(Task):
        pass

    class BadRequires(Task):
        def requires(self) -> Any:
            return 42

        def output(self) -> BundleOutput:
            return BundleOutput("x")

    class Group(WrapperTask):
        def requires(self) -> Any:
            return [Scale()]

    class NeedsGroup(Task):
        def requires(self) -> Any:
            return Group()

        def output(self) -> BundleOutput:
            return BundleOutput("x")

    class BadExternal(ExternalTask):
        def output(self) -> Any:
            return BundleOutput("x")

    with pytest.raises(TaskDefinitionError, match="does not define output"):
        build_graph([NoOutput()])
    with pytest.raises(TaskDefinitionError, match="returned int"):
        build_graph([BadRequires()])
    with pytest.raises(TaskDefinitionError, match="require its tasks instead"):
        build_graph([NeedsGroup()])
    with pytest.raises(TaskDefinitionError, match="must return an ExternalBundle"):
        build_graph([BadExternal()])
    assert build_graph([Group()]).nodes[Group().task_id].kind == WRAPPER


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A small project on sys.path: a task module importing a local helper and the stdlib."""
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "helpers.py").write_text("import json\n\nSCALE = 2\n")
    (root / "pkg" / "lazy.py").write_text("VALUE = 1\n")
    (root / "pkg" / "unused.py").write_text("")
    (root / "pkg" / "steps.py").write_text(
        "import os\n"
        "from datamon.pipeline import BundleOutput, Task\n"
        "from . import helpers\n"
        "\n"
        "class Step(Task):\n"
        "    def output(self):\n"
        "        return BundleOutput('step')\n"
        "\n"
        "    def run(self, ctx):\n"
        "        from pkg.lazy import VALUE\n"
        "        ctx.output.mkdir()\n"
        "        (ctx.output / 'v.txt').write_text(str(VALUE + helpers.SCALE))\n"
        "\n"
        "class Pinned(Step):\n"
        "    code_version = '1.2'\n"
    )
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "pkg" or m.startswith("pkg.")]:
        del sys.modules[name]


def test_code_hash_covers_the_module_and_its_local_imports(project: Path) -> None:
    steps = importlib.import_module("pkg.steps")
    assert top_folder("pkg.steps", str(project / "pkg" / "steps.py")) == str(project)
    files = code_manifest(steps.Step, CodeHasher())
    assert sorted(files) == ["pkg/__init__.py", "pkg/helpers.py", "pkg/lazy.py", "pkg/steps.py"]
    assert code_manifest(steps.Pinned, CodeHasher()) == {"code_version": "1.2"}
    (project / "pkg" / "helpers.py").write_text("import json\n\nSCALE = 3\n")
    again = code_manifest(steps.Step, CodeHasher())
    assert again["pkg/helpers.py"] != files["pkg/helpers.py"]
    assert again["pkg/steps.py"] == files["pkg/steps.py"]


def test_fingerprint_is_canonical_and_changes_are_named() -> None:
    base = Manifest(
        scheme=SCHEME,
        family="m.T",
        code={"m.py": "aa"},
        params={"b": 1, "a": [1, 2]},
        inputs={"0": "t1"},
        output="r@main",
    )
    reordered = Manifest(
        scheme=SCHEME,
        family="m.T",
        code={"m.py": "aa"},
        params={"a": [1, 2], "b": 1},
        inputs={"0": "t1"},
        output="r@main",
    )
    assert fingerprint(base) == fingerprint(reordered)
    assert len(fingerprint(base)) == 64
    other = Manifest(
        scheme=SCHEME,
        family="m.T",
        code={"m.py": "bb", "n.py": "cc"},
        params={"a": [1, 2], "b": 2, "c": "new"},
        inputs={"0": "t2"},
        output="s@main",
    )
    described = [c.describe() for c in changes(base, other)]
    assert described == [
        "parameter b changed: 1 -> 2",
        'parameter c added ("new")',
        "code file m.py changed",
        "code file n.py added",
        "input 0 changed (tree t1 -> t2)",
        "output changed: r@main -> s@main",
    ]


def test_a_code_change_is_the_reason_for_a_rerun(
    project: Path, mem_store: Store, author: Author
) -> None:
    steps = importlib.import_module("pkg.steps")
    options = BuildOptions(author=author)
    first = build([steps.Step()], store=mem_store, executor="inline", options=options)
    assert first.ok and first.ran() == ["Step"]
    (project / "pkg" / "helpers.py").write_text("import json\n\nSCALE = 4\n")
    plan = build([steps.Step()], store=mem_store, dry_run=True, options=options)
    assert plan.step("Step").decision == "RUN"
    assert plan.step("Step").reason == "code file pkg/helpers.py changed"


def test_public_names_are_sorted() -> None:
    import datamon.pipeline

    assert datamon.pipeline.__all__ == sorted(datamon.pipeline.__all__)
    for name in datamon.pipeline.__all__:
        assert getattr(datamon.pipeline, name) is not None


def test_a_parameter_named_like_a_task_attribute_is_refused() -> None:
    from datamon.errors import TaskDefinitionError
    from datamon.pipeline import IntParameter, Task

    with pytest.raises(TaskDefinitionError, match="'params' is a name Task uses itself"):

        class Shadows(Task):
            params = IntParameter(default=1)


def test_a_build_of_no_task_is_refused(tmp_path: Path) -> None:
    from datamon import Store
    from datamon.errors import InvalidArgument
    from datamon.pipeline import build

    with pytest.raises(InvalidArgument, match="no task"):
        build([], store=Store.open(str(tmp_path / "store")), executor="inline")
