"""What every command needs: the config, the store, the author, the repo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.config import Config, load_config
from datamon.core.model import Author
from datamon.errors import ConfigError


@dataclass
class AppContext:
    debug: bool = False
    store_override: str | None = None
    # Whether this command may make the store if there is none (creating a repo, building
    # a pipeline, which creates its output repos); the others only read one.
    may_create: bool = False
    _config: Config | None = None
    _store: Store | None = None
    _announced: bool = field(default=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config()
        return self._config

    def announce(self) -> None:
        """Say which config file is used, on stderr, as Datamon did."""
        if not self._announced and self.config.path and self.config.path.exists():
            click.echo(f"Using config file: {self.config.path}", err=True)
        self._announced = True

    @property
    def store(self) -> Store:
        if self._store is None:
            self.announce()
            cfg = self.config
            meta = self.store_override or cfg.metadata_location
            blob = self.store_override or cfg.blob_location
            self._store = Store.open(meta, blob, cfg.store_options(meta), create=self.may_create)
        return self._store

    @property
    def author(self) -> Author:
        cfg = self.config
        if not cfg.name or not cfg.email:
            raise ConfigError(
                "no author configured: run `datamon config create --name NAME --email EMAIL`"
            )
        return Author(cfg.name, cfg.email)

    def repo(self, name: str) -> Repository:
        return Repository(self.store, name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def app(ctx: click.Context) -> AppContext:
    obj: Any = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


pass_app = click.make_pass_decorator(AppContext)
