"""`make demo` / `rpe-pad demo`: the main job on an embedded default category.

Generate a synthetic category, train its bundle with the ``demo`` preset (every stage of
`rpe-pad train`: Gaussian model, calibration, RVSS, IRPRN, gallery, ONNX, bundle), load
the bundle as the service does (``models.inspector.Inspector``: verified, ONNX Runtime),
inspect one normal and one defective query from any viewpoint, print the results and
write the overlays; then score every query of the category in the default pose mode.
Outputs already there (the category, stage outputs with the same settings) are reused.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from models.data import GOOD, DataError, load_category
from models.images import load_rgb
from models.inspector import Inspector
from training.category_report import category_sheet, describe
from training.evaluate import evaluate
from training.pipeline import run_train, summary_table
from training.synth import SynthConfig, generate

MADE_BY = "rpe-pad demo"  # in the category's synth.json
DEMO_SYNTH = SynthConfig(seed=0, size=128, train_views=60, test_views=16)


def run_demo(out: Path, synth: SynthConfig = DEMO_SYNTH, preset: str = "demo") -> int:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    category_dir = out / "synthetic_lego"
    if _reusable(category_dir, synth):
        print(f"[1/5] reusing the synthetic category in {category_dir}")
    else:
        print(f"[1/5] generating a synthetic category in {category_dir} (seed {synth.seed}, {synth.size}px)")
        if category_dir.is_dir() and any(category_dir.iterdir()):
            if not _made_by_demo(category_dir):  # never delete what the demo did not make
                raise FileExistsError(f"{category_dir} is there and was not made by `rpe-pad demo`: move it, or "
                                      f"give another --out")
            shutil.rmtree(category_dir)  # the demo's own category, with other settings
        generate(category_dir, synth, made_by=MADE_BY)
    category = load_category(category_dir)
    print(json.dumps(describe(category), indent=2))
    sheet = out / "synthetic_lego_sheet.png"
    category_sheet(category).save(sheet)
    print(f"      contact sheet: {sheet}")
    bundles = out / "bundles"
    print(f"[2/5] training the bundle (rpe-pad train {category_dir} --out {bundles} --preset {preset})")
    reports = run_train(category_dir, bundles, preset=preset)
    print(summary_table(reports))
    bundle = Path(reports["bundle"]["bundle"])
    print(f"[3/5] loading {bundle} as the service does (manifest, hashes, ONNX Runtime)")
    inspector = Inspector.load(bundle)
    print(f"      {inspector.describe().model_dump_json()}")
    print("[4/5] inspecting a normal and a defective query (poses unknown to the pipeline)")
    figures = out / "inspections"
    figures.mkdir(exist_ok=True)
    # The first normal query, and the defect a person sees best: the largest defect of the
    # split (chosen by its mask, never by what the pipeline makes of it).
    good = next(q for q in category.test if q.label == GOOD)
    defective = max((q for q in category.test if q.label != GOOD), key=lambda q: int(q.mask.sum()))
    for query in (good, defective):
        path, label = query.path, query.label
        image = inspector.prepare(load_rgb(path, inspector.scene.background))
        result = inspector.inspect(image[None])[0]
        figure = figures / f"{label}_{path.stem}.png"
        inspector.figure(image.numpy(), result, title=f"{category.name}: test/{label}/{path.name}").save(figure)
        verdict = result.verdict.upper() + ("" if result.verification.verified else f" ({result.verification.reason})")
        print(f"      test/{label}/{path.name}: {verdict}, score {result.score:.0f} (threshold {result.threshold:.0f}, "
              f"normalised {result.normalised_score:.2f}), matched {result.gallery_names[0]}, "
              f"{result.timings_ms['total']:.0f} ms; overlay: {figure}")
    print(f"[5/5] scoring all {len(category.test)} queries in the default pose mode (rpe+refine)")
    report_dir = out / "evaluation"
    metrics = evaluate(bundle, category_dir, out_dir=report_dir)
    d = metrics["decision"]
    print(f"      image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics['pixel_auroc']:.4f}, AUPRO "
          f"{metrics['aupro']:.3f}; alignment error median {metrics['pose_reproj_err_px_median']:.2f} px")
    print(f"      at the calibrated threshold: {d['tp']} of {d['tp'] + d['fn']} defects found (recall {d['recall']}), "
          f"{d['fp']} of {d['fp'] + d['tn']} good parts rejected (false-alarm rate {d['false_positive_rate']})")
    v = metrics["verification"]
    print(f"      pose check: {v['flagged']} of {v['n_queries']} queries sent to review (their reference did not fit), "
          f"{v.get('misaligned_flagged', 0)} of {v.get('misaligned', 0)} truly misaligned (> 5 px) among them")
    print(f"      query | reference | anomaly overlay: {report_dir / 'overlays.png'}")
    print(f"done in {time.perf_counter() - start:.0f} s. Serve the bundle: rpe-pad serve --bundles {bundles}")
    return 0


def _made_by_demo(category_dir: Path) -> bool:
    """Whether ``category_dir`` is a category the demo wrote (its ``synth.json`` says so)."""
    try:
        return json.loads((category_dir / "synth.json").read_text()).get("made_by") == MADE_BY
    except (ValueError, OSError, AttributeError):
        return False


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
