"""Issue 22, session 32: a look at views against the Gaussian render at their true poses, aligned as
the product aligns a query. One pair of rows per view: the photograph, the render, the absolute
difference x4 and the anomaly map (scaled to its maximum); then the same four zoomed on the map's
peak (a 48 px window). Views are named as the category names them (`train/good/063`,
`test/Burrs/007`).

    python docs/results/issue22_peek.py BUNDLE_OR_WORK_DIR CATEGORY_DIR OUT.png NAME [...]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab.workdir import open_inspector
from models.data import load_category
from models.inspector import InspectorConfig, align_references
from models.refine import RefineConfig
from models.splat.scene import render
from training.splats import preset

bundle, cat, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
c = load_category(cat, size=preset("cpu").image_size)
ins = open_inspector(bundle, InspectorConfig(pose="oracle"), device="cpu", camera=(c.width, c.height, c.K))
views = {v.name: v for v in [*c.train, *c.test]}
rows = []
for name in names:
    v = views[name]
    img = v.image.float()[None]
    ref = render(ins.scene, v.w2c.float()[None], v.K.float()[None], img.shape[2], img.shape[1]).colors.clamp(0, 1)
    ref = align_references(img, ref, RefineConfig())
    amap, score = ins.scorer(img, ref)
    a = amap[0].numpy()
    y, x = np.unravel_index(a.argmax(), a.shape)
    h = 24
    y0, x0 = int(np.clip(y - h, 0, a.shape[0] - 2 * h)), int(np.clip(x - h, 0, a.shape[1] - 2 * h))
    photo, reference = img[0].numpy(), ref[0].numpy()
    panels = [photo, reference, np.clip(np.abs(photo - reference) * 4, 0, 1), np.repeat((a / a.max())[..., None], 3, -1)]
    full = np.concatenate(panels, 1)
    zoom = np.concatenate([p[y0:y0 + 2 * h, x0:x0 + 2 * h] for p in panels], 1)
    factor = full.shape[0] // zoom.shape[0]
    zoom = np.kron(zoom, np.ones((factor, factor, 1)))
    zoom = np.pad(zoom, ((0, full.shape[0] - zoom.shape[0]), (0, full.shape[1] - zoom.shape[1]), (0, 0)))
    rows += [full, zoom]
    print(f"{name}: score {float(score[0]):.3f}, the map's peak at ({x}, {y})")
Image.fromarray((np.concatenate(rows, 0) * 255).round().astype(np.uint8)).save(out)
