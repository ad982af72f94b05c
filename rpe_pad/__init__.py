"""Command-line entry point (`rpe-pad`): a thin layer over `training`, `service` and `models`."""

__version__ = "0.1.0"
