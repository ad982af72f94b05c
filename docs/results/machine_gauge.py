"""How fast this machine runs today, for a build time measured on a day it runs slow or fast: the `cpu`
preset's Gaussian fit of Lego with SH degree 1 (the preset before session 39), on all 60 training views, no view
withheld. The fit is deterministic (53 390 Gaussians each run), so its time is comparable across sessions:
311.4 s in session 38 (``issue22_sh_specular.py``'s ``sh1``, the same fit, on the day the SH-3 folds' stage took
1686 s).

    PYTHONPATH=.:docs/results python docs/results/machine_gauge.py ../shared/data/Lego OUT_DIR
"""
import json
import sys
import time
from pathlib import Path

import torch

from models.data import load_category
from training.splats import fit_splats, preset


def main(category_dir: Path, out: Path) -> None:
    cfg = preset("cpu", sh_degree=1, sh_degree_interval=1000)
    category = load_category(category_dir, size=cfg.image_size, load_test=False)
    t0 = time.time()
    scene = fit_splats(category, cfg, out / "sh1", progress=False, device=torch.device("cpu")).scene
    row = {"seconds": round(time.time() - t0, 1), "gaussians": scene.num_gaussians}
    print(json.dumps(row), flush=True)
    (out / "machine_gauge.json").write_text(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
