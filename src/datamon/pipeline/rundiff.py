"""What changed between two runs: DAG, code, environment, parameters, data, and why.

Tasks are paired by id (family and significant parameters), then the rest by family,
nearest parameters first, so a parameter change shows as a change, not as one task
removed and another added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.core.codecs import to_json
from datamon.errors import DatamonError
from datamon.pipeline.fingerprint import Change
from datamon.pipeline.records import RUN, UPSTREAM, BundleRef, RunRecord, TaskRecord

FILE_LIMIT = 20
"""How many changed files of one bundle are listed."""


@dataclass
class BundleDiff:
    """One input or output that differs: old and new bundle, and the files that changed."""

    name: str
    old: str | None
    new: str | None
    files: list[tuple[str, str]] = field(default_factory=list)
    """``(status, path)`` pairs: added, deleted or modified."""
    more: int = 0


@dataclass
class TaskDiff:
    family: str
    old: str | None
    new: str | None
    params: list[Change] = field(default_factory=list)
    code: list[Change] = field(default_factory=list)
    inputs: list[BundleDiff] = field(default_factory=list)
    output: BundleDiff | None = None
    old_decision: str = ""
    new_decision: str = ""
    why: str = ""
    root_cause: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.new or self.old or self.family


@dataclass
class RunDiff:
    old: str
    new: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    tasks: list[TaskDiff] = field(default_factory=list)

    def params(self) -> list[str]:
        """Every changed parameter as ``task.name``."""
        return [f"{t.family.rpartition('.')[2]}.{c.name}" for t in self.tasks for c in t.params]


def _param_distance(a: TaskRecord, b: TaskRecord) -> int:
    keys = a.params.keys() | b.params.keys()
    return sum(to_json(a.params.get(k)) != to_json(b.params.get(k)) for k in keys)


def pair_tasks(old: RunRecord, new: RunRecord) -> list[tuple[TaskRecord | None, TaskRecord | None]]:
    olds = {t.id: t for t in old.tasks}
    pairs: list[tuple[TaskRecord | None, TaskRecord | None]] = []
    unmatched_new = []
    for t in new.tasks:
        if t.id in olds:
            pairs.append((olds.pop(t.id), t))
        else:
            unmatched_new.append(t)
    for t in unmatched_new:
        candidates = [o for o in olds.values() if o.family == t.family]
        if candidates:
            best = min(candidates, key=lambda o: _param_distance(o, t))
            del olds[best.id]
            pairs.append((best, t))
        else:
            pairs.append((None, t))
    pairs.extend((o, None) for o in olds.values())
    return pairs


def _dict_changes(kind: str, a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    found = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a or key not in b or to_json(a[key]) != to_json(b[key]):
            found.append(Change(kind=kind, name=key, old=a.get(key), new=b.get(key)))
    return found


def _bundle_diff(
    store: Store | None, name: str, a: BundleRef | None, b: BundleRef | None
) -> BundleDiff | None:
    if a is not None and b is not None and a.bundle == b.bundle:
        return None
    found = BundleDiff(
        name,
        f"{a.repo}@{a.bundle}" if a else None,
        f"{b.repo}@{b.bundle}" if b else None,
    )
    if store is not None and a is not None and b is not None and a.repo == b.repo:
        if a.tree == b.tree:
            return found
        try:
            for change in Repository(store, b.repo).diff(a.bundle, b.bundle):
                if len(found.files) < FILE_LIMIT:
                    found.files.append((change.status, change.path))
                else:
                    found.more += 1
        except DatamonError as exc:
            found.files.append(("unavailable", str(exc)))
    return found


def _refs(task: TaskRecord) -> dict[str, BundleRef]:
    return {i.name: BundleRef(repo=i.repo, bundle=i.bundle, tree=i.tree) for i in task.inputs}


def root_cause(run: RunRecord, task: TaskRecord) -> list[str]:
    """Follow "an input changed" upstream to the steps that changed by themselves."""
    by_id = {t.id: t for t in run.tasks}
    causes: list[str] = []
    seen: set[str] = set()
    todo = [task]
    while todo:
        current = todo.pop()
        if current.id in seen:
            continue
        seen.add(current.id)
        reason = current.reason
        if reason is None:
            continue
        if reason.kind == UPSTREAM and reason.upstream:
            todo.extend(by_id[u] for u in reason.upstream if u in by_id)
        elif current is not task:
            causes.append(f"{current.id}: {reason.text}")
    return causes


def diff_runs(old: RunRecord, new: RunRecord, store: Store | None = None) -> RunDiff:
    """Compare run ``old`` with run ``new``; with ``store``, bundles are diffed file by file."""
    result = RunDiff(old.id, new.id)
    if (old.code.commit, old.code.diff) != (new.code.commit, new.code.diff):
        result.code.append(f"git commit {_code(old)} -> {_code(new)}")
    env_a, env_b = old.environment, new.environment
    for label, before, after in (
        ("python", env_a.python, env_b.python),
        ("platform", env_a.platform, env_b.platform),
    ):
        if before != after:
            result.environment.append(f"{label} {before} -> {after}")
    for change in _dict_changes("package", env_a.packages, env_b.packages):
        result.environment.append(
            f"package {change.name} {change.old or '(none)'} -> {change.new or '(none)'}"
        )
    for a, b in pair_tasks(old, new):
        if a is None and b is not None:
            result.added.append(b.id)
        elif b is None and a is not None:
            result.removed.append(a.id)
        if a is None or b is None:
            continue
        diff = TaskDiff(b.family, a.id, b.id, old_decision=a.decision, new_decision=b.decision)
        diff.params = _dict_changes("params", a.params, b.params)
        code_a = a.manifest.code if a.manifest else {}
        code_b = b.manifest.code if b.manifest else {}
        diff.code = _dict_changes("code", code_a, code_b)
        refs_a, refs_b = _refs(a), _refs(b)
        for name in sorted(refs_a.keys() | refs_b.keys()):
            found = _bundle_diff(store, name, refs_a.get(name), refs_b.get(name))
            if found is not None:
                diff.inputs.append(found)
        diff.output = _bundle_diff(store, "output", a.output, b.output)
        if b.reason is not None:
            diff.why = f"{b.decision}: {b.reason.text}"
            if b.decision == RUN:
                diff.root_cause = root_cause(new, b)
        result.tasks.append(diff)
    old_edges = {(u, t.id) for t in old.tasks for u in t.requires.values()}
    new_edges = {(u, t.id) for t in new.tasks for u in t.requires.values()}
    renamed = {a.id: b.id for a, b in pair_tasks(old, new) if a is not None and b is not None}
    old_edges = {(renamed.get(u, u), renamed.get(d, d)) for u, d in old_edges}
    result.edges += [f"+ {u} -> {d}" for u, d in sorted(new_edges - old_edges)]
    result.edges += [f"- {u} -> {d}" for u, d in sorted(old_edges - new_edges)]
    return result


def _code(run: RunRecord) -> str:
    if run.code.commit is None:
        return "(no git)"
    dirty = f"+dirty:{run.code.diff[:12]}" if run.code.dirty and run.code.diff else ""
    return run.code.commit[:12] + dirty


def format_diff(diff: RunDiff) -> list[str]:
    lines = [f"run {diff.old} -> run {diff.new}"]
    if diff.added or diff.removed or diff.edges:
        lines.append("DAG:")
        lines += [f"  + task {t}" for t in diff.added]
        lines += [f"  - task {t}" for t in diff.removed]
        lines += [f"  {e}" for e in diff.edges]
    lines.append("code: " + ("; ".join(diff.code) if diff.code else "unchanged"))
    if diff.environment:
        lines.append("environment:")
        lines += [f"  {e}" for e in diff.environment]
    else:
        lines.append("environment: unchanged")
    for t in diff.tasks:
        lines.append(f"task {t.name}:" + ("" if t.old == t.new else f" (was {t.old})"))
        lines += [f"  parameter {c.name}: {_json(c.old)} -> {_json(c.new)}" for c in t.params]
        lines += [f"  {c.describe()}" for c in t.code]
        for bundle in t.inputs:
            lines += _format_bundle(f"input {bundle.name}", bundle)
        if t.output is not None:
            lines += _format_bundle("output", t.output)
        lines.append(f"  {t.old_decision or '-'} -> {t.why or t.new_decision}")
        lines += [f"  because {cause}" for cause in t.root_cause]
    return lines


def _format_bundle(title: str, bundle: BundleDiff) -> list[str]:
    head = f"  {title}: {bundle.old or '(none)'} -> {bundle.new or '(none)'}"
    if bundle.old and bundle.new and not bundle.files:
        head += " (same files)"
    lines = [head]
    lines += [f"    {status} {path}" for status, path in bundle.files]
    if bundle.more:
        lines.append(f"    ... and {bundle.more} more")
    return lines


def _json(value: Any) -> str:
    return "(none)" if value is None else to_json(value).decode()
