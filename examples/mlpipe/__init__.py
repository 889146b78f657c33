"""A small machine-learning pipeline on Datamon bundles.

Ingest CSV, clean, build features, train a scikit-learn model, evaluate it.
"""
