"""Repos: named datasets, each a ``repo.json`` created exactly once."""

from __future__ import annotations

from datetime import UTC, datetime

from datamon.core.codecs import load_versioned, to_json
from datamon.core.model import FORMAT_VERSION, Author, Repo
from datamon.errors import ObjectNotFound, RepoExists, RepoNotFound
from datamon.metadata.layout import REPOS, check_name, repo_key
from datamon.storage.base import Backend


class RepoStore:
    def __init__(self, meta: Backend) -> None:
        self.meta = meta

    def create(self, name: str, description: str, author: Author) -> Repo:
        repo = Repo(
            format=FORMAT_VERSION,
            name=check_name("repo", name),
            description=description,
            created=datetime.now(UTC),
            author=author,
        )
        if not self.meta.put_if_absent(repo_key(name), to_json(repo)):
            raise RepoExists(name)
        return repo

    def get(self, name: str) -> Repo:
        key = repo_key(check_name("repo", name))
        try:
            data = self.meta.get(key)
        except ObjectNotFound:
            raise RepoNotFound(name) from None
        return load_versioned(key, data, Repo, FORMAT_VERSION, binary=False)

    def all(self) -> list[Repo]:
        names = sorted(
            k[len(REPOS) : -len(".json")]
            for k in self.meta.list(REPOS)
            if k.endswith(".json") and "/" not in k[len(REPOS) :]
        )
        return [self.get(n) for n in names]
