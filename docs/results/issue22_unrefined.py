"""Issue 22: the queries the refinement did not confirm, or left over 1 px off, per test split.

Runs the default mode on each ``BUNDLE/CAT:CATEGORY_DIR`` and prints every query whose
refinement accepted no correction (``pnp_path`` ``none``) or whose true alignment error is over
1 px: its path, the refinement's reason, the ECC shift, the true error (px at 224), the
verdict and the score. Usage: ``PYTHONPATH=. python docs/results/issue22_unrefined.py
BUNDLE/CAT:CATEGORY_DIR ...``."""

import sys, json, torch, numpy as np
from pathlib import Path
from models.data import load_category
from models.inspector import Inspector
from training.evaluate import image_size, pose_report
out = {}
for pair in sys.argv[1:]:
    b, c = pair.split(':')
    insp = Inspector.load(b)
    cat = load_category(c, size=image_size(Path(b)))
    res = []
    for i in range(0, len(cat.test), 8):
        chunk = cat.test[i:i+8]
        res += insp.inspect(torch.stack([q.image for q in chunk]))
    rep = pose_report(torch.from_numpy(np.stack([r.pose_matrix for r in res])), torch.stack([q.w2c for q in cat.test]),
                      torch.stack([q.K for q in cat.test]), cat.width, cat.height, insp.scene.to('cpu'), 224)
    for q, r, px in zip(cat.test, res, rep['per_query_reproj_px']):
        if r.refine.get('pnp_path') == 'none' or not r.refine.get('pnp_accepted') or px > 1:
            print(Path(c).name, q.name, r.refine.get('pnp_path'), r.refine.get('pnp_reason')[:60], 'ecc', r.refine.get('ecc_shift_px'), 'true %.2f' % px, r.verdict, round(r.score, 2), flush=True)
