"""The one registry of names: pose modes, training presets and the cameras of `prepare`.

Every name a user can type (a CLI choice, an ``RPEPAD_*`` setting, a bundle's
``inference.pose``) and every docs table comes from here; tests check the CLI and the
service settings against it. Reading a name imports nothing heavy: an entry points at its
implementation by a ``"module:attribute"`` path, resolved only when used (``resolve``).

Pose modes are the product's two (``PRODUCT``) plus the evaluation-only ones that the lab
package registers when it is imported (``lab/modes.py``: ``oracle``, ``retrieval``,
``iterative``): the product never imports the lab, so a service or ``rpe-pad inspect``
cannot be given a lab mode.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    help: str  # one line, shown by the CLI and in docs tables
    target: str  # "module:attribute" of the implementation
    lab: bool = False  # evaluation-only: registered by the lab package, refused by the product


POSE_MODES: dict[str, Entry] = {}
DEFAULT_POSE = "rpe+refine"

PRESETS: dict[str, str] = {  # training presets (training/splats.py, training/irprn.py read these names)
    "demo": "minutes on a CPU: a coarse model for `make demo` and tests",
    "cpu": "the CPU build of a real bundle (35-75 min for Lego on 2 cores, by the day's machine speed)",
    "paper": "the paper's settings (GPU)",
}

DEVICES: dict[str, str] = {  # `--device` of train, selfcheck, inspect and serve (models.inspector.resolve_device)
    "auto": "CUDA when present (gsplat, ONNX Runtime's CUDA provider), else the CPU",
    "cuda": "CUDA, refused where torch sees no GPU",
    "cpu": "the CPU (our rasterizer), e.g. where gsplat's kernels cannot be built",
}

CAMERA_MODELS: dict[str, str] = {  # `rpe-pad prepare --camera-model` (COLMAP's names; training/prepare/sfm.py)
    "SIMPLE_RADIAL": "one focal length and one radial term: a real lens (default)",
    "SIMPLE_PINHOLE": "one focal length, no distortion: renders, or photos already undistorted",
    "RADIAL": "one focal length and two radial terms: a wide-angle lens",
}


def register_pose_mode(name: str, help: str, target: str, lab: bool = False) -> Entry:
    """Add a pose mode (the lab adds its own with ``lab=True``); a name is registered once."""
    entry = Entry(name, help, target, lab)
    if POSE_MODES.get(name, entry) != entry:
        raise ValueError(f"pose mode {name!r} is registered already")
    POSE_MODES[name] = entry
    return entry


def pose_modes(lab: bool = False) -> tuple[str, ...]:
    """The product's pose modes, and with ``lab`` the evaluation-only ones registered so far."""
    return tuple(n for n, e in POSE_MODES.items() if lab or not e.lab)


def pose_mode(name: str, lab: bool = False) -> Entry:
    """The entry of ``name``; ``ValueError`` naming the choices when it is unknown (or lab-only
    where the product asks)."""
    entry = POSE_MODES.get(name)
    if entry is None or (entry.lab and not lab):
        raise ValueError(f"pose mode {name!r} is not available; available: {list(pose_modes(lab))}")
    return entry


def resolve(entry: Entry):
    """The implementation an entry points at."""
    module, attr = entry.target.split(":")
    return getattr(importlib.import_module(module), attr)


register_pose_mode("rpe+refine", "IRPRN's pose, then gallery PnP, a depth-warp polish and a guarded ECC warp "
                   "(the default: docs/REFINE.md)", "models.inspector:RefinedPose")
register_pose_mode("rpe", "IRPRN's one-shot pose from the gallery matches, no refinement (faster, "
                   "about 3 px off on Lego)", "models.inspector:RpePose")
