"""The `routespace` command: a thin layer over the Python API."""
