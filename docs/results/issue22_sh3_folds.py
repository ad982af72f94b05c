"""Issue 22, session 38: the `cpu` preset's splats stage with SH degree 3 (raised every 500 steps), its five
calibration folds included, for the painted-set comparison of docs/RESULTS.md (session 38, "SH degree 3 in the
`cpu` preset: the rule"). The work folder is the product's (``training.splats.run_splats_stage``, the preset's
five folds); its five calibration models are then written as ``OUT_DIR/fold<offset>.safetensors`` with the
views each saw (``.json``), the layout ``issue22_kfold_eval.py cache`` reads.

    PYTHONPATH=.:docs/results python docs/results/issue22_sh3_folds.py CATEGORY_DIR WORK_DIR OUT_DIR
"""
import json
import shutil
import sys
import time
from pathlib import Path

from models.data import load_category
from training.splats import fold_paths, preset, run_splats_stage

EVERY, FOLDS = 5, 5


def main(category_dir: Path, work: Path, out: Path) -> None:
    cfg = preset("cpu", sh_degree=3, sh_degree_interval=500)
    category = load_category(category_dir, size=cfg.image_size, load_test=True)
    t0 = time.time()
    report = run_splats_stage(category, cfg, work, progress=False, holdout_every=EVERY, folds=FOLDS)
    print(f"splats stage {time.time() - t0:.0f} s: PSNR {report.get('psnr_test_mean')} dB, "
          f"{report.get('num_gaussians')} Gaussians", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for offset in range(EVERY):
        model, key = fold_paths(work, EVERY, offset)
        shutil.copy(model, out / f"fold{offset}.safetensors")
        views = json.loads(key.read_text())["views"]
        (out / f"fold{offset}.json").write_text(json.dumps({"views": views}, indent=1) + "\n")
    print("folds written to", out, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
