"""Issue 22: was the gallery's correction right where the refinement dropped it? (a diagnosis)

A gallery PnP correction that no polish confirms is compared at the end with a render at
IRPRN's pose, and dropped when that matches the query better (``models.refine``). For each
listed test view this driver runs the default mode as shipped and with that last comparison
skipped (the gallery's correction kept), and prints both poses' true alignment errors.

Usage: ``PYTHONPATH=. python docs/results/issue22_unconfirmed.py BUNDLE/CAT CATEGORY_DIR
test/good/000,test/Missing/006``."""

from __future__ import annotations

import inspect
import sys
import textwrap

import numpy as np
import torch

from models import inspector as I
from models import refine as R
from models.data import load_category
from training.evaluate import pose_report

_DROP = "if _photo_error(out[j], queries[i]) <= err[i]:"


def _kept():
    """``gallery_pnp_refine`` with the final comparison skipped (built from its source)."""
    source = textwrap.dedent(inspect.getsource(R.gallery_pnp_refine))
    if source.count(_DROP) != 1:
        raise RuntimeError("models.refine.gallery_pnp_refine changed: update this driver")
    space = dict(vars(R))
    exec(compile(source.replace(_DROP, "if False:"), R.__file__, "exec"), space)  # noqa: S102 (our own source)
    return space["gallery_pnp_refine"]


def main(bundle: str, category_dir: str, names: str) -> None:
    wanted = names.split(",")
    shipped = I.gallery_pnp_refine
    for label, fn in (("shipped", shipped), ("gallery kept", _kept())):
        I.gallery_pnp_refine = fn
        inspector = I.Inspector.load(bundle)
        category = load_category(category_dir, size=inspector.width)
        views = [v for v in category.test if v.name in wanted]
        results = inspector.inspect(torch.stack([v.image for v in views]))
        report = pose_report(torch.from_numpy(np.stack([r.pose_matrix for r in results])),
                             torch.stack([v.w2c for v in views]), torch.stack([v.K for v in views]),
                             category.width, category.height, inspector.scene.to("cpu"), 224)
        for v, r, px in zip(views, results, report["per_query_reproj_px"]):
            print(f"{label:12s} {v.name:18s} {px:7.2f} px  {r.refine.get('pnp_path'):28s} {r.verdict:9s} "
                  f"{r.score:9.2f}  {r.refine.get('pnp_reason', '')[:70]}")
    I.gallery_pnp_refine = shipped


if __name__ == "__main__":
    main(*sys.argv[1:4])
