"""Bundle lineage: which recorded steps made a bundle from which bundles, and what used it.

Every committed step leaves ``runs/fingerprints/<fp>.json`` with its input bundles and
its output bundle. Those entries are the edges of a graph over ``(repo, bundle id)``;
:func:`lineage` walks it upstream (the producers of a bundle, their inputs, and so on)
and downstream (the steps that read it, their outputs, and so on).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from datamon.pipeline.runstore import RunStore
from datamon.storage.base import Backend

BundleKey = tuple[str, str]
"""(repo, bundle id)."""


@dataclass(frozen=True)
class Step:
    """One committed step: inputs -> output."""

    task: str
    run: str
    fingerprint: str
    inputs: tuple[tuple[str, str, str], ...]
    """(input name, repo, bundle id)."""
    output: BundleKey
    created: str


@dataclass
class LineageEdge:
    direction: str
    """``upstream`` or ``downstream``."""
    depth: int
    step: Step


@dataclass
class Lineage:
    bundle: BundleKey
    upstream: list[LineageEdge] = field(default_factory=list)
    downstream: list[LineageEdge] = field(default_factory=list)


def steps(meta: Backend) -> list[Step]:
    """Every committed step of the store, oldest first."""
    found = []
    for entry in RunStore(meta).entries():
        found.append(
            Step(
                task=entry.task,
                run=entry.run,
                fingerprint=entry.fingerprint,
                inputs=tuple((i.name, i.repo, i.bundle) for i in entry.inputs),
                output=(entry.output.repo, entry.output.bundle),
                created=entry.created.isoformat(),
            )
        )
    found.sort(key=lambda s: (s.created, s.fingerprint))
    return found


def lineage(meta: Backend, repo: str, bundle: str, max_depth: int | None = None) -> Lineage:
    """The steps above and below bundle ``bundle`` of ``repo``, breadth first."""
    all_steps = steps(meta)
    producers: dict[BundleKey, list[Step]] = {}
    consumers: dict[BundleKey, list[Step]] = {}
    for step in all_steps:
        producers.setdefault(step.output, []).append(step)
        for _name, in_repo, in_bundle in step.inputs:
            consumers.setdefault((in_repo, in_bundle), []).append(step)
    root = (repo, bundle)
    found = Lineage(root)
    # A step is its fingerprint and its run: a forced re-run has the fingerprint of the
    # step it replaced (kept for lineage) and reads the same bundles.
    seen: set[tuple[str, str]] = set()
    queue: deque[tuple[BundleKey, int]] = deque([(root, 1)])
    while queue:
        key, depth = queue.popleft()
        if max_depth is not None and depth > max_depth:
            continue
        for step in producers.get(key, []):
            if (step.fingerprint, step.run) in seen:
                continue
            seen.add((step.fingerprint, step.run))
            found.upstream.append(LineageEdge("upstream", depth, step))
            for _name, in_repo, in_bundle in step.inputs:
                queue.append(((in_repo, in_bundle), depth + 1))
    seen.clear()
    queue.append((root, 1))
    while queue:
        key, depth = queue.popleft()
        if max_depth is not None and depth > max_depth:
            continue
        for step in consumers.get(key, []):
            if (step.fingerprint, step.run) in seen:
                continue
            seen.add((step.fingerprint, step.run))
            found.downstream.append(LineageEdge("downstream", depth, step))
            queue.append((step.output, depth + 1))
    return found


def format_lineage(found: Lineage) -> list[str]:
    """Lines: ``<direction> , <depth> , <task> , run <run> , <inputs> -> <output>``."""
    lines = [f"bundle {found.bundle[0]}@{found.bundle[1]}"]
    for edge in [*found.upstream, *found.downstream]:
        step = edge.step
        inputs = " ".join(f"{r}@{b}" for _n, r, b in step.inputs) or "(no inputs)"
        output = f"{step.output[0]}@{step.output[1]}"
        lines.append(
            f"{edge.direction} , {edge.depth} , {step.task} , run {step.run} , {inputs} -> {output}"
        )
    if not found.upstream and not found.downstream:
        lines.append("no recorded pipeline step made or read this bundle")
    return lines
