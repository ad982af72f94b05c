"""Issue 22, session 20: a look at test queries through the product: for each, the query with its
defect mask outlined, the reference, the absolute colour difference (x3) and the anomaly map
(scaled to its maximum), one row each, saved as OUT.png.

    python docs/results/issue22_look.py CATEGORY_DIR BUNDLE_DIR OUT.png SPLIT/NAME [...]
"""
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from models.inspector import Inspector
cat, bundle, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
insp = Inspector.load(bundle, device="cpu")
rows = []
for n in names:
    img = np.asarray(Image.open(cat / "test" / f"{n}.png").convert("RGB")).astype(np.float32) / 255
    x = insp.prepare(img)
    r = insp.inspect(x[None])[0]
    mpath = cat / "ground_truth" / f"{n}_mask.png"
    q = (x.numpy().clip(0, 1) * 255).astype(np.uint8)
    ref = (np.clip(r.reference, 0, 1) * 255).astype(np.uint8)
    diff = np.clip(np.abs(q.astype(int) - ref.astype(int)) * 3, 0, 255).astype(np.uint8)
    amap = r.anomaly_map
    a = (np.clip(amap / (amap.max() + 1e-9), 0, 1) * 255).astype(np.uint8)
    a3 = np.stack([a] * 3, -1)
    if mpath.exists():
        m = np.asarray(Image.open(mpath).resize((q.shape[1], q.shape[0]), Image.NEAREST)) > 0
        if m.ndim == 3: m = m[..., 0]
        qm = q.copy(); edge = m ^ np.pad(m, 1)[2:, 1:-1]; qm[edge] = [255, 0, 0]
    else:
        qm = q
    rows.append(np.concatenate([qm, ref, diff, a3], 1))
    print(n, r.score, r.threshold, r.verdict, r.refine.get("path"))
Image.fromarray(np.concatenate(rows, 0)).resize((4 * 400, 400 * len(rows)), Image.NEAREST).save(out)
