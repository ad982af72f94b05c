"""Issue 22, session 22 (a diagnosis on a test split; it chooses nothing): each test query of a
`rpe-pad synth` category scored by the bundle's scorer against a perfect reference, the
ray-cast clean object at the query's true pose, both prepared as the product prepares a query.
What a defect scores there is its own evidence; what a good view scores is zero residue plus
the scorer's floor. Set against the bundle at true poses (`rpe-pad lab evaluate --pose oracle`),
it says how much of the gap is the Gaussian model's render.

    python docs/results/issue22_perfect_reference.py CATEGORY_DIR BUNDLE_DIR SEED [OUT.json]

(BUNDLE_DIR may also be a training folder, BUNDLES_DIR/.work/<category>, once its calibration stage has run.)
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from models.calibration import Calibration
from models.data import load_category
from models.images import resize_rgb
from models.inspector import Inspector
from models.scoring import AnomalyScorer
from training.synth.generate import build_object, render

cat, bundle, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
if (bundle / "manifest.json").is_file():
    inspector = Inspector.load(bundle, device="cpu")
    scorer, prepare = inspector.scorer, inspector.prepare
else:  # a training folder: its scorer and levels; a query without a lens model is only resized
    scorer = AnomalyScorer.from_config(
        Calibration.model_validate_json((bundle / "calibration" / "calibration.json").read_text()).scorer)
    width = json.loads((bundle / "splats" / "config.json").read_text())["image_size"]

    def prepare(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.clip(resize_rgb(image, width, width), 0.0, 1.0))
c = load_category(cat)
obj = build_object(np.random.default_rng(seed))
rows = []
for q in c.test:
    clean, _, _ = render(obj.scene, q.w2c.float(), q.K.float(), c.width, 2)
    x, r = prepare(q.image.numpy()), prepare(clean.astype(np.float32))
    _, s = scorer(x[None], r[None])
    rows.append((float(s[0]), q.label, q.name))
goods = sorted(s for s, l, n in rows if l == "good")
print("goods", np.round(goods, 3))
for s, l, n in sorted(rows):
    if l != "good": print(n, round(s, 3))
if len(sys.argv) > 4:
    Path(sys.argv[4]).write_text(json.dumps({"reference": "ray-cast clean object at the true pose",
                                             "scores": {n: round(s, 4) for s, l, n in rows}}, indent=1) + "\n")
