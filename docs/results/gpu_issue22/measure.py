"""Issue 22 on a GPU host: each named variant of `lab.fidelity_study` fitted, calibrated and
measured in turn (the self-check, and the test split at true poses at its own threshold), its
figures written as soon as they exist, so a run cut short keeps what finished.

    python docs/results/gpu_issue22/measure.py CATEGORY_DIR ROOT OUT_DIR VARIANT[,VARIANT...]
"""
import json
import sys
import time
from pathlib import Path

from lab.fidelity_study import fit, measure_variant, variant_config
from models.data import load_category

category_dir, root, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for name in sys.argv[4].split(","):
    start = time.perf_counter()
    category = load_category(category_dir, size=variant_config(name).image_size, progress=False)
    result = {"fit": fit(category, root / name / "work", name, progress=False)}
    print(name, "fitted and calibrated", result["fit"], flush=True)
    result.update(measure_variant(category, root / name / "work", progress=False))
    result["seconds"] = round(time.perf_counter() - start, 1)
    test, check = result["test"], result["selfcheck"]
    print(name, "test at true poses: image AUROC", test["image_auroc"], "decision", test["decision"],
          "| self-check: image AUROC", check["image_auroc"], "decision", check["decision"], flush=True)
    (out / f"fidelity_{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
