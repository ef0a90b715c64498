"""The `lam` CLI, typed configs, the pipeline driver and launchers."""
