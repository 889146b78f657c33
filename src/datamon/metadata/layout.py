"""Keys of metadata objects in the metadata location."""

from __future__ import annotations

import re

from datamon.core.ids import shard
from datamon.errors import InvalidName

CONFIG = "config.json"
PROBE = "probe/conditional-write"
REPOS = "repos/"
TREES = "trees/"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name or ".tmp-" in name or name.endswith(".lock"):
        raise InvalidName(
            kind,
            name,
            "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def repo_key(repo: str) -> str:
    return f"{REPOS}{repo}.json"


def bundles_prefix(repo: str) -> str:
    return f"bundles/{repo}/"


def bundle_key(repo: str, bid: str) -> str:
    return f"{bundles_prefix(repo)}{bid}.json"


_REF_FOLDERS = {"label": "labels", "branch": "branches"}


def refs_prefix(repo: str, kind: str) -> str:
    return f"{_REF_FOLDERS[kind]}/{repo}/"


def ref_key(repo: str, kind: str, name: str) -> str:
    return f"{refs_prefix(repo, kind)}{name}.json"


# Where stores written before 2026-11-28 keep their branches, in format 1 all the same
# (design §2): read there when ``branches/`` lacks one, and copied over.
LEGACY_BRANCH_FOLDER = "branchs"


def legacy_branches_prefix(repo: str) -> str:
    return f"{LEGACY_BRANCH_FOLDER}/{repo}/"


def legacy_branch_key(repo: str, name: str) -> str:
    return f"{legacy_branches_prefix(repo)}{name}.json"


def tree_key(oid: str) -> str:
    return TREES + shard(oid)
