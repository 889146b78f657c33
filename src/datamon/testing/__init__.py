"""Test helpers shipped with Datamon: backend contract tests and service fixtures."""
