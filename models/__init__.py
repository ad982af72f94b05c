"""The shared core: pure torch/numpy modules imported by `training` and `service`.

Nothing in here imports `training`, `service` or the CLI; see docs/ARCHITECTURE.md.
"""
