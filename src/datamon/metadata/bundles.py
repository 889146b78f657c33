"""Bundle objects: immutable JSON records whose id is derived from their bytes."""

from __future__ import annotations

from collections.abc import Iterable

from datamon.core.codecs import load_versioned, to_json
from datamon.core.ids import BUNDLE_ID_BYTES, bundle_id, is_hex
from datamon.core.model import FORMAT_VERSION, Bundle
from datamon.errors import (
    AmbiguousId,
    BundleNotFound,
    ChecksumMismatch,
    ObjectNotFound,
)
from datamon.metadata.layout import bundle_key, bundles_prefix
from datamon.storage.base import Backend


class BundleStore:
    def __init__(self, meta: Backend) -> None:
        self.meta = meta

    def put(self, bundle: Bundle) -> str:
        data = to_json(bundle)
        bid = bundle_id(data)
        self.meta.put_if_absent(bundle_key(bundle.repo, bid), data)
        return bid

    def delete(self, repo: str, bid: str) -> None:
        self.meta.delete(bundle_key(repo, bid))

    def get(self, repo: str, bid: str) -> Bundle:
        key = bundle_key(repo, bid)
        try:
            data = self.meta.get(key)
        except ObjectNotFound:
            raise BundleNotFound(bid, f"repo {repo}") from None
        actual = bundle_id(data)
        if actual != bid:
            raise ChecksumMismatch(key, bid, actual)
        return load_versioned(key, data, Bundle, FORMAT_VERSION, binary=False)

    def ids(self, repo: str) -> list[str]:
        prefix = bundles_prefix(repo)
        return sorted(
            k[len(prefix) : -len(".json")] for k in self.meta.list(prefix) if k.endswith(".json")
        )

    def exists(self, repo: str, bid: str) -> bool:
        return self.meta.exists(bundle_key(repo, bid))

    def resolve(self, repo: str, prefix: str) -> str:
        """The stored bundle id that ``prefix`` abbreviates; errors if none or several match."""
        return pick_id(prefix, self.ids(repo), f"repo {repo}")

    def all(self, repo: str) -> list[tuple[str, Bundle]]:
        """Every bundle of the repo, oldest first."""
        found = [(bid, self.get(repo, bid)) for bid in self.ids(repo)]
        found.sort(key=lambda item: (item[1].timestamp, item[0]))
        return found


def pick_id(prefix: str, candidates: Iterable[str], where: str) -> str:
    """The one id among ``candidates`` that ``prefix`` (any case, spaces trimmed) starts."""
    text = prefix.strip().lower()
    if not text or not is_hex(text) or len(text) > 2 * BUNDLE_ID_BYTES:
        raise BundleNotFound(prefix, where)
    matches = sorted(bid for bid in candidates if bid.startswith(text))
    if text in matches:
        return text
    if not matches:
        raise BundleNotFound(prefix, where)
    if len(matches) > 1:
        raise AmbiguousId(prefix, matches)
    return matches[0]
