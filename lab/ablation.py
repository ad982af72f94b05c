"""`rpe-pad lab ablation CATEGORY_DIR BUNDLES_DIR`: the paper's Table 6 rerun on our data.

The paper switches its three training-time components on and off: RVSS (the novel set
of perturbed views), IRPRN's refinement layers, MPTS (weighted multi-pair training).
The RVSS switch takes our orbit views with it (``training.rvss``): variants with RVSS
have the preset's (6 with ``cpu``), those without have none.
Each variant (``VARIANTS``) shares the category's fitted Gaussian model and calibration
(``BUNDLES_DIR/.work/<category>/{splats,calibration}``, which must exist: run ``rpe-pad
train`` first), rebuilds ``rvss``, ``irprn`` and ``gallery`` with its switches in its own
work folder ``BUNDLES_DIR/.ablation/<variant>/.work/<category>`` (hard links to the shared
stages; a stage whose inputs and switches match a valid output is skipped, so ``all``
reuses the trained category and a rerun only redoes what changed), and is evaluated with the one inspection
pipeline (``lab.evaluate``) in the pose modes asked for (default ``rpe``: what the
network alone is worth). Output: ``ablation.json`` and ``ablation.md`` in ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab.evaluate import evaluate
from training.pipeline import run_train, work_dir


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # the paper's row name
    rvss: bool  # novel views at perturbed poses in training and in the gallery
    irprn_refine: bool  # IRPRN's refinement layers (off: the coarse heads only)
    mpts: bool  # MPTS pair weights (off: uniform)

    def switches(self) -> dict:
        """``training.pipeline.irprn_config`` ablation switches (None keeps the preset's)."""
        return {"rvss_m": None if self.rvss else 0, "n_refine": None if self.irprn_refine else 0,
                "mpts": None if self.mpts else False}


VARIANTS = {v.name: v for v in (
    Variant("none", "none", rvss=False, irprn_refine=False, mpts=False),
    Variant("rvss", "+RVSS", rvss=True, irprn_refine=False, mpts=False),
    Variant("rvss_irprn", "+RVSS +IRPRN", rvss=True, irprn_refine=True, mpts=False),
    Variant("rvss_mpts", "+RVSS +MPTS", rvss=True, irprn_refine=False, mpts=True),
    Variant("all", "all (RVSS +IRPRN +MPTS)", rvss=True, irprn_refine=True, mpts=True),
)}
# The paper's Table 6 (MAD-Sim mean, pixel / image AUROC, %), for the side-by-side.
PAPER_TABLE6 = {"none": (92.8, 62.5), "rvss": (96.6, 77.8), "rvss_irprn": (98.0, 87.3),
                "rvss_mpts": (98.1, 89.4), "all": (99.2, 93.8)}
SHARED_STAGES = ("splats", "calibration")
REBUILT_STAGES = ("rvss", "irprn", "gallery")
ROW_KEYS = ("image_auroc", "pixel_auroc", "aupro", "pose_reproj_err_px_median", "pose_rot_err_deg_median",
            "pose_center_err_rel_median")


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` made of hard links (plain copies across filesystems)."""
    if dst.exists():
        shutil.rmtree(dst)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def prepare_variant(source: Path, root: Path, category: str) -> Path:
    """The variant's work folder: the shared stages hard-linked from ``source`` (never
    rewritten by a variant), the rebuilt ones copied (a variant whose switches match the
    source's then skips them as valid; others overwrite their own copies only)."""
    target = work_dir(root, category)
    (target / "reports").mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES + REBUILT_STAGES:
        if not (source / stage).is_dir():
            if stage in SHARED_STAGES:
                raise FileNotFoundError(f"{source / stage} is missing: run `rpe-pad train` (stages splats,calibration) first")
            continue
        if stage in SHARED_STAGES:
            _link_tree(source / stage, target / stage)
        elif not (target / stage).exists():
            shutil.copytree(source / stage, target / stage)
        report = source / "reports" / f"{stage}.json"
        if report.is_file() and (stage in SHARED_STAGES or not (target / "reports" / report.name).exists()):
            shutil.copy2(report, target / "reports" / report.name)
    return target


def run_ablation(category_dir: Path, bundles_dir: Path, out: Path, preset: str = "cpu",
                 variants: list[str] | None = None, poses: tuple[str, ...] = ("rpe",), progress: bool = True,
                 epochs: int | None = None) -> dict:
    """Train and evaluate each variant; returns (and writes) the table's rows."""
    names = list(variants or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; available: {list(VARIANTS)}")
    category_dir = Path(category_dir)
    category = category_dir.resolve().name  # models.data.load_category names a category by its folder
    source = work_dir(bundles_dir, category)
    rows = []
    for name in names:
        variant = VARIANTS[name]
        root = Path(bundles_dir) / ".ablation" / name
        target = prepare_variant(source, root, category)
        start = time.perf_counter()
        switches = {**variant.switches(), "epochs": epochs}
        reports = run_train(category_dir, root, preset=preset, stages=list(REBUILT_STAGES), progress=progress,
                            ablation=switches)
        train_s = time.perf_counter() - start
        irprn = reports["irprn"].get("final", {})
        for pose in poses:
            metrics = evaluate(target, category_dir, pose=pose, out_dir=out / name / pose)
            rows.append({"variant": name, "label": variant.label, "pose_mode": pose,
                         "rvss": variant.rvss, "irprn_refine": variant.irprn_refine, "mpts": variant.mpts,
                         **{k: metrics.get(k) for k in ROW_KEYS},
                         "recall": (metrics.get("decision") or {}).get("recall"),
                         "false_alarm_rate": (metrics.get("decision") or {}).get("false_positive_rate"),
                         "irprn_val_rot_deg": irprn.get("val_rot_deg"), "irprn_val_trans": irprn.get("val_trans"),
                         "train_seconds": round(train_s, 1), "timing_ms": metrics["timing_ms"]})
    result = {"category": category, "preset": preset, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ablation.md").write_text(ablation_table(result) + "\n")
    return result


def ablation_table(result: dict) -> str:
    """Markdown: our rows with the paper's Table 6 figures beside them."""
    lines = [f"Ablation on {result['category']} (preset {result['preset']})", "",
             ("| variant | RVSS | IRPRN refine | MPTS | pose | image AUROC | pixel AUROC | AUPRO | recall / false alarms "
              "at the threshold | reproj px (median) | rot deg (median) | IRPRN held-out rot deg | paper pixel / image AUROC |"),
             "|---|:-:|:-:|:-:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    mark = {True: "x", False: ""}
    for r in result["rows"]:
        paper = PAPER_TABLE6.get(r["variant"])
        val = r.get("irprn_val_rot_deg")
        lines.append(f"| {r['label']} | {mark[r['rvss']]} | {mark[r['irprn_refine']]} | {mark[r['mpts']]} | "
                     f"{r['pose_mode']} | {r['image_auroc']} | {r['pixel_auroc']} | {r['aupro']} | "
                     f"{r.get('recall')} / {r.get('false_alarm_rate')} | "
                     f"{r['pose_reproj_err_px_median']} | {r['pose_rot_err_deg_median']} | "
                     f"{'' if val is None else round(val, 2)} | {'' if paper is None else f'{paper[0]} / {paper[1]}'} |")
    return "\n".join(lines)
