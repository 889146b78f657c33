"""The ``datamon`` entry point's process-wide settings."""

from __future__ import annotations

import gc

import pytest

import datamon.cli as cli_module


def test_main_sweeps_young_objects_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_threshold()
    monkeypatch.setattr(cli_module, "run", lambda _group: 0)
    try:
        with pytest.raises(SystemExit) as info:
            cli_module.main()
        assert info.value.code == 0
        # Re-uploading 50,000 unchanged files holds ~250,000 tracked objects: no sweep.
        assert gc.get_threshold()[0] == cli_module.GC_YOUNG >= 1_000_000
    finally:
        gc.set_threshold(*before)
