"""Issue 22, session 43: the calibration's stated false-alarm rate, 2 % (the product) against 5 %.

The threshold at a rate ``r`` is the ``1 - r`` quantile of the bundle's scaled held-out copy scores, read
from its calibration report as the calibration stage takes it (checked: the bundle's own rate gives its own
threshold). Evaluation reports (``rpe-pad lab evaluate``'s metrics.json) are read at each threshold as
``evaluate`` reads its own (``score > threshold``; queries sent to review are counted apart), and with
``--selfcheck BUNDLES_DIR CATEGORY_DIR`` the self-check's painted queries are scored once (as ``rpe-pad
selfcheck`` does) and read at each threshold. The rule and the verdict are in docs/RESULTS.md, session 43.

    PYTHONPATH=.:docs/results python docs/results/issue22_far_rate.py OUT.json BUNDLE/CAT \
        [NAME=EVALUATION/metrics.json ...] [--selfcheck BUNDLES_DIR CATEGORY_DIR]
"""
import json
import sys
from pathlib import Path

import numpy as np

RATES = {"product (2 %)": 0.02, "candidate (5 %)": 0.05}


def thresholds(bundle: Path) -> dict[str, float]:
    report = json.loads((bundle / "reports" / "calibration.json").read_text())
    copies = np.asarray(report["scores"]["heldout"]) * report["heldout_scale"]
    own = float(np.quantile(copies, 1.0 - report["false_alarm_rate"]))
    if abs(own - report["threshold"]) > 1e-3:
        raise SystemExit(f"{bundle}: the report's scores give {own:.4f}, not its threshold {report['threshold']}")
    return {name: round(float(np.quantile(copies, 1.0 - r)), 4) for name, r in RATES.items()}


def read_metrics(path: Path, at: dict[str, float]) -> dict:
    from training.evaluate import decision_metrics

    per_query = json.loads(path.read_text())["per_query"]
    labels = np.array([q["label"] != "good" for q in per_query])
    scores = np.array([q["score"] for q in per_query])
    review = np.array([q["verdict"] == "review" for q in per_query])
    out = {"queries": len(per_query), "defects": int(labels.sum()), "good": int((~labels).sum()),
           "review_good": int((review & ~labels).sum()), "review_defects": int((review & labels).sum())}
    out.update({name: decision_metrics(labels, scores, t) for name, t in at.items()})
    return out


def read_selfcheck(bundles_dir: Path, category_dir: Path, at: dict[str, float]) -> dict:
    from models.calibration import Calibration
    from models.bundle import FILES
    from training.evaluate import decision_metrics
    from training.selfcheck import heldout_views, measure

    bundle, category, scene, held = heldout_views(bundles_dir, category_dir)
    calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
    m = measure(category, scene, held, calib, progress=False)
    labels, scores = m.queries.labels, m.scores
    return {"image_auroc": m.report["image_auroc"], "queries": len(scores),
            **{name: decision_metrics(labels, scores, t) for name, t in at.items()}}


def main(argv: list[str]) -> None:
    selfcheck = None
    if "--selfcheck" in argv:
        i = argv.index("--selfcheck")
        selfcheck, argv = (Path(argv[i + 1]), Path(argv[i + 2])), argv[:i] + argv[i + 3:]
    out, bundle = Path(argv[0]), Path(argv[1])
    at = thresholds(bundle)
    result = {"bundle": str(bundle), "rates": RATES, "thresholds": at}
    for arg in argv[2:]:
        name, path = arg.split("=", 1)
        result[name] = read_metrics(Path(path), at)
    if selfcheck:
        result["selfcheck"] = read_selfcheck(*selfcheck, at)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
