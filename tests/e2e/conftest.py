"""Fixtures of the end-to-end tests; the runner and helpers live in :mod:`support`."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import Datamon, make_tree

# fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def datamon(tmp_path: Path) -> Datamon:
    """A runner with a fresh HOME, cache and working folder; nothing configured yet."""
    return Datamon.at(tmp_path / "user")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")
