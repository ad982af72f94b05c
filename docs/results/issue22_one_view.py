"""One test view through the default mode under the flow polish's variants
(``issue22_flow_corners.VARIANTS``): score, pose error, what the refinement did, and a
picture (query, reference, map over the threshold; one row per variant).

Usage: ``PYTHONPATH=.:docs/results python docs/results/issue22_one_view.py BUNDLE/CAT
CATEGORY_DIR test/good/009 OUT.png [VARIANT ...]`` (default: product klt-2)."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch
from PIL import Image

import issue22_flow_corners as fc
from models import camera, data
from models import refine as R
from models.inspector import Inspector


def main(bundle: str, category_dir: str, name: str, out: str, variants: list[str]) -> None:
    base = Inspector.load(bundle)
    query = next(v for v in data.load_category(category_dir, size=base.width).test if v.name == name)
    rows = []
    for variant in variants:
        R.flow_matches, rounds = fc.VARIANTS[variant]
        inspector = Inspector.load(bundle, refine=dataclasses.replace(base.config.refine, flow_rounds=rounds))
        r = inspector.inspect(query.image[None])[0]
        err = camera.pose_errors(torch.tensor(r.pose.world_to_camera, dtype=torch.float64), query.w2c)
        print(f"{variant}: score {r.score:.3f} ({r.verdict}), rotation {float(err['rot_deg']):.3f} deg, path "
              f"{r.refine.get('pnp_path')}, ECC {r.refine.get('ecc_reason') or 'ok'}")
        ratio = np.clip(r.anomaly_map / r.threshold / 2, 0, 1)[..., None]
        rows.append(np.concatenate([(query.image.numpy() * 255).astype(np.uint8),
                                    (np.clip(r.reference, 0, 1) * 255).astype(np.uint8),
                                    (ratio * np.array([255, 0, 0])).astype(np.uint8)], axis=1))
    R.flow_matches = fc.VARIANTS["product"][0]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


if __name__ == "__main__":
    main(*sys.argv[1:5], sys.argv[5:] or ["product", "klt-2"])
