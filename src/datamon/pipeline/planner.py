"""Deciding each step: REUSE a committed output, RUN it, or BLOCKED, with the reason why."""

from __future__ import annotations

from dataclasses import dataclass, field

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.errors import AmbiguousId, NotFound
from datamon.pipeline.code import CodeHasher, code_manifest
from datamon.pipeline.fingerprint import SCHEME, Manifest, changes, distance, fingerprint
from datamon.pipeline.graph import EXTERNAL, TASK, WRAPPER, Graph, Node
from datamon.pipeline.records import (
    BLOCKED,
    CHANGED,
    FORCED,
    GROUP,
    MISSING_INPUT,
    MISSING_OUTPUT,
    NEW,
    PINNED,
    REUSE,
    REUSED_OUTPUT,
    RUN,
    UPSTREAM,
    BundleRef,
    FingerprintEntry,
    InputRecord,
    Reason,
    Resolution,
)
from datamon.pipeline.runstore import RunStore
from datamon.pipeline.task import BundleOutput, ExternalBundle


@dataclass
class Decision:
    decision: str
    reason: Reason
    fingerprint: str = ""
    manifest: Manifest | None = None
    entry: FingerprintEntry | None = None
    inputs: list[InputRecord] = field(default_factory=list)
    output: BundleRef | None = None


@dataclass
class Resolved:
    """An external bundle resolved at plan time, or why it could not be."""

    ref: BundleRef | None
    resolution: Resolution | None
    error: str = ""


class Planner:
    def __init__(
        self,
        store: Store,
        graph: Graph,
        runs: RunStore,
        forced: dict[str, str],
        hasher: CodeHasher | None = None,
    ) -> None:
        self.store = store
        self.graph = graph
        self.runs = runs
        self.forced = forced
        """Forced node id -> why (``--force X`` or downstream of X)."""
        self.hasher = hasher or CodeHasher()
        self._history: dict[str, list[FingerprintEntry]] = {}
        self._code: dict[str, dict[str, str]] = {}

    # externals -----------------------------------------------------------------------------

    def resolve_externals(self) -> dict[str, Resolved]:
        """Every external bundle's id, resolved once for the whole run."""
        found: dict[str, Resolved] = {}
        for node in self.graph.nodes.values():
            if node.kind == EXTERNAL:
                assert isinstance(node.output, ExternalBundle)
                found[node.id] = self._resolve(node.output)
        return found

    def _resolve(self, pin: ExternalBundle) -> Resolved:
        try:
            repo = Repository(self.store, pin.repo)
            bid = repo.resolve(bundle=pin.bundle, label=pin.label, branch=pin.branch)
            tree = repo.bundle(bid).tree
        except (NotFound, AmbiguousId) as exc:
            return Resolved(None, None, str(exc))
        kind, name = (
            ("label", pin.label)
            if pin.label is not None
            else ("branch", pin.branch)
            if pin.branch is not None
            else ("bundle", pin.bundle)
        )
        ref = BundleRef(repo=pin.repo, bundle=bid, tree=tree, label=pin.label, branch=pin.branch)
        resolution = Resolution(repo=pin.repo, kind=kind, name=name or "", bundle=bid, tree=tree)
        return Resolved(ref, resolution)

    def external(self, node: Node, resolved: Resolved) -> Decision:
        assert isinstance(node.output, ExternalBundle)
        if resolved.ref is None:
            return Decision(BLOCKED, Reason(kind=MISSING_INPUT, text=resolved.error))
        text = f"{node.output.describe()} is bundle {resolved.ref.bundle[:12]}"
        return Decision(REUSE, Reason(kind=PINNED, text=text), output=resolved.ref)

    # tasks ---------------------------------------------------------------------------------

    def hash_code(self) -> None:
        """Hash every task's code now, at plan time, so a file edited mid-run cannot mix in."""
        for node in self.graph.nodes.values():
            if node.kind == TASK and node.family not in self._code:
                self._code[node.family] = code_manifest(type(node.task), self.hasher)

    def manifest(self, node: Node, inputs: list[InputRecord]) -> Manifest:
        assert isinstance(node.output, BundleOutput)
        family = node.family
        if family not in self._code:
            self._code[family] = code_manifest(type(node.task), self.hasher)
        return Manifest(
            scheme=SCHEME,
            family=family,
            code=self._code[family],
            params=node.task.significant_params,
            inputs={i.name: i.tree for i in inputs},
            output=f"{node.output.repo}@{node.output.branch}",
        )

    def valid_entry(self, fp: str) -> FingerprintEntry | None:
        """The fingerprint's committed output, if its bundle still exists."""
        entry = self.runs.lookup(fp)
        if entry is None or not self.store.bundles.exists(entry.output.repo, entry.output.bundle):
            return None
        return entry

    def decide(self, node: Node, inputs: list[InputRecord]) -> Decision:
        """The decision for a task whose inputs are all known."""
        manifest = self.manifest(node, inputs)
        fp = fingerprint(manifest)
        if node.id in self.forced:
            reason = Reason(kind=FORCED, text=self.forced[node.id])
            return Decision(RUN, reason, fp, manifest, inputs=inputs)
        entry = self.valid_entry(fp)
        if entry is not None:
            text = (
                f"output {entry.output.repo}@{entry.output.bundle[:12]} of run {entry.run} "
                "has the same fingerprint"
            )
            reason = Reason(kind=REUSED_OUTPUT, text=text, previous_run=entry.run)
            return Decision(REUSE, reason, fp, manifest, entry, inputs)
        return Decision(RUN, self.explain(manifest, inputs), fp, manifest, inputs=inputs)

    def explain(self, manifest: Manifest, inputs: list[InputRecord]) -> Reason:
        """Why a fingerprint is new: what changed since the family's nearest recorded step."""
        family = manifest.family
        if family not in self._history:
            self._history[family] = self.runs.history(family)
        history = self._history[family]
        if not history:
            return Reason(kind=NEW, text="no previous run")
        nearest = min(history, key=lambda e: distance(e.manifest, manifest))
        found = changes(nearest.manifest, manifest)
        if not found:
            text = f"the recorded output {nearest.output.repo}@{nearest.output.bundle[:12]} is gone"
            return Reason(kind=MISSING_OUTPUT, text=text, previous_run=nearest.run)
        producers = {i.name: i.task for i in inputs}
        upstream = [
            producers[c.name] for c in found if c.kind == "inputs" and producers.get(c.name)
        ]
        lines = []
        for c in found:
            if c.kind == "inputs" and producers.get(c.name) and c.old and c.new:
                lines.append(f"input {c.name} from {producers[c.name]} changed")
            else:
                lines.append(c.describe())
        text = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
        kind = UPSTREAM if all(c.kind == "inputs" for c in found) else CHANGED
        return Reason(
            kind=kind, text=text, changes=found, upstream=upstream, previous_run=nearest.run
        )

    # dry run -------------------------------------------------------------------------------

    def plan(self, resolved: dict[str, Resolved]) -> dict[str, Decision]:
        """Every step's decision without running anything.

        A step below one that will run is RUN with that reason: its fingerprint is known
        only once the new input exists (and is REUSED then if that input came out the same).
        """
        decisions: dict[str, Decision] = {}
        for node in self.graph.nodes.values():
            ups = [(name, up, decisions[up]) for name, up in node.inputs]
            blocked = [(name, up) for name, up, d in ups if d.decision == BLOCKED]
            if node.kind == EXTERNAL:
                decisions[node.id] = self.external(node, resolved[node.id])
            elif blocked:
                decisions[node.id] = blocked_by(blocked, decisions)
            elif node.kind == WRAPPER:
                will_run = sum(d.decision == RUN for _n, _u, d in ups)
                text = f"groups {len(ups)} tasks" + (f", {will_run} to run" if will_run else "")
                decision = RUN if will_run else REUSE
                decisions[node.id] = Decision(decision, Reason(kind=GROUP, text=text))
            elif any(d.decision == RUN for _n, _u, d in ups):
                rerun = [(name, up) for name, up, d in ups if d.decision == RUN]
                if node.id in self.forced:
                    reason = Reason(kind=FORCED, text=self.forced[node.id])
                else:
                    text = "; ".join(f"input {n} will be rebuilt by {u}" for n, u in rerun)
                    reason = Reason(kind=UPSTREAM, text=text, upstream=[u for _n, u in rerun])
                decisions[node.id] = Decision(RUN, reason)
            else:
                inputs = [input_record(name, up, d.output) for name, up, d in ups]
                decided = self.decide(node, inputs)
                if decided.entry is not None:
                    decided.output = decided.entry.output
                decisions[node.id] = decided
        return decisions


def input_record(name: str, task: str, ref: BundleRef | None) -> InputRecord:
    assert ref is not None
    return InputRecord(name=name, task=task, repo=ref.repo, bundle=ref.bundle, tree=ref.tree)


def blocked_by(blocked: list[tuple[str, str]], decisions: dict[str, Decision]) -> Decision:
    parts = []
    for name, up in blocked:
        cause = decisions[up].reason.text
        parts.append(f"input {name} ({up}) is blocked: {cause}")
    reason = Reason(kind=MISSING_INPUT, text="; ".join(parts), upstream=[u for _n, u in blocked])
    return Decision(BLOCKED, reason)
