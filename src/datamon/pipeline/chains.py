"""Chains: the Datanectar layout ``chains/<type>/<name>_chain.py``, discovered at run time.

Every ``*_chain.py`` file directly inside a *type* folder of the chains root is a chain
called ``<type>/<name>``; its tasks are the :class:`~datamon.pipeline.Task` subclasses
whose names end in ``Task`` and that the module itself defines (a task imported from
another chain or module is not listed twice). Datanectar's known bugs are fixed here:

- the suffix is removed with :meth:`str.removesuffix`, not ``rstrip("_chain.py")``, which
  strips any trailing run of those *characters* (``catch_chain.py`` became ``ca``);
- imported classes are not mistaken for the chain's own tasks;
- a chain file that fails to import is reported with its error, and the other chains
  still load.

A chain module is imported under its package path ``<root name>.<type>.<name>_chain``
with the root's parent folder on ``sys.path``, so that process and Dask workers can
import its tasks by name like any other task, and so that code fingerprints cover the
chain's folder. The chains root's folder name and the type names must therefore be
Python identifiers.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from datamon.errors import InvalidArgument
from datamon.pipeline.params import MISSING, Parameter
from datamon.pipeline.task import Task

CHAIN_SUFFIX = "_chain.py"
TASK_SUFFIX = "Task"
DEFAULT_ROOT = "chains"


def chain_name(filename: str) -> str | None:
    """``hello_world_chain.py`` -> ``hello_world``; None for files that are not chains."""
    if not filename.endswith(CHAIN_SUFFIX):
        return None
    name = filename.removesuffix(CHAIN_SUFFIX)
    return name or None


@dataclass
class Chain:
    kind: str
    """The chain's type: the folder it is in."""
    name: str
    path: Path
    module: str
    tasks: dict[str, type[Task]] = field(default_factory=dict)
    error: str | None = None
    """The import error (one line) of a chain that failed to load."""
    traceback: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: the chain, its tasks and their parameters."""
        return {
            "chain": self.ref,
            "type": self.kind,
            "name": self.name,
            "path": str(self.path),
            "module": self.module,
            "error": self.error,
            "tasks": [
                {
                    "name": name,
                    "ref": f"{self.ref}/{name}",
                    "family": cls.family(),
                    "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                    "params": {p: describe_param(param) for p, param in cls.parameters().items()},
                }
                for name, cls in self.tasks.items()
            ],
        }


def describe_param(param: Parameter[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"type": param.type_name, "significant": param.significant}
    if param.default is not MISSING:
        found["default"] = param.default
    if param.description:
        found["description"] = param.description
    return found


def discover(root: str | Path = DEFAULT_ROOT) -> list[Chain]:
    """Every chain under ``root``, sorted by type and name, each imported (or its error)."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise InvalidArgument(f"no chains folder at {root} (use --chains DIR)")
    chains = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if folder.name.startswith((".", "_")):
            continue
        for path in sorted(folder.glob(f"*{CHAIN_SUFFIX}")):
            name = chain_name(path.name)
            if name is None or not path.is_file():
                continue
            chains.append(_load(base, folder.name, name, path))
    return chains


def find_task(root: str | Path, ref: str) -> type[Task]:
    """The task class named ``<type>/<chain>/<Task>``, with clear errors for each part."""
    parts = ref.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidArgument(f"name a chain task as <type>/<chain>/<Task>, not {ref!r}")
    kind, name, task = parts
    chains = discover(root)
    found = [c for c in chains if c.kind == kind and c.name == name]
    if not found:
        known = ", ".join(c.ref for c in chains) or "none"
        raise InvalidArgument(f"no chain {kind}/{name} under {root} (chains: {known})")
    chain = found[0]
    if chain.error is not None:
        raise InvalidArgument(f"chain {chain.ref} failed to import: {chain.error}")
    if task not in chain.tasks:
        known = ", ".join(chain.tasks) or "none"
        raise InvalidArgument(f"chain {chain.ref} has no task {task!r} (tasks: {known})")
    return chain.tasks[task]


def _load(base: Path, kind: str, name: str, path: Path) -> Chain:
    module_name = f"{base.name}.{kind}.{path.stem}"
    chain = Chain(kind=kind, name=name, path=path, module=module_name)
    bad = [part for part in (base.name, kind, path.stem) if not part.isidentifier()]
    if bad:
        chain.error = f"not importable: {bad[0]!r} is not a Python identifier"
        return chain
    try:
        module = _import(base, module_name, path)
    except (Exception, SystemExit) as exc:
        chain.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        chain.traceback = "".join(traceback.format_exception(exc))
        return chain
    chain.tasks = chain_tasks(module)
    return chain


def chain_tasks(module: ModuleType) -> dict[str, type[Task]]:
    """The ``*Task`` classes that ``module`` itself defines, in definition order."""
    return {
        attr: value
        for attr, value in defined_tasks(module).items()
        if value.__name__ == attr and attr.endswith(TASK_SUFFIX) and attr != TASK_SUFFIX
    }


def defined_tasks(module: ModuleType) -> dict[str, type[Task]]:
    """The :class:`Task` classes ``module`` itself defines (not those it imports), by the
    name it holds each under, in definition order."""
    return {
        attr: value
        for attr, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, Task)
        and value.__module__ == module.__name__
    }


def _import(base: Path, module_name: str, path: Path) -> ModuleType:
    parent = str(base.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    _forget_other(module_name, path)
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _forget_other(module_name: str, path: Path) -> None:
    """Drop modules of the same dotted name loaded from another chains root."""
    parts = module_name.split(".")
    expected = [path.parent.parent, path.parent]
    existing = sys.modules.get(module_name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path:
        del sys.modules[module_name]
    for depth, folder in enumerate(expected, start=1):
        name = ".".join(parts[:depth])
        package = sys.modules.get(name)
        if package is None:
            continue
        paths = [Path(p).resolve() for p in getattr(package, "__path__", [])]
        if folder not in paths:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]
