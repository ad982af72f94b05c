"""The installed package's version, for manifests and the API."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("rpe-pad")
    except PackageNotFoundError:
        return "unknown (not installed)"
