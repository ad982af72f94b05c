"""Issue 22 on a GPU host: each named variant of `lab.fidelity_study` fitted, calibrated and
measured in turn (the self-check, and the test split at true poses at its own threshold), its
figures written as soon as they exist, so a run cut short keeps what finished; a variant that
fails is logged and the next one still runs.

    [FOLDS=1] python docs/results/gpu_issue22/measure.py CATEGORY_DIR ROOT OUT_DIR VARIANT[,VARIANT...]

FOLDS: the calibration's folds for every variant, where not the preset's five (1: no fit but
the variant's own, what a lent GPU's 15 minutes allow).
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

from lab.fidelity_study import fit, measure_variant, variant_config
from models.data import load_category

category_dir, root, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
folds = int(os.environ["FOLDS"]) if os.environ.get("FOLDS") else None
failed = 0
for name in sys.argv[4].split(","):
    start = time.perf_counter()
    try:
        category = load_category(category_dir, size=variant_config(name).image_size, progress=False)
        result = {"fit": fit(category, root / name / "work", name, progress=True, folds=folds), "folds": folds}
        (out / f"fidelity_{name}_fit.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(name, "fitted and calibrated in", round(time.perf_counter() - start), "s:", result["fit"], flush=True)
        result.update(measure_variant(category, root / name / "work", progress=False))
    except Exception:  # noqa: BLE001 (one variant's failure, e.g. out of memory, leaves the next to run)
        failed += 1
        print(name, "FAILED after", round(time.perf_counter() - start), "s\n" + traceback.format_exc(), flush=True)
        continue
    result["seconds"] = round(time.perf_counter() - start, 1)
    test, check = result["test"], result["selfcheck"]
    print(name, "test at true poses: image AUROC", test["image_auroc"], "decision", test["decision"],
          "| self-check: image AUROC", check["image_auroc"], "decision", check["decision"], flush=True)
    (out / f"fidelity_{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
sys.exit(1 if failed else 0)
