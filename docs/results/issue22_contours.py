"""Issue 22, session 31: on a test split through the product (default mode), how many parts over the
threshold show no pixel of the returned map over it, and how many under it show one.

    python docs/results/issue22_contours.py BUNDLE_DIR CATEGORY_DIR
"""
import sys
from pathlib import Path
from models.data import load_category
from models.inspector import Inspector
bundle, cat = Path(sys.argv[1]), Path(sys.argv[2])
ins = Inspector.load(bundle, device="cpu")
c = load_category(cat, size=ins.width)
found = none = passed_with = 0
for q in c.test:
    r = ins.inspect(q.image[None].float())[0]
    over = int((r.normalised_map() > 0.5).sum())
    if r.is_anomalous:
        found += 1; none += over == 0
        if over == 0: print("  no contour:", q.name, round(r.score, 3), r.verdict)
    elif over:
        passed_with += 1
print(cat.name, "over the threshold:", found, "of which no pixel over 0.5:", none, "| under it with a pixel over:", passed_with)
