"""The verbs of Datamon over a store: the layer the CLI, fsspec and pipelines call."""
