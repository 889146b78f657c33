"""Bridges to other tools (layer 5): :mod:`datamon.contrib.luigi` for luigi pipelines."""
