"""Issue 22, session 26 (a diagnosis; it changes nothing): Lego's test-split AUPRO with the
masks nearest-resized once, from the photographs' own size straight to 224 px, beside the
product's evaluation, which loads them at the bundle's size and then nearest-resizes to 224
(two nearest resizes). Thin burr strokes fall apart into small regions on the way, and AUPRO
weighs every region alike (session 20). The maps are the default mode's.

    python docs/results/issue22_mask_resize.py BUNDLE_DIR CATEGORY_DIR
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from models.data import load_category
from models.images import resize_mask
from models.inspector import Inspector
from models.metrics import aupro, pixel_auroc
from training.evaluate import image_labels_and_masks, resize_maps

bundle, root = Path(sys.argv[1]), Path(sys.argv[2])
ins = Inspector.load(bundle, device="cpu")
cat = load_category(root, size=ins.width)
full = load_category(root)  # the masks at the photographs' own size
queries = cat.test
maps = []
for i in range(0, len(queries), 8):
    maps += [torch.from_numpy(r.anomaly_map) for r in ins.inspect(torch.stack([q.image for q in queries[i:i + 8]]))]
maps224 = resize_maps(torch.stack(maps), 224)
_, twice = image_labels_and_masks(queries, 224)
once = np.stack([resize_mask(q.mask.numpy(), 224, 224) for q in full.test])
for name, masks in (("twice (the product's evaluation)", twice), ("once, from the photographs' size", once)):
    regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
    print(f"{name}: {regions} regions, {int(masks.sum())} pixels; pixel AUROC {pixel_auroc(masks, maps224):.4f}, "
          f"AUPRO {aupro(masks, maps224):.4f}")
