"""`make demo` / `rpe-pad demo`: the main job on an embedded default category.

It runs the stages that exist (generate a synthetic category, load it through the data
layer, fit its Gaussian model with the `demo` preset) and then says which stages are not
built yet. Outputs already there (the category, a fitted model with the same settings)
are reused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from models.data import DataError, load_category
from training.category_report import category_sheet, describe
from training.splats import SplatConfig, run_splats_stage
from training.splats import preset as splat_preset
from training.synth import SynthConfig, generate

DEMO_SYNTH = SynthConfig(seed=0, size=128, train_views=60, test_views=16)
NOT_BUILT = (
    "anomaly scoring and calibration",
    "relative pose estimation (RVSS, gallery, IRPRN, ONNX)",
    "pose refinement",
    "bundle assembly and the Inspector",
    "inspection of the query views",
)


def run_demo(out: Path, synth: SynthConfig = DEMO_SYNTH, splats: SplatConfig | None = None) -> int:
    splats = splats or splat_preset("demo")
    out.mkdir(parents=True, exist_ok=True)
    category_dir = out / "synthetic_lego"
    if _reusable(category_dir, synth):
        print(f"[1/4] reusing the synthetic category in {category_dir}")
    else:
        print(f"[1/4] generating a synthetic category in {category_dir} (seed {synth.seed}, {synth.size}px)")
        if category_dir.exists():
            shutil.rmtree(category_dir)
        generate(category_dir, synth)
    print("[2/4] loading it through the data layer")
    category = load_category(category_dir, size=splats.image_size)
    print(json.dumps(describe(category), indent=2))
    sheet = out / "synthetic_lego_sheet.png"
    category_sheet(category).save(sheet)
    print(f"[3/4] contact sheet: {sheet}")
    print(f"[4/4] fitting the Gaussian model ({splats.iterations} steps, demo preset)")
    report = run_splats_stage(category, splats, out / "bundles" / category.name)
    if report.get("skipped"):
        print("      reused the model fitted earlier with the same settings")
    print(
        f"      PSNR {report['psnr_test_mean']:.2f} dB / SSIM {report['ssim_test_mean']:.3f} on "
        f"{report['eval_views']}, {report['num_gaussians']} Gaussians, {report['seconds']} s"
    )
    print(f"      truth | render | error: {out / 'bundles' / category.name / 'reports' / 'splats_sheet.png'}")
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
