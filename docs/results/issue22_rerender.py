"""Issue 22, session 18 (report only): each test view's score with the product's reference (the
render at the refinement's first PnP pose, warped by its depth-warp polish and ECC) against a
fresh render at the refinement's final pose, ECC-aligned the same way. Prints the good views and
every view whose score moves by more than 10 %.

    python docs/results/issue22_rerender.py BUNDLE_DIR CATEGORY_DIR
"""
import sys
from pathlib import Path

from models.data import GOOD, load_category
from models.inspector import Inspector, align_references
from models.refine import RefineConfig

insp = Inspector.load(Path(sys.argv[1]), device="cpu")
for view in load_category(sys.argv[2], size=insp.width).test:
    batch = insp.start(view.image[None])
    insp.locate(batch)
    warped = float(insp.scorer(view.image[None], batch.references.cpu())[1][0])
    again = insp.start(view.image[None])
    again.poses = batch.poses.clone()
    insp.render_stage(again)
    fresh = float(insp.scorer(view.image[None], align_references(view.image[None], again.references.cpu(),
                                                                 RefineConfig()).cpu())[1][0])
    if abs(fresh - warped) > 0.1 * max(warped, 0.3) or view.label == GOOD:
        print(view.name, batch.refine[0].get("pnp_path"), f"warped {warped:.2f} re-rendered {fresh:.2f}", flush=True)
