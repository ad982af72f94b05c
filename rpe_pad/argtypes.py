"""Argument types shared by the product's CLI and the lab's (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def intrinsics(text: str) -> tuple[float, float, float, float]:
    """``FX,FY,CX,CY``: a camera's intrinsics in its own pixels."""
    from models.camera import parse_intrinsics

    try:
        return parse_intrinsics(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
