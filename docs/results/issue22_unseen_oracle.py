"""Issue 22, session 19: do the false alarms on photographs no model saw come from the pose
or from the normal model? Each of CATEGORY_DIR's training photographs (good parts set aside
before BUNDLE_DIR was built, as in ``issue22_unseen_views.py``) is scored twice: through the
product's pose path (default mode) and at its true pose (the lab's ``oracle`` mode: a render
at that pose, no refinement and so no ECC, then the same pose check and scorer). Prints both
scores against the calibrated threshold and writes them to OUT.json.

    python docs/results/issue22_unseen_oracle.py BUNDLE_DIR CATEGORY_DIR OUT.json
"""
import json
import sys
from pathlib import Path

import lab  # noqa: F401 (registers the oracle pose mode)
from lab.workdir import open_inspector
from models.data import load_category
from models.inspector import Inspector, InspectorConfig

bundle = Path(sys.argv[1])
product = Inspector.load(bundle, device="cpu")
oracle = open_inspector(bundle, InspectorConfig(pose="oracle"), device="cpu")
cat = load_category(sys.argv[2], size=product.width, load_test=False)
rows = []
for v in cat.train:
    default = product.inspect(v.image[None])[0]
    batch = oracle.start(v.image[None])
    batch.given_poses = v.w2c[None].double()
    true = oracle.run(batch)[0]
    rows.append({"view": v.name, "default": round(default.score, 4), "default_verdict": default.verdict,
                 "true_pose": round(true.score, 4), "true_pose_verdict": true.verdict, "threshold": round(true.threshold, 4)})
    print(rows[-1], flush=True)
summary = {k: sum(r[k] == "anomalous" for r in rows) for k in ("default_verdict", "true_pose_verdict")}
print(cat.name, "false alarms:", summary)
Path(sys.argv[3]).write_text(json.dumps({"false_alarms": summary, "rows": rows}, indent=1) + "\n")
