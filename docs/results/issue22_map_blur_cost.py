"""Issue 22, session 31: what the map's own blur costs the Score stage. Ten test queries, one at a
time, each against its render at the true pose (the bundle's Gaussian model), scored by each
scorer named by a stored calibration (its ``scorer`` config), round-robin, REPEATS rounds; the
median milliseconds of each. Run it with the calibrations of method 7 and method 10 under the code
of each, alone on the machine.

    python docs/results/issue22_map_blur_cost.py BUNDLE_DIR CATEGORY_DIR REPEATS CALIBRATION_JSON [...]
"""
import json
import statistics
import sys
import time
from pathlib import Path

from models.bundle import FILES
from models.data import load_category
from models.scoring import AnomalyScorer
from models.splat.scene import GaussianScene, render
from training.splats import preset

bundle, cat, repeats, calibs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
scene = GaussianScene.load(bundle / FILES["scene"], device="cpu")
scorers = {c: AnomalyScorer.from_config(json.loads(Path(c).read_text())["scorer"]) for c in calibs}
c = load_category(cat, size=preset("cpu").image_size)
pairs = [(q.image[None].float(), render(scene, q.w2c[None].float(), q.K[None].float(), c.width, c.height).colors.clamp(0, 1))
         for q in c.test[:10]]
times = {name: [] for name in scorers}
for _ in range(repeats):
    for name, scorer in scorers.items():
        for img, ref in pairs:
            t = time.perf_counter()
            scorer(img, ref)
            times[name].append(1000 * (time.perf_counter() - t))
for name, ms in times.items():
    print(f"{name} (map_sigma {scorers[name].map_sigma if hasattr(scorers[name], 'map_sigma') else None}): "
          f"median {statistics.median(ms):.2f} ms over {len(ms)} calls")
