"""Committing a tree as a new bundle on a branch, by compare-and-swap of the branch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from datamon.api.store import Store
from datamon.core.model import FORMAT_VERSION, Author, Bundle, Entry
from datamon.errors import InvalidArgument, RefConflict


@dataclass(frozen=True)
class CommitInfo:
    message: str
    author: Author
    branch: str
    label: str | None = None
    # The bundle the change started from, when it is not the branch head: a second parent.
    started_from: str | None = None


# Given the branch head's bundle (None for an empty branch): the root entry of the new tree
# and the packs the new bundle needs.
TreeBuilder = Callable[[Bundle | None], tuple[Entry, tuple[str, ...]]]


def check_texts(message: object, author: object) -> None:
    """InvalidArgument unless the message and the author's name and email are text a bundle
    can hold (UTF-8): anything else was written, and every later read of it failed."""
    name, email = getattr(author, "name", None), getattr(author, "email", None)
    for what, value in (("message", message), ("author name", name), ("author email", email)):
        if not isinstance(value, str):
            raise InvalidArgument(f"the {what} must be text, not {type(value).__name__}")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(f"the {what} is not valid Unicode text: {value!r}") from None


def commit(store: Store, repo: str, info: CommitInfo, build: TreeBuilder) -> tuple[str, Bundle]:
    """Write the bundle on top of the branch head and move the branch by compare-and-swap.

    Packs and trees must already be durable. If another writer moves the branch first, the
    tree is built again on the new head (``build`` decides what that means) and the bundle
    written again, so the branch history stays a chain.
    """
    check_texts(info.message, info.author)
    while True:
        current = store.refs.read(repo, "branch", info.branch)
        head = current[0].bundle if current else None
        top, packs = build(store.bundles.get(repo, head) if head else None)
        bundle = Bundle(
            format=FORMAT_VERSION,
            repo=repo,
            parents=tuple(dict.fromkeys(p for p in (head, info.started_from) if p)),
            message=info.message,
            author=info.author,
            timestamp=datetime.now(UTC),
            tree=top.tree.hex(),
            packs=packs,
            files=top.files,
            size=top.size,
            branch=info.branch,
        )
        bid = store.bundles.put(bundle)
        try:
            store.refs.move(repo, "branch", info.branch, bid, info.author.email, head)
        except RefConflict:
            now = store.refs.read(repo, "branch", info.branch)
            # A swap whose reply was lost may have landed: then the bundle is in the history.
            if now is None or all(move.bundle != bid for move in now[0].history):
                # Another writer moved the branch first: this bundle's parent is stale.
                store.bundles.delete(repo, bid)
                continue
        if info.label:
            store.refs.move(repo, "label", info.label, bid, info.author.email)
        return bid, bundle
