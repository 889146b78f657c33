"""The user's configuration file (``~/.datamon/datamon.yaml``) and the local state folders."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from datamon.errors import ConfigError

CONFIG_ENV = "DATAMON_CONFIG"
STORE_ENV = "DATAMON_STORE"
CACHE_ENV = "DATAMON_CACHE_DIR"


def config_path() -> Path:
    """``$DATAMON_CONFIG``, or ``~/.datamon/datamon.yaml``."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path.home() / ".datamon" / "datamon.yaml"


def default_store() -> str:
    return str(Path.home() / ".datamon" / "store")


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("datamon"))


@dataclass
class Config:
    """Who writes bundles, and where the store is.

    ``store`` is one location for everything; ``metadata`` and ``blob`` split it
    as Datamon's metadata and blob buckets did. ``options`` are passed to the
    object-store client (endpoint, region, ...).
    """

    name: str = ""
    email: str = ""
    credential: str = ""
    store: str = ""
    metadata: str = ""
    blob: str = ""
    options: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def metadata_location(self) -> str:
        return os.environ.get(STORE_ENV) or self.metadata or self.store or default_store()

    @property
    def blob_location(self) -> str:
        if os.environ.get(STORE_ENV):
            return os.environ[STORE_ENV]
        return self.blob or self.store or self.metadata or default_store()

    def to_yaml(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "path" and v}
        return yaml.safe_dump(data, sort_keys=False)

    def save(self, path: Path | None = None) -> Path:
        target = path or self.path or config_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(self.to_yaml())
        os.replace(tmp, target)
        self.path = target
        return target


_FIELDS = {"name", "email", "credential", "store", "metadata", "blob", "options"}


def load_config(path: Path | None = None) -> Config:
    """The configuration at ``path`` (default :func:`config_path`); empty if there is none."""
    target = path or config_path()
    if not target.exists():
        return Config(path=target)
    try:
        data: Any = yaml.safe_load(target.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {target}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {target} is not a mapping")
    unknown = set(data) - _FIELDS
    if unknown:
        raise ConfigError(f"config file {target} has unknown keys: {', '.join(sorted(unknown))}")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"config file {target}: options must be a mapping")
    values = {k: str(v) for k, v in data.items() if k != "options" and v is not None}
    return Config(**values, options={str(k): str(v) for k, v in options.items()}, path=target)
