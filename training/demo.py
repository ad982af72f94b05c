"""`make demo` / `rpe-pad demo`: the main job on an embedded default category.

It runs the stages that exist (generate a synthetic category, load it through the data
layer, fit its Gaussian model with the `demo` preset, calibrate the decision threshold,
score the query views at their true poses) and then says which stages are not built yet. Outputs already there (the category, a fitted model with the same settings)
are reused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from models.data import DataError, load_category
from training.calibrate import run_calibration_stage
from training.category_report import category_sheet, describe
from training.evaluate import evaluate
from training.pipeline import CALIBRATION
from training.splats import SplatConfig, run_splats_stage
from training.splats import preset as splat_preset
from training.synth import SynthConfig, generate

DEMO_SYNTH = SynthConfig(seed=0, size=128, train_views=60, test_views=16)
NOT_BUILT = (
    ("bundle assembly and the Inspector: until they exist the demo does not run the pose stages (rpe-pad train "
     "--stages rvss,irprn,gallery,onnx, then rpe-pad evaluate --pose rpe+refine; docs/POSE.md, docs/REFINE.md), "
     "so the queries above were scored at their TRUE poses"),
)


def run_demo(out: Path, synth: SynthConfig = DEMO_SYNTH, splats: SplatConfig | None = None) -> int:
    splats = splats or splat_preset("demo")
    out.mkdir(parents=True, exist_ok=True)
    category_dir = out / "synthetic_lego"
    if _reusable(category_dir, synth):
        print(f"[1/6] reusing the synthetic category in {category_dir}")
    else:
        print(f"[1/6] generating a synthetic category in {category_dir} (seed {synth.seed}, {synth.size}px)")
        if category_dir.exists():
            shutil.rmtree(category_dir)
        generate(category_dir, synth)
    print("[2/6] loading it through the data layer")
    category = load_category(category_dir, size=splats.image_size)
    print(json.dumps(describe(category), indent=2))
    sheet = out / "synthetic_lego_sheet.png"
    category_sheet(category).save(sheet)
    print(f"[3/6] contact sheet: {sheet}")
    print(f"[4/6] fitting the Gaussian model ({splats.iterations} steps, demo preset)")
    report = run_splats_stage(category, splats, out / "bundles" / category.name)
    if report.get("skipped"):
        print("      reused the model fitted earlier with the same settings")
    print(
        f"      PSNR {report['psnr_test_mean']:.2f} dB / SSIM {report['ssim_test_mean']:.3f} on "
        f"{report['eval_views']}, {report['num_gaussians']} Gaussians, {report['seconds']} s"
    )
    bundle = out / "bundles" / category.name
    print(f"      truth | render | error: {bundle / 'reports' / 'splats_sheet.png'}")
    print("[5/6] calibrating the decision threshold on the normal views")
    calib = run_calibration_stage(category, CALIBRATION["demo"], bundle)
    print(f"      threshold {calib['threshold']:.1f} (rule {calib['rule']}), histogram: {bundle / 'reports' / 'calibration_hist.png'}")
    print("[6/6] scoring the query views at their true poses (the oracle upper bound)")
    report_dir = bundle / "reports" / "evaluate_oracle"
    metrics = evaluate(bundle, category_dir, pose="oracle", out_dir=report_dir)
    d = metrics["decision"]
    print(f"      {metrics['n_queries']} queries: image AUROC {metrics['image_auroc']:.3f}, pixel AUROC "
          f"{metrics['pixel_auroc']:.4f}, AUPRO {metrics['aupro']:.3f}; at the threshold: {d['tp']} defects found, "
          f"{d['fn']} missed, {d['fp']} false alarms")
    print(f"      query | reference | anomaly overlay: {report_dir / 'overlays.png'}")
    print("\nNot built yet, so the demo stops here (nothing below is simulated):")
    for stage in NOT_BUILT:
        print(f"  - {stage}")
    return 0


def _reusable(category_dir: Path, synth: SynthConfig) -> bool:
    marker = category_dir / "synth.json"
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text()).get("config", {})
        same = json.loads(json.dumps(asdict(synth))) == saved
        return same and bool(load_category(category_dir, load_test=False).train)
    except (DataError, ValueError, OSError):
        return False
