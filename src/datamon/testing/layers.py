"""The architecture's layers (docs/design.md, DESIGN §4) and a checker for import direction.

Every module of the ``datamon`` package belongs to one layer and may import only
modules of its own layer or lower ones, at module level or inside functions alike.
``datamon.testing`` is outside the layers (it may import anything), and the package
facade ``datamon/__init__.py`` may import the fs layer and below (``datamon.open``).

The checker reads source with :mod:`ast` and imports nothing, so it also sees
imports that only run inside functions (lazy imports of heavy dependencies).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ANYTHING = 99
"""The level of modules that may import every layer."""

FACADE_LEVEL = 4

LAYERS: dict[str, int] = {
    "datamon.errors": 0,
    "datamon.core": 0,
    "datamon.storage": 1,
    "datamon.cafs": 2,
    "datamon.metadata": 2,
    "datamon.api": 3,
    "datamon.config": 3,
    "datamon.fs": 4,
    "datamon.pipeline": 4,
    "datamon.cli": 5,
    "datamon.contrib": 5,
    "datamon.fuse": 5,
    "datamon.server": 5,
    "datamon.batteries": 5,
    "datamon.lfs": 5,
    "datamon.__main__": 5,
    "datamon.testing": ANYTHING,
}


class UnknownModule(LookupError):
    """A module of the package that no layer claims: add it to :data:`LAYERS`."""


def layer_of(module: str) -> int:
    """The layer of ``datamon.x.y``: that of its longest listed prefix."""
    if module == "datamon":
        return FACADE_LEVEL
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        level = LAYERS.get(".".join(parts[:end]))
        if level is not None:
            return level
    raise UnknownModule(module)


def module_name(path: Path, src: Path) -> str:
    """``src/datamon/api/store.py`` -> ``datamon.api.store``; packages drop ``__init__``."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Import:
    module: str
    line: int


def imports_of(path: Path, module: str) -> Iterator[Import]:
    """Every ``datamon`` module that the file imports, wherever the import statement is.

    ``from datamon.x import y`` yields ``datamon.x.y`` too, because ``y`` may be a module
    (the layer of ``datamon.x`` decides then); relative imports are resolved.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.module, node.level)
            yield Import(base, node.lineno)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(f"{base}.{alias.name}", node.lineno)


def _resolve(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, name] if name else package)


@dataclass(frozen=True)
class Violation:
    module: str
    level: int
    imported: str
    imported_level: int
    where: str

    def __str__(self) -> str:
        return (
            f"{self.where}: {self.module} (L{self.level}) imports {self.imported} "
            f"(L{self.imported_level})"
        )


def violations(src: Path) -> Iterator[Violation]:
    """Imports under ``src/datamon`` that point upward; UnknownModule for unlisted modules."""
    for path in sorted((src / "datamon").rglob("*.py")):
        module = module_name(path, src)
        level = layer_of(module)
        for imp in imports_of(path, module):
            if imp.module != "datamon" and not imp.module.startswith("datamon."):
                continue
            try:
                target = layer_of(imp.module)
            except UnknownModule:
                # ``from datamon import Store`` names a class, not a module: skip those.
                if _is_module(src, imp.module):
                    raise
                continue
            if target > level:
                where = f"{path.relative_to(src)}:{imp.line}"
                yield Violation(module, level, imp.module, target, where)


def _is_module(src: Path, module: str) -> bool:
    base = src.joinpath(*module.split("."))
    return base.is_dir() or base.with_suffix(".py").is_file()
