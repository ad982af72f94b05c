"""Issue 22, session 36: put the fold models of ``issue22_kfold_fit.py`` into a copy of a built
bundle's work folder where the product's splats stage keeps them (``training.splats.fold_paths``,
with the keys it writes), so that ``rpe-pad train ... --stages splats,calibration,bundle`` reuses
the shipped fit, the fold models and the pose stages, and recalibrates on every fold.

    python docs/results/issue22_kfold_stage.py FOLDS_DIR WORK_DIR CATEGORY_DIR
"""
import json
import shutil
import sys
from pathlib import Path

from models.bundle import WORK_FILES
from models.data import load_category
from training.splats import SplatConfig, calibration_key, fold_offsets, fold_paths

EVERY = 5


def main(folds: Path, work: Path, category_dir: Path) -> None:
    cfg = SplatConfig(**json.loads((work / WORK_FILES["splats_config"]).read_text()))
    category = load_category(category_dir, size=cfg.image_size, load_test=False)
    for offset in fold_offsets(EVERY, EVERY)[1:]:
        fitted = json.loads((folds / f"fold{offset}.json").read_text())["views"]
        key = calibration_key(category, cfg, EVERY, offset)
        if fitted != key["views"]:
            raise SystemExit(f"fold {offset}: its model saw other views than the product's fold would")
        path, key_path = fold_paths(work, EVERY, offset)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folds / f"fold{offset}.safetensors", path)
        key_path.write_text(json.dumps(key, indent=2) + "\n")
        print("fold", offset, "->", path, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
