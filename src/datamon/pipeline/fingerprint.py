"""Fingerprints: the BLAKE3 of a canonical, keyed manifest of what a step's output depends on.

The manifest holds the task family, its code (file hashes, or the pinned ``code_version``),
its significant parameters by name, the *tree ids* of its input bundles, and where the
output goes. Tree ids, not bundle ids: a bundle id also covers the upload's time, message
and parents, so a re-run that produces the same files would change every fingerprint
downstream. With tree ids, and outputs uploaded with normalised mtimes, an identical
re-run leaves downstream fingerprints unchanged (early cut-off).
"""

from __future__ import annotations

from typing import Any

import msgspec

from datamon.core.codecs import to_json
from datamon.core.ids import hexdigest

SCHEME = 1
"""The version of the manifest layout; changing the layout must change it."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    scheme: int
    family: str
    code: dict[str, str]
    params: dict[str, Any]
    inputs: dict[str, str]
    output: str


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One difference between two manifests: ``kind`` is params, code, inputs or output."""

    kind: str
    name: str
    old: Any = None
    new: Any = None

    def describe(self) -> str:
        if self.kind == "params":
            if self.old is None:
                return f"parameter {self.name} added ({_short(self.new)})"
            if self.new is None:
                return f"parameter {self.name} removed (was {_short(self.old)})"
            return f"parameter {self.name} changed: {_short(self.old)} -> {_short(self.new)}"
        if self.kind == "code":
            if self.old is None:
                return f"code file {self.name} added"
            if self.new is None:
                return f"code file {self.name} removed"
            return f"code file {self.name} changed"
        if self.kind == "inputs":
            if self.old is None:
                return f"input {self.name} added"
            if self.new is None:
                return f"input {self.name} removed"
            return f"input {self.name} changed (tree {self.old[:12]} -> {self.new[:12]})"
        return f"output changed: {self.old} -> {self.new}"


def fingerprint(manifest: Manifest) -> str:
    return hexdigest(to_json(manifest))


def _short(value: Any) -> str:
    text = to_json(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


_MISSING = object()


def _dict_changes(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    found = []
    for name in sorted(old.keys() | new.keys()):
        a = old.get(name, _MISSING)
        b = new.get(name, _MISSING)
        if a is _MISSING or b is _MISSING or to_json(a) != to_json(b):
            found.append(
                Change(
                    kind=kind,
                    name=name,
                    old=None if a is _MISSING else a,
                    new=None if b is _MISSING else b,
                )
            )
    return found


def changes(old: Manifest, new: Manifest) -> list[Change]:
    """What differs from ``old`` to ``new``: parameters first, then code, inputs, output."""
    found = _dict_changes("params", old.params, new.params)
    found += _dict_changes("code", old.code, new.code)
    found += _dict_changes("inputs", old.inputs, new.inputs)
    if old.output != new.output:
        found.append(Change(kind="output", name="output", old=old.output, new=new.output))
    return found


def distance(old: Manifest, new: Manifest) -> tuple[int, int, int]:
    """How far apart two manifests of a family are; the nearest explains a re-run best."""
    found = changes(old, new)
    return (
        sum(c.kind == "params" for c in found),
        sum(c.kind == "inputs" for c in found),
        len(found),
    )
