"""Issue 22 (a diagnosis; it chooses nothing): a `cpu`-preset fit with some settings changed.

Fits a `rpe-pad synth` category's training views from scratch with the `cpu` preset's fit and
the overrides given as NAME=VALUE (`training.splats.SplatConfig` fields), no view held out,
then scores the test split at true poses, aligned as the product aligns, by the bundle's scorer
and levels, against the bundle's own model and against the new one, with the found and rejected
counts at the bundle's threshold. Session 32's `issue22_denser_fit.py` is `grow_grad2d=1e-4`.

    PYTHONPATH=.:docs/results python docs/results/issue22_fit_variant.py BUNDLE_DIR CATEGORY_DIR WORK_DIR OUT.json NAME=VALUE ...
"""
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from issue22_probes import score_split
from models.data import load_category
from models.inspector import Inspector
from training.splats import SplatConfig, fit_splats, preset


def run(bundle: Path, cat: Path, work: Path, out_path: Path, overrides: dict) -> dict:
    cfg = replace(preset("cpu"), **overrides)
    ins = Inspector.load(bundle, device="cpu")
    threshold = float(json.loads((bundle / "calibration" / "calibration.json").read_text())["threshold"])
    c = load_category(cat, size=cfg.image_size)
    report = {"bundle": str(bundle), "overrides": overrides, "threads": torch.get_num_threads(),
              "bundle_model": score_split(ins, ins.scene, c.test, threshold)}
    print("bundle's model", json.dumps(report["bundle_model"]), flush=True)
    start = time.perf_counter()
    fit = fit_splats(c, cfg, work, progress=False, device=torch.device("cpu"))
    report["fit_seconds"] = round(time.perf_counter() - start, 1)
    report["variant_model"] = score_split(ins, fit.scene, c.test, threshold)
    print("variant", json.dumps(report["variant_model"]), report["fit_seconds"], "s", flush=True)
    fit.scene.save(work / "variant_scene.safetensors")
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def parse(items: list[str]) -> dict:
    types = {f.name: str(f.type) for f in fields(SplatConfig)}
    out = {}
    for item in items:
        name, value = item.split("=", 1)
        out[name] = float(value) if "float" in types[name] else int(value) if "int" in types[name] else value
    return out


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), parse(sys.argv[5:]))
