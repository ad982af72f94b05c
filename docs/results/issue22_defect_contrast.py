"""Issue 22, session 43: how visible each synthetic defect is, against whether the product found it.

For every defective query of a ``rpe-pad synth`` category (its test split, or a ``lab validation-split``),
the object is rebuilt from the category's seed and drawn again, clean, from the query's camera. The colour
difference between the query and that clean view (CIEDE2000, ``skimage.color.deltaE_ciede2000``) is read
inside the defect's mask: its visible pixels (dE00 >= 5, a difference anyone sees side by side), its mean,
and its sum. With evaluation reports (``rpe-pad lab evaluate``'s metrics.json), each defect's normalised
score (score / threshold) and verdict sit beside them. A diagnosis: it chooses nothing.

    PYTHONPATH=.:docs/results python docs/results/issue22_defect_contrast.py OUT.json \
        CATEGORY_DIR=EVALUATION/metrics.json [CATEGORY_DIR=EVALUATION/metrics.json ...]

``--sheet OUT.png CATEGORY_DIR:QUERY ...`` draws the named queries beside their clean views and difference.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

from models import camera
from training.synth.generate import CAMERA_ANGLE_X, SynthConfig, render, synth_object

VISIBLE_DE = 5.0


def clean_object(category: Path):
    """The category's object, rebuilt as ``rpe-pad synth`` built it, and its config."""
    cfg = json.loads((category / "synth.json").read_text())["config"]
    cfg = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return synth_object(cfg)[0], cfg


def views(category: Path, names: set[str] | None = None):
    """(name, label, query, clean view, mask, dE00 map) of each defective query (of ``names`` if given)."""
    obj, cfg = clean_object(category)
    K = camera.intrinsics_from_fov(CAMERA_ANGLE_X, cfg.size, cfg.size)
    frames = json.loads((category / "test" / "transforms.json").read_text())["frames"]
    for frame in frames:
        name = frame["file_path"]
        label = name.split("/")[1]
        if label == "good" or (names is not None and name not in names):
            continue
        w2c = camera.opengl_c2w_to_opencv_w2c(torch.tensor(frame["transform_matrix"], dtype=torch.float32))
        clean, _, _ = render(obj.scene, w2c, K, cfg.size, cfg.supersample)
        query = np.asarray(Image.open(category / f"{name}.png").convert("RGB"), np.float32) / 255.0
        mask = np.asarray(Image.open(category / "ground_truth" / label / f"{name.split('/')[2]}_mask.png")) > 0
        yield name, label, query, np.clip(clean, 0, 1), mask, deltaE_ciede2000(rgb2lab(query), rgb2lab(np.clip(clean, 0, 1)))


def contrast(category: Path) -> dict[str, dict]:
    out = {}
    for name, label, _, _, mask, de in views(category):
        out[name] = {"label": label, "mask_px": int(mask.sum()), "visible_px": int((de[mask] >= VISIBLE_DE).sum()),
                     "mean_de": round(float(de[mask].mean()), 2), "sum_de": round(float(de[mask].sum()), 1),
                     "off_mask_max_de": round(float(de[~mask].max()), 2)}
    return out


def sheet(out: Path, picks: list[str], crop: int = 64) -> None:
    """Each picked query's defect, cropped and enlarged: the query, the clean view, the mask, dE00 (0-20)."""
    from matplotlib import colormaps

    from models.viz import Cell, contact_sheet, mask_overlay

    rows = []
    for pick in picks:
        category, query = pick.rsplit(":", 1)
        for name, _, image, clean, mask, de in views(Path(category), {query}):
            ys, xs = np.nonzero(mask)
            y0 = int(np.clip(ys.mean() - crop / 2, 0, image.shape[0] - crop))
            x0 = int(np.clip(xs.mean() - crop / 2, 0, image.shape[1] - crop))
            cut = (slice(y0, y0 + crop), slice(x0, x0 + crop))
            heat = colormaps["magma"](np.clip(de[cut] / 20.0, 0, 1))[..., :3]
            vis = int((de[mask] >= VISIBLE_DE).sum())
            rows.append((f"{Path(category).name}\n{name[5:]}", [
                Cell(image[cut], "query"), Cell(clean[cut], "clean, same camera"),
                Cell(mask_overlay(image[cut], mask[cut], alpha=0.35), f"mask {int(mask.sum())} px"),
                Cell(heat, f"dE00 0-20: {vis} px >= {VISIBLE_DE:g}")]))
    contact_sheet(rows, cell=192, title="Issue 22: how visible each defect is (session 43)").save(out)


def main(argv: list[str]) -> None:
    if argv[0] == "--sheet":
        sheet(Path(argv[1]), argv[2:])
        return
    out_path, pairs = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    report = {"visible_de": VISIBLE_DE, "categories": {}}
    for category, metrics_path in pairs:
        rows = contrast(Path(category))
        metrics = json.loads(Path(metrics_path).read_text())
        threshold = metrics["decision"]["threshold"]
        for q in metrics["per_query"]:
            if q["query"] in rows:
                rows[q["query"]].update(score=round(q["score"] / threshold, 3), verdict=q["verdict"])
        good = sorted(q["score"] / threshold for q in metrics["per_query"] if q["label"] == "good")
        report["categories"][f"{category} ({metrics_path})"] = {"threshold": threshold, "good_scores": good,
                                                                "defects": rows}
        ranked = sorted(rows.items(), key=lambda kv: kv[1]["visible_px"])
        print(f"{category}: threshold {threshold:.3f}; good views' normalised scores max {good[-1]:.3f}")
        for name, r in ranked:
            print(f"  {name:22s} mask {r['mask_px']:4d}  visible {r['visible_px']:4d}  mean dE {r['mean_de']:5.1f}"
                  f"  score {r.get('score', float('nan')):8.3f}  {r.get('verdict')}")
    out_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
