"""Issue 22, session 18: split a category's training photographs into two categories of
symlinks, for a pose study on views no model saw: DST_fold (every photograph but the
calibration's held-out ones, every 5th from the 2nd, `training.splats.holdout_indices`) and
DST_held (those alone), both with the category's test split and ground truth linked in.

    python docs/results/issue22_split_heldout.py CATEGORY_DIR DST_PREFIX
    e.g. /tmp/seeds/synth_0 /tmp/seeds/synth_0   ->  /tmp/seeds/synth_0_fold, /tmp/seeds/synth_0_held
"""
import json
import os
import shutil
import sys
from pathlib import Path

from training.splats import holdout_indices

src, prefix = Path(sys.argv[1]).resolve(), sys.argv[2]
transforms = json.loads((src / "train" / "transforms.json").read_text())
held = set(holdout_indices(len(transforms["frames"]), 5))
for suffix, keep in (("_fold", lambda i: i not in held), ("_held", lambda i: i in held)):
    dst = Path(prefix + suffix)
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "train" / "good").mkdir(parents=True)
    for name in ("test", "ground_truth"):
        if (src / name).exists():
            os.symlink(src / name, dst / name)
    for extra in src.glob("*.json"):
        shutil.copy(extra, dst)
    frames = [f for i, f in enumerate(transforms["frames"]) if keep(i)]
    for f in frames:
        stem = Path(f["file_path"]).name
        os.symlink(src / "train" / "good" / f"{stem}.png", dst / "train" / "good" / f"{stem}.png")
    (dst / "train" / "transforms.json").write_text(json.dumps({**transforms, "frames": frames}))
    print(dst, len(frames), "photographs")
