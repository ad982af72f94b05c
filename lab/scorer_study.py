"""`rpe-pad lab scorer-study`: which way of turning a query and its reference into a map
catches small, thin and colour defects, chosen on views held out of the test split.

Selection data (never the test split): the self-check's queries (``training.selfcheck``),
clean and painted copies of the training photographs held out of the calibration model,
against that model's renders at jittered poses, each warped onto its photograph by the
refinement's 2D step as the product and the calibration (method 3) do. The rule, fixed before any figure was seen:
**the variant with the highest recall at the threshold that rejects 2 % of the clean
held-out views** (the product's false-alarm rule, ``training/calibrate.py``), ties broken by
image AUROC. Normal statistics a variant needs (per-term scales, per-structure expectations)
come from the clean held-out views too.

Report data: with ``--test``, the category's test split at its true poses against the
bundle's own model, each variant thresholded by the same rule on the held-out clean scores
(as the product calibrates); reported for every variant, chosen by none.

Variants (``VARIANTS``), all built on the scorer's unblurred terms (``AnomalyScorer.terms``:
the bundle's colour term or terms (RGB, or CIELAB L* and a*b* for bundles calibrated since
session 17) and EfficientNet-Lite0's four layers, tolerance 1):

- ``peers``: their plain sum, blurred with sigma 4: the product's scorer today;
- ``sigma2``: the same, sigma 2 (thin defects keep more of their peak);
- ``balanced``: each term divided by its 99th-percentile pixel value on the clean held-out
  views before the sum (the colour term weighs as much as a feature layer);
- ``silhouette``: ``balanced`` plus the silhouette evidence: query pixels that show
  the object more than 1 px outside the reference's silhouette, or background more than
  1 px inside it (burrs and missing chunks change the outline), scaled the same way;
- ``silhouette_s2``, ``silhouette_s1``: ``silhouette`` blurred with sigma 2 and 1 (session 14:
  on Lego a real, low-contrast stain keeps its peak only under a smaller blur);
- ``structure``: ``silhouette`` divided by its clean 99th percentile among pixels
  of the same reference-structure decile (edge strength of the render): a residual counts
  for less where renders are always off;
- ``tint`` (session 16): ``structure`` with one more term, the squared difference (tolerance
  1) of the two images' log-chromaticity ``log(x + 0.05) - mean_c log(x + 0.05)``
  (``chroma_term``): a translucent film changes the channels' ratios, shading only their
  common brightness.

``peers``, ``silhouette`` and ``structure`` are the product's combinations (``models.scoring``;
``structure`` is the ``cpu`` and ``paper`` presets' since session 15): the chosen one is what
the calibration stage fits and the bundle's scorer runs. ``sigma2``, ``balanced`` and the
smaller blurs were measured and not adopted, and live here only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.bundle import FILES
from models.calibration import Calibration
from models.data import GOOD, load_category
from models.inspector import align_references
from models.metrics import aupro, auroc, pixel_auroc
from models.refine import RefineConfig
from models.scoring import (
    AnomalyScorer,
    anomaly_map,
    balanced,
    blur_maps,
    colour_terms,
    combine,
    fit_normal_stats,
    squared_difference,
)
from models.splat.scene import GaussianScene
from training.evaluate import decision_metrics, render_references
from training.selfcheck import SelfCheckConfig, heldout_views, painted_queries

Tensor = torch.Tensor
SIZE = 224
FALSE_ALARM = 0.02
VARIANTS = ("peers", "sigma2", "balanced", "silhouette", "silhouette_s2", "silhouette_s1", "structure", "either", "tint")
CHROMA_EPS = 0.05  # ``tint``: added before the logarithm, so dark pixels' noise stays bounded
SIGMAS = {"sigma2": 2.0, "silhouette_s2": 2.0, "silhouette_s1": 1.0}  # the blur of a variant; 4 otherwise


def chroma_term(queries: Tensor, references: Tensor, tolerance: int) -> Tensor:
    """``[B, S, S]``: the squared difference of the log-chromaticity of ``queries`` and
    ``references`` (``[B, 3, S, S]`` in [0, 1]); a grey change of brightness leaves it at 0."""
    def chroma(x: Tensor) -> Tensor:
        logs = torch.log(x + CHROMA_EPS)
        return logs - logs.mean(1, keepdim=True)

    return squared_difference(chroma(queries), chroma(references), tolerance)


class Features:
    """What the variants are built from, for one set of queries: the product scorer's terms
    and silhouette evidence (``AnomalyScorer.inputs``), the references' edge strength, and
    ``tint``'s colour-ratio term."""

    def __init__(self, scorer: AnomalyScorer, queries: Tensor, references: Tensor, batch: int = 8):
        parts = []
        for i in range(0, len(queries), batch):
            q, r = queries[i : i + batch], references[i : i + batch]
            parts.append((*scorer.inputs(q, r), scorer.edges(r),
                          chroma_term(scorer.squares(q), scorer.squares(r), scorer.tolerance)))
        self.terms, self.silhouette, self.edges, self.chroma = (torch.cat([p[k] for p in parts]) for k in range(4))
        self.colours = colour_terms(scorer.colour)

    def subset(self, keep: np.ndarray) -> Features:
        out = Features.__new__(Features)
        out.terms, out.silhouette, out.edges = self.terms[keep], self.silhouette[keep], self.edges[keep]
        out.chroma, out.colours = self.chroma[keep], self.colours
        return out

    def with_chroma(self) -> Tensor:
        """The terms with the colour-ratio term last ``[B, T + 1, S, S]``."""
        return torch.cat([self.terms, self.chroma[:, None]], dim=1)


class Variant:
    """One way to a map, with the normal statistics it fitted on the clean held-out views:
    ``peers``, ``silhouette``, ``structure`` and ``either`` are the product's combinations
    (``models.scoring``); the others were measured here and not adopted."""

    def __init__(self, name: str, clean: Features):
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
        self.name = name
        self.sigma = SIGMAS.get(name, 4.0)
        terms = clean.with_chroma() if name == "tint" else clean.terms
        self.stats = fit_normal_stats(terms, clean.silhouette,
                                      clean.edges if name in ("structure", "either", "tint") else None,
                                      sigma=self.sigma if name == "either" else None, colours=clean.colours)

    def pre(self, f: Features) -> Tensor:
        if self.name in ("peers", "sigma2"):
            return combine(f.terms, "peers")
        if self.name == "balanced":
            return balanced(f.terms, self.stats)
        if self.name == "structure":
            return combine(f.terms, "structure", self.stats, f.silhouette, f.edges)
        if self.name == "tint":
            return combine(f.with_chroma(), "structure", self.stats, f.silhouette, f.edges)
        return combine(f.terms, "silhouette", self.stats, f.silhouette)

    def __call__(self, f: Features) -> Tensor:
        if self.name == "either":
            return anomaly_map(f.terms, "either", self.stats, f.silhouette, f.edges, self.sigma)
        return blur_maps(self.pre(f), self.sigma)


def _figures(maps: Tensor, labels: np.ndarray, masks: np.ndarray, threshold: float) -> dict:
    scores = maps.flatten(1).amax(1).numpy()
    d = decision_metrics(labels, scores, threshold)
    return {"image_auroc": round(auroc(labels, scores), 4), "pixel_auroc": round(pixel_auroc(masks, maps.numpy()), 4),
            "aupro": round(aupro(masks, maps.numpy()), 4), "recall": d["recall"],
            "false_alarm_rate": d["false_positive_rate"], "found": d["tp"], "of": d["tp"] + d["fn"],
            "rejected": d["fp"], "good": d["fp"] + d["tn"]}


def _masks224(masks: list[np.ndarray]) -> np.ndarray:
    m = torch.from_numpy(np.stack(masks))[:, None].float()
    return F.interpolate(m, size=(SIZE, SIZE), mode="nearest")[:, 0].numpy() > 0.5


@torch.no_grad()
def study(bundles_dir: Path, category_dir: Path, test: bool = False, progress: bool = True) -> dict:
    bundle, category, cal_scene, held = heldout_views(Path(bundles_dir), Path(category_dir))
    calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
    scorer = AnomalyScorer.from_config(calib.scorer)
    q = painted_queries(held, category.background, SelfCheckConfig())
    images = torch.from_numpy(np.stack(q.images))
    refs = render_references(cal_scene, q.poses, q.K[None].expand(len(images), 3, 3), category.width, category.height)
    refs = align_references(images, refs.cpu(), RefineConfig())  # as the product and the calibration (method 3)
    scorer = AnomalyScorer(scorer.extractor, scorer.size, scorer.sigma, scorer.tolerance,
                           background=tuple(category.background), colour=scorer.colour)
    sel = Features(scorer, images, refs.cpu())
    labels, masks = q.labels, _masks224(q.masks)
    clean = sel.subset(~labels)
    variants = {name: Variant(name, clean) for name in VARIANTS}
    report = {"category": category.name, "selection": {}, "rule": "highest recall at the threshold rejecting "
              f"{FALSE_ALARM:.0%} of the clean held-out views; ties: image AUROC",
              "selection_queries": {"defective": int(labels.sum()), "clean": int((~labels).sum())}}
    thresholds = {}
    for name, variant in tqdm(variants.items(), desc="variants (held-out)", disable=not progress):
        maps = variant(sel)
        thresholds[name] = float(np.quantile(maps[~labels].flatten(1).amax(1).numpy(), 1 - FALSE_ALARM))
        report["selection"][name] = _figures(maps, labels, masks, thresholds[name])
    ranked = sorted(VARIANTS, key=lambda n: (report["selection"][n]["recall"], report["selection"][n]["image_auroc"]),
                    reverse=True)
    report["chosen"] = ranked[0]
    if test:
        full = load_category(category_dir, size=category.width)
        views = [v for v in full.test if v.w2c is not None]
        timages = torch.stack([v.image for v in views])
        scene = GaussianScene.load(bundle / FILES["scene"])
        trefs = render_references(scene, torch.stack([v.w2c for v in views]), torch.stack([v.K for v in views]),
                                  full.width, full.height)
        tf = Features(scorer, timages, align_references(timages, trefs.cpu(), RefineConfig()))
        tlabels, tmasks = np.array([v.label != GOOD for v in views]), _masks224([v.mask.numpy() for v in views])
        report["test"] = {name: _figures(variant(tf), tlabels, tmasks, thresholds[name])
                          for name, variant in variants.items()}
        report["test_queries"] = {"defective": int(tlabels.sum()), "good": int((~tlabels).sum()), "poses": "true"}
    return report


def markdown(report: dict) -> str:
    lines = [f"Scorer study on {report['category']} (rule: {report['rule']}; chosen: `{report['chosen']}`)", "",
             "| variant | held-out image AUROC | recall @2 % FAR | pixel AUROC | AUPRO |"
             + (" test image AUROC | test pixel AUROC | test AUPRO | test found | test good rejected |" if "test" in report else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|---:|---:|---:|" if "test" in report else "")]
    for name, s in report["selection"].items():
        row = f"| `{name}` | {s['image_auroc']} | {s['recall']} | {s['pixel_auroc']} | {s['aupro']} |"
        if "test" in report:
            t = report["test"][name]
            row += (f" {t['image_auroc']} | {t['pixel_auroc']} | {t['aupro']} | {t['found']} of {t['of']} |"
                    f" {t['rejected']} of {t['good']} |")
        lines.append(row)
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scorer_study.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scorer_study.md").write_text(markdown(report) + "\n")
