"""`make demo` / `rpe-pad demo`: the main job on an embedded default category.

Today it runs the stages that exist (generate a synthetic category, load it through the
data layer, draw its contact sheet) and then says which stages are not built yet.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.data import DataError, load_category
from training.category_report import category_sheet, describe
from training.synth import SynthConfig, generate

DEMO_SYNTH = SynthConfig(seed=0, size=128, train_views=60, test_views=16)
NOT_BUILT = (
    "Gaussian splatting fit (3DGS model of the normal object)",
    "anomaly scoring and calibration",
    "relative pose estimation (RVSS, gallery, IRPRN, ONNX)",
    "pose refinement",
    "bundle assembly and the Inspector",
    "inspection of the query views",
)


def run_demo(out: Path, cfg: SynthConfig = DEMO_SYNTH) -> int:
    out.mkdir(parents=True, exist_ok=True)
    category_dir = out / "synthetic_lego"
    if _reusable(category_dir):
        print(f"[1/3] reusing the synthetic category in {category_dir}")
    else:
        print(f"[1/3] generating a synthetic category in {category_dir} (seed {cfg.seed}, {cfg.size}px)")
        if category_dir.exists():
            _remove_tree(category_dir)
        generate(category_dir, cfg)
    print("[2/3] loading it through the data layer")
    category = load_category(category_dir)
    print(json.dumps(describe(category), indent=2))
    sheet = out / "synthetic_lego_sheet.png"
    category_sheet(category).save(sheet)
    print(f"[3/3] contact sheet: {sheet}")
    print("\nNot built yet, so the demo stops here (nothing below is simulated):")
    for stage in NOT_BUILT:
        print(f"  - {stage}")
    return 0


def _reusable(category_dir: Path) -> bool:
    marker = category_dir / "synth.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("config", {}).get("seed") == DEMO_SYNTH.seed and bool(
            load_category(category_dir, load_test=False).train
        )
    except (DataError, ValueError, OSError):
        return False


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
