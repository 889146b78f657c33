"""Labels and branches: small objects moved only by compare-and-swap, keeping their history."""

from __future__ import annotations

from datetime import UTC, datetime

from datamon.core.codecs import load_versioned, to_json
from datamon.core.model import FORMAT_VERSION, Ref, RefMove
from datamon.errors import ObjectNotFound, RefConflict
from datamon.metadata.layout import (
    check_name,
    legacy_branch_key,
    legacy_branches_prefix,
    ref_key,
    refs_prefix,
)
from datamon.storage.base import Backend

KINDS = ("label", "branch")
ANY = object()


class RefStore:
    def __init__(self, meta: Backend) -> None:
        self.meta = meta
        # Repos found with no branch in the folder of older stores (design §3): nothing
        # writes there any more, so it is not looked at again.
        self._no_legacy: set[str] = set()

    def read(self, repo: str, kind: str, name: str) -> tuple[Ref, str | None] | None:
        """The ref and its version, or None if it does not exist.

        A branch found only in the folder of stores written before branches moved (design
        §3) comes with no version: nothing is written to read it, and moving it writes it,
        the move appended, where branches are now, create-only.
        """
        key = ref_key(repo, kind, check_name(kind, name))
        try:
            data, version = self.meta.get_versioned(key)
        except ObjectNotFound:
            if kind != "branch" or repo in self._no_legacy:
                return None
            legacy = legacy_branch_key(repo, name)
            try:
                data = self.meta.get(legacy)
            except ObjectNotFound:
                return None
            return load_versioned(legacy, data, Ref, FORMAT_VERSION, binary=False), None
        return load_versioned(key, data, Ref, FORMAT_VERSION, binary=False), version

    def move(
        self,
        repo: str,
        kind: str,
        name: str,
        bundle: str,
        author: str,
        expected: object = ANY,
    ) -> Ref:
        """Point the ref at ``bundle``, appending the move to its history.

        With ``expected`` (a bundle id, or None for "must not exist") the move
        happens only if the ref still points there; otherwise a concurrent move
        is retried until this one lands on top of it.

        A swap refused as a conflict may yet have landed: the store took it, its reply
        was lost, the retry found the ref changed, and another move had come on top
        meanwhile. A move found in the ref's history has landed, and is neither made
        again (the history would hold it twice) nor reported as a conflict.
        """
        key = ref_key(repo, kind, check_name(kind, name))
        while True:
            current = self.read(repo, kind, name)
            old_ref, version = current if current else (None, None)
            old = old_ref.bundle if old_ref else None
            if expected is not ANY and old != expected:
                raise RefConflict(
                    f"{kind} {name}", None if expected is None else str(expected), old
                )
            now = datetime.now(UTC)
            move = RefMove(bundle=bundle, previous=old, timestamp=now, author=author)
            history = (old_ref.history if old_ref else ()) + (move,)
            ref = Ref(
                format=FORMAT_VERSION,
                kind=kind,
                name=name,
                bundle=bundle,
                timestamp=now,
                history=history,
            )
            try:
                self.meta.compare_and_swap(key, to_json(ref), version)
            except RefConflict:
                if self._landed(repo, kind, name, move):
                    return ref
                if expected is not ANY:
                    raise
                continue
            return ref

    def _landed(self, repo: str, kind: str, name: str, move: RefMove) -> bool:
        """Whether the ref's history holds ``move`` (its time, author, bundle and previous)."""
        current = self.read(repo, kind, name)
        return current is not None and move in current[0].history

    def all(self, repo: str, kind: str) -> list[Ref]:
        names = set(self._names(refs_prefix(repo, kind)))
        if kind == "branch" and repo not in self._no_legacy:
            legacy = self._names(legacy_branches_prefix(repo))
            if not legacy:
                self._no_legacy.add(repo)
            names.update(legacy)
        refs = []
        for name in sorted(names):
            found = self.read(repo, kind, name)
            if found:
                refs.append(found[0])
        return refs

    def _names(self, prefix: str) -> list[str]:
        return [
            k[len(prefix) : -len(".json")] for k in self.meta.list(prefix) if k.endswith(".json")
        ]
