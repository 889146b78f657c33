"""The architecture test: layers import only downward (DESIGN §4), and the public facade."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import datamon
from datamon.testing.layers import (
    ANYTHING,
    LAYERS,
    UnknownModule,
    imports_of,
    layer_of,
    module_name,
    violations,
)

SRC = Path(datamon.__file__).resolve().parent.parent

PUBLIC_API = [
    "Author",
    "Bundle",
    "Change",
    "DatamonError",
    "FileInfo",
    "Ref",
    "Repository",
    "Store",
    "UploadOptions",
    "UploadResult",
    "VerifyReport",
    "open",
    "repo",
]


def test_every_import_points_downward() -> None:
    found = [str(v) for v in violations(SRC)]
    assert found == [], "upward imports:\n" + "\n".join(found)


def test_every_module_has_a_layer() -> None:
    modules = [module_name(p, SRC) for p in sorted((SRC / "datamon").rglob("*.py"))]
    assert "datamon.api.repository" in modules
    unknown = []
    for module in modules:
        try:
            layer_of(module)
        except UnknownModule:
            unknown.append(module)
    assert unknown == [], f"add these to datamon.testing.layers.LAYERS: {unknown}"


@pytest.mark.parametrize(
    ("module", "level"),
    [
        ("datamon", 4),
        ("datamon.errors", 0),
        ("datamon.core.codecs", 0),
        ("datamon.storage.local", 1),
        ("datamon.cafs.reader", 2),
        ("datamon.metadata.refs", 2),
        ("datamon.api.repository", 3),
        ("datamon.config", 3),
        ("datamon.fs.spec", 4),
        ("datamon.pipeline.task", 4),
        ("datamon.cli.main", 5),
        ("datamon.contrib.luigi", 5),
        ("datamon.server.app", 5),
        ("datamon.testing.workloads", ANYTHING),
    ],
)
def test_layer_table(module: str, level: int) -> None:
    assert layer_of(module) == level


def test_unknown_module() -> None:
    with pytest.raises(UnknownModule):
        layer_of("datamon.mystery")


def test_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "datamon" / "storage"
    pkg.mkdir(parents=True)
    (tmp_path / "datamon" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(
        "import os\n"
        "import datamon.errors\n"
        "from datamon.core import ids\n"
        "from . import local\n"
        "from ..api import store\n"
        "def lazy() -> None:\n"
        "    import datamon.cli.main\n"
        "    from datamon.metadata.refs import RefStore\n"
        "class K:\n"
        "    def m(self) -> None:\n"
        "        if True:\n"
        "            from datamon import api\n"
    )
    (pkg / "local.py").write_text("")
    found = {(v.imported, v.where.split(":")[1]) for v in violations(tmp_path)}
    assert found == {
        ("datamon.api", "5"),
        ("datamon.api.store", "5"),
        ("datamon.cli.main", "7"),
        ("datamon.metadata.refs", "8"),
        ("datamon.metadata.refs.RefStore", "8"),
        ("datamon", "12"),  # the facade is L4
        ("datamon.api", "12"),
    }
    imported = {i.module for i in imports_of(pkg / "bad.py", "datamon.storage.bad")}
    assert {"os", "datamon.errors", "datamon.core.ids", "datamon.storage.local"} <= imported


def test_checker_flags_unlisted_subpackages(tmp_path: Path) -> None:
    (tmp_path / "datamon" / "mystery").mkdir(parents=True)
    (tmp_path / "datamon" / "mystery" / "__init__.py").write_text("")
    with pytest.raises(UnknownModule):
        list(violations(tmp_path))


def test_facade_names_are_not_modules(tmp_path: Path) -> None:
    (tmp_path / "datamon" / "core").mkdir(parents=True)
    (tmp_path / "datamon" / "core" / "x.py").write_text("from datamon import Store\n")
    # ``datamon`` (the facade, L4) imported from L0 is upward.
    assert [v.imported for v in violations(tmp_path)] == ["datamon"]


def test_storage_imports_only_errors() -> None:
    # DESIGN §4: L1 "imports only errors" from Datamon.
    for path in sorted((SRC / "datamon" / "storage").glob("*.py")):
        module = module_name(path, SRC)
        for imp in imports_of(path, module):
            if imp.module.startswith("datamon.") and not imp.module.startswith(
                ("datamon.errors", "datamon.storage")
            ):
                pytest.fail(f"{path.name}:{imp.line} imports {imp.module}")


def test_core_does_no_io() -> None:
    # L0 is pure: no file, network or process modules.
    forbidden = {"os", "io", "socket", "subprocess", "pathlib", "shutil", "sqlite3", "obstore"}
    for path in [*sorted((SRC / "datamon" / "core").glob("*.py")), SRC / "datamon/errors.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & forbidden, f"{path.name}:{node.lineno} imports {names}"


def test_layer_table_matches_design() -> None:
    assert {name for name, level in LAYERS.items() if level == 0} == {
        "datamon.errors",
        "datamon.core",
    }
    assert LAYERS["datamon.storage"] == 1
    assert LAYERS["datamon.cafs"] == LAYERS["datamon.metadata"] == 2
    assert LAYERS["datamon.api"] == LAYERS["datamon.config"] == 3


def test_public_api_is_sorted_and_frozen() -> None:
    assert datamon.__all__ == sorted(datamon.__all__)
    assert datamon.__all__ == PUBLIC_API
    for name in datamon.__all__:
        assert getattr(datamon, name) is not None
    assert isinstance(datamon.__version__, str)
