"""Issue 22, session 36: the calibration models of the other four folds of a built bundle.

The product's held-out calibration withholds one fold, every 5th training view from the 2nd
(``training.splats.holdout_indices``), for the first 80 % of the splats fit and keeps the model
at that step. A 5-fold calibration needs that model for each fold: the same fit (the work
folder's own ``SplatConfig``, the same seed) withholding every 5th view from the 0th, 1st, 3rd
and 4th, stopped where it is saved (``fit_splats(..., until_snapshot=True)``). Each is written
to ``OUT_DIR/fold<offset>.safetensors`` with the names of the views it saw (``.json``); a fold
already there is skipped. The product's fold is copied as ``fold2``. (The product's splats stage
now does the same into the work folder, ``training.splats.fit_folds``; this driver made the
session's figures and stays as it ran.)

    python docs/results/issue22_kfold_fit.py WORK_DIR CATEGORY_DIR OUT_DIR
"""
import json
import shutil
import sys
import time
from pathlib import Path

from models.bundle import WORK_FILES
from models.data import load_category
from training.splats import SplatConfig, fit_splats

EVERY = 5


def main(work: Path, category_dir: Path, out: Path) -> None:
    cfg = SplatConfig(**json.loads((work / WORK_FILES["splats_config"]).read_text()))
    category = load_category(category_dir, size=cfg.image_size, load_test=False)
    n = len(category.train)
    out.mkdir(parents=True, exist_ok=True)
    product = out / f"fold{EVERY // 2}.safetensors"
    if not product.exists():
        shutil.copy(work / WORK_FILES["calibration_scene"], product)
        fitted = json.loads((work / WORK_FILES["calibration_scene_key"]).read_text())["views"]
        product.with_suffix(".json").write_text(json.dumps({"views": fitted, "seconds_fit": None}, indent=1) + "\n")
    for offset in range(EVERY):
        path = out / f"fold{offset}.safetensors"
        if path.exists():
            continue
        withheld = list(range(offset, n, EVERY))
        t0 = time.perf_counter()
        fit_splats(category, cfg, out / f"fold{offset}_work", progress=False, withheld=withheld,
                   snapshot=path, until_snapshot=True)
        seconds = round(time.perf_counter() - t0, 1)
        shutil.rmtree(out / f"fold{offset}_work", ignore_errors=True)
        fitted = [v.name for i, v in enumerate(category.train) if i not in set(withheld)]
        path.with_suffix(".json").write_text(json.dumps({"views": fitted, "seconds_fit": seconds}, indent=1) + "\n")
        print(category.name, "fold", offset, "fitted in", seconds, "s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
