"""`rpe-pad lab validation-split`: new labelled queries of a synthetic category's own object.

A rule chosen on a category's test split is tuned to it. For a category made by `rpe-pad
synth`, this writes a *validation split*: the same object and training views, and new query
views drawn as the test split's are (random directions within the elevation range, random
roll, the same mix of good views and defect kinds), from a stream of random numbers of
their own, so no query repeats one of the test split. Settings are then chosen on it and
reported on the test split.

The object is rebuilt from the category's ``synth.json`` (its seed and arguments); the
rebuilt training cameras must equal the category's ``train/transforms.json``, which checks
that it is the same object. The output is a category folder named as the original (so
bundles and reports match it), with ``train`` linked to the original's, and its own
``test/``, ``ground_truth/`` and ``test/transforms.json``, written into a hidden sibling folder
and renamed into place when whole (a run that fails leaves nothing).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models import camera
from training.synth.generate import (CAMERA_ANGLE_X, SynthConfig, query_labels, ring_cameras, synth_object,
                                     write_queries, written_whole)

QUERY_STREAM = 2  # the validation queries' random numbers: default_rng([seed, QUERY_STREAM, split])


def _config(category_dir: Path) -> SynthConfig:
    path = category_dir / "synth.json"
    if not path.is_file():
        raise ValueError(f"{category_dir}: no synth.json, so not a category made by `rpe-pad synth`")
    saved = json.loads(path.read_text()).get("config", {})
    known = {f.name for f in fields(SynthConfig)}
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    return SynthConfig(**args)


def write_validation_split(category_dir: str | Path, out_root: str | Path, views: int = 40, split: int = 0,
                           progress: bool = True) -> Path:
    """Write ``out_root/<category name>``: the category's training views (linked) and ``views``
    new query views of its object (``split`` picks another stream). Returns the folder."""
    category_dir = Path(category_dir).resolve()
    cfg = _config(category_dir)
    out = Path(out_root) / category_dir.name
    if out.exists():
        raise FileExistsError(f"{out}: exists")
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    obj, rng = synth_object(cfg)  # the generator's own order: the object, then the training cameras
    train_poses = ring_cameras(cfg.train_views, cfg, rng)
    saved = json.loads((category_dir / "train" / "transforms.json").read_text())["frames"]
    saved_w2c = torch.stack([camera.opengl_c2w_to_opencv_w2c(torch.tensor(f["transform_matrix"], dtype=torch.float64))
                             for f in saved])
    if saved_w2c.shape != train_poses.shape or not torch.allclose(saved_w2c, train_poses.to(saved_w2c), atol=1e-6):
        raise ValueError(f"{category_dir}: its training cameras are not the ones its synth.json makes")

    K = camera.intrinsics_from_fov(CAMERA_ANGLE_X, cfg.size, cfg.size)
    qrng = np.random.default_rng([cfg.seed, QUERY_STREAM, split])
    with written_whole(out) as partial:
        os.symlink(category_dir / "train", partial / "train", target_is_directory=True)
        labels = query_labels(views)
        with tqdm(total=len(labels), desc=f"validation split {category_dir.name}", disable=not progress) as bar:
            frames = write_queries(partial, obj, K, cfg, qrng, labels, bar)
        (partial / "test" / "transforms.json").write_text(
            json.dumps({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, indent=2) + "\n")
        (partial / "synth.json").write_text(json.dumps(
            {**json.loads((category_dir / "synth.json").read_text()),
             "validation_split": {"of": str(category_dir), "views": views, "split": split,
                                  "query_stream": [cfg.seed, QUERY_STREAM, split]}}, indent=2) + "\n")
    return out
