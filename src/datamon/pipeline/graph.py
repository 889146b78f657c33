"""The DAG of a build: every task reachable through ``requires()``, in dependency order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from datamon.errors import DependencyCycle, TaskDefinitionError
from datamon.pipeline.task import (
    BundleOutput,
    ExternalBundle,
    ExternalTask,
    PinnedBundle,
    Task,
    WrapperTask,
)

TASK = "task"
EXTERNAL = "external"
WRAPPER = "wrapper"


@dataclass
class Node:
    task: Task
    id: str
    kind: str
    inputs: list[tuple[str, str]]
    """``(input name, upstream node id)`` in the order ``requires()`` gave them."""
    output: BundleOutput | ExternalBundle | None
    downstream: list[str] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.task.family()


@dataclass
class Graph:
    nodes: dict[str, Node]
    """Every node, upstream before downstream."""
    roots: list[str]

    def downstream_closure(self, ids: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(ids)
        while todo:
            nid = todo.pop()
            if nid not in seen:
                seen.add(nid)
                todo.extend(self.nodes[nid].downstream)
        return seen

    def select(self, selector: object) -> list[str]:
        """Node ids matching a Task instance, a Task class, or a task id / class name / family."""
        if isinstance(selector, Task):
            return [n.id for n in self.nodes.values() if n.task == selector]
        if isinstance(selector, type) and issubclass(selector, Task):
            return [n.id for n in self.nodes.values() if isinstance(n.task, selector)]
        text = str(selector)
        return [
            n.id for n in self.nodes.values() if text in (n.id, type(n.task).__name__, n.family)
        ]


def requirements(task: Task) -> list[tuple[str, Task]]:
    """``requires()`` as ``(name, task)`` pairs; external bundles become pinned tasks."""
    found = task.requires()
    if found is None:
        return []
    if isinstance(found, Task | ExternalBundle):
        items: list[tuple[str, object]] = [("0", found)]
    elif isinstance(found, Mapping):
        items = [(str(k), v) for k, v in found.items()]
    elif isinstance(found, Sequence | set | frozenset) and not isinstance(found, str):
        items = [(str(i), v) for i, v in enumerate(found)]
    else:
        raise TaskDefinitionError(
            f"{task!r}.requires() returned {type(found).__name__}; "
            "return a task, a list of tasks or a dict of tasks"
        )
    pairs: list[tuple[str, Task]] = []
    for name, item in items:
        if isinstance(item, ExternalBundle):
            pairs.append((name, PinnedBundle.of(item)))
        elif isinstance(item, Task):
            pairs.append((name, item))
        else:
            raise TaskDefinitionError(
                f"{task!r}.requires() holds {type(item).__name__} {item!r}, not a task"
            )
    return pairs


def _kind_and_output(task: Task) -> tuple[str, BundleOutput | ExternalBundle | None]:
    if isinstance(task, WrapperTask):
        return WRAPPER, None
    output = task.output()
    if isinstance(task, ExternalTask):
        if not isinstance(output, ExternalBundle):
            raise TaskDefinitionError(f"{task!r}.output() must return an ExternalBundle")
        return EXTERNAL, output
    if not isinstance(output, BundleOutput):
        raise TaskDefinitionError(
            f"{task!r}.output() must return a BundleOutput, not {type(output).__name__}"
        )
    return TASK, output


def build_graph(roots: Sequence[Task]) -> Graph:
    """Walk ``requires()`` from ``roots``; DependencyCycle names any loop."""
    nodes: dict[str, Node] = {}
    by_task: dict[Task, str] = {}
    stack: list[Task] = []

    def visit(task: Task) -> str:
        if task in by_task:
            return by_task[task]
        if task in stack:
            loop = [*stack[stack.index(task) :], task]
            raise DependencyCycle([repr(t) for t in loop])
        stack.append(task)
        kind, output = _kind_and_output(task)
        inputs = [(name, visit(req)) for name, req in requirements(task)]
        stack.pop()
        nid = task.task_id
        if nid in nodes:
            raise TaskDefinitionError(f"two different tasks share the id {nid}: rename one")
        for _name, up in inputs:
            upstream = nodes[up]
            if upstream.kind == WRAPPER and kind != WRAPPER:
                raise TaskDefinitionError(
                    f"{task!r} requires the wrapper {upstream.task!r}, which has no output; "
                    "require its tasks instead"
                )
            if nid not in upstream.downstream:
                upstream.downstream.append(nid)
        nodes[nid] = Node(task, nid, kind, inputs, output)
        by_task[task] = nid
        return nid

    for root in roots:
        if not isinstance(root, Task):
            raise TaskDefinitionError(f"build() takes tasks, not {type(root).__name__}")
    root_ids = list(dict.fromkeys(visit(root) for root in roots))
    return Graph(nodes, root_ids)
