"""The code identity of a task: its module's source and the project-local modules it imports.

A module is *project-local* when its file lies under the task module's top folder (the
``sys.path`` entry its top-level package was found in) and not in the standard library or
an installed package. Imports are read from the source (:mod:`ast`), transitively, so an
import inside a function counts too. Files are hashed as they are on disk at plan time.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import site
import sys
import sysconfig
import threading
from pathlib import Path

from datamon.core.ids import hexdigest
from datamon.errors import TaskDefinitionError

_PARSE_LOCK = threading.Lock()
"""CPython 3.11's ast.parse is not safe to call from two threads at once."""

PINNED = "code_version"
"""The single key of a code manifest whose task pins ``code_version``."""


def _foreign_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    with contextlib.suppress(AttributeError):
        roots.update(site.getsitepackages())
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user:
        roots.add(user)
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    found = getattr(module, "__file__", None) if module is not None else None
    if found is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            return None
        found = spec.origin if spec is not None and spec.has_location else None
    if not found or not found.endswith(".py"):
        return None
    return os.path.realpath(found)


def top_folder(module: str, file: str) -> str:
    """The folder that holds the top-level package of ``module`` (whose file is ``file``)."""
    depth = module.count(".") + (1 if os.path.basename(file) == "__init__.py" else 0)
    folder = os.path.dirname(file)
    for _ in range(depth):
        folder = os.path.dirname(folder)
    return folder


def _imports(name: str, file: str, source: bytes) -> set[str]:
    try:
        with _PARSE_LOCK:
            tree = ast.parse(source, filename=file)
    except SyntaxError:
        return set()
    is_package = os.path.basename(file) == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            if not base:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


class CodeHasher:
    """Hashes modules once per build: ``files(module)`` maps relative paths to BLAKE3 hex."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | None], dict[str, str]] = {}
        self._foreign = _foreign_roots()
        self._packages: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def files(self, module: str, file: str | None = None) -> dict[str, str]:
        """The hashes of ``module``'s file (``file`` if given) and of the local modules it
        imports, by path relative to the folder of its top-level package."""
        key = (module, file)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._walk(module, file)
            return dict(self._cache[key])

    def _local(self, path: str, top: str) -> bool:
        if not path.startswith(top + os.sep):
            return False
        if any(path.startswith(root) for root in self._foreign):
            return False
        parts = Path(path).parts
        return "site-packages" not in parts and "dist-packages" not in parts

    def _foreign_package(self, name: str, top: str) -> bool:
        """Whether a top-level package is installed or built in, so nothing below is local."""
        key = (name, top)
        if key not in self._packages:
            if name in sys.builtin_module_names:
                self._packages[key] = True
            else:
                path = _module_file(name)
                self._packages[key] = path is not None and not self._local(path, top)
        return self._packages[key]

    def _walk(self, module: str, file: str | None = None) -> dict[str, str]:
        first = file or _module_file(module)
        if first is None:
            raise TaskDefinitionError(
                f"cannot read the source of module {module}: "
                "define the task in a .py file or pin its code_version"
            )
        top = top_folder(module, first)
        result: dict[str, str] = {}
        seen: set[str] = set()
        todo = [(module, first)]
        while todo:
            name, file = todo.pop()
            rel = os.path.relpath(file, top).replace(os.sep, "/")
            if rel in result:
                continue
            try:
                source = Path(file).read_bytes()
            except OSError as exc:
                raise TaskDefinitionError(f"cannot read {file}: {exc.strerror}") from None
            result[rel] = hexdigest(source)
            for imported in sorted(_imports(name, file, source)):
                if imported in seen:
                    continue
                seen.add(imported)
                if self._foreign_package(imported.partition(".")[0], top):
                    continue
                path = _module_file(imported)
                if path is not None and self._local(path, top):
                    todo.append((imported, path))
        return result


def code_manifest(task_class: type, hasher: CodeHasher) -> dict[str, str]:
    """What the fingerprint records of a task's code: file hashes, or its pinned version."""
    pinned = getattr(task_class, PINNED, None)
    if pinned is not None:
        return {PINNED: str(pinned)}
    # A task of the script run as the program: its own file, by the name it is imported
    # by (or, if it has none, under the program's name).
    name = module_name(task_class)
    file = defining_file(task_class) if name in _PROGRAM else None
    return hasher.files(name, file)


_PROGRAM = ("__main__", "__mp_main__")


def defining_file(cls: type) -> str | None:
    """The file ``cls`` was defined in, from the code of its own functions (the program's
    ``__main__`` module may be a runner such as ``cProfile``, not the script); None if it
    defines none."""
    for value in vars(cls).values():
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        filename = getattr(code, "co_filename", None)
        if isinstance(filename, str) and filename.endswith(".py"):
            return os.path.realpath(filename)
    program = sys.modules.get(cls.__module__)
    path = getattr(program, "__file__", None)
    return os.path.realpath(path) if isinstance(path, str) else None


def module_name(cls: type) -> str:
    """The name ``cls``'s module is imported by (worked out once a class: a task's family
    is asked for at every hash and comparison). A script run as the program is module
    ``__main__``: it is named as ``datamon run start`` would import it instead, by the name
    ``python -m`` was given or by its file's name, when importing that name finds that very
    file. A task then has one identity (and one fingerprint) whichever way its build is
    started, and a worker process can import it by name."""
    name = cls.__module__
    if name not in _PROGRAM:
        return name
    known = _NAMES.get(cls)
    if known is None:
        known = _NAMES[cls] = _program_module_name(cls, name)
    return known


# The module names of the program's classes, worked out.
_NAMES: dict[type, str] = {}


def _program_module_name(cls: type, name: str) -> str:
    path = defining_file(cls)
    if path is None:
        return name
    spec = getattr(sys.modules.get(name), "__spec__", None)
    candidates = [str(spec.name)] if spec is not None and spec.name else []
    candidates.append(Path(path).stem)
    for candidate in candidates:
        if candidate not in _PROGRAM and _module_file(candidate) == path:
            return candidate
    return name
