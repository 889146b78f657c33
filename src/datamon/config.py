"""The user's configuration file (``~/.datamon/datamon.yaml``) and the local state folders."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from datamon.errors import ConfigError

CONFIG_ENV = "DATAMON_CONFIG"
STORE_ENV = "DATAMON_STORE"
CACHE_ENV = "DATAMON_CACHE_DIR"
# A bucket name alone, without a scheme or a path: how the original Datamon's config file named
# its Google Cloud Storage buckets (``metadata: datamon-meta-data``).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


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
        metadata = bucket_location(self.metadata)
        return os.environ.get(STORE_ENV) or metadata or self.store or default_store()

    @property
    def blob_location(self) -> str:
        if os.environ.get(STORE_ENV):
            return os.environ[STORE_ENV]
        blob = bucket_location(self.blob)
        return blob or self.store or bucket_location(self.metadata) or default_store()

    def store_options(self, metadata: str) -> dict[str, str]:
        """The object-store options for a store whose metadata is at ``metadata``: the
        config's, with ``credential`` as the service-account file of a GCS store."""
        options = dict(self.options)
        if self.credential and metadata.startswith("gs://"):
            if not Path(self.credential).expanduser().is_file():
                raise ConfigError(
                    f"config file {self.path}: no credential file at {self.credential}"
                )
            options.setdefault("service_account", str(Path(self.credential).expanduser()))
        return options

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


def bucket_location(location: str) -> str:
    """``location``, or ``gs://NAME`` for a bare bucket name (lowercase letters, digits,
    ``.``, ``_`` and ``-``, no ``/``), as the original Datamon's ``metadata`` and ``blob``
    keys gave them. A local folder of such a name is written ``./NAME``."""
    return f"gs://{location}" if _BUCKET.fullmatch(location) else location


_FIELDS = {"name", "email", "credential", "store", "metadata", "blob", "options"}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several lines about a parse error, as one: what, and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def load_config(path: Path | None = None) -> Config:
    """The configuration at ``path`` (default :func:`config_path`); empty if there is none."""
    target = path or config_path()
    if not target.exists():
        return Config(path=target)
    try:
        data: Any = yaml.safe_load(target.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {target}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {target} is not valid YAML: {_yaml_problem(exc)}") from None
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
