"""Issue 22, session 27 (a diagnosis; it changes nothing): does the `cpu` preset's SH degree 1
help or hurt on views the Gaussian model never saw? The seeds are Lambertian under fixed
lights, so a view-dependent colour term could only extrapolate badly. Each view is rendered
at its true pose twice, with the model's SH degree and with its DC term alone (degree 0), and
compared with the photograph by PSNR: training views (fitted) and the test split's good views
(never seen).

    python docs/results/issue22_sh_degree.py CATEGORY_DIR BUNDLE_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from models.bundle import FILES
from models.data import load_category
from models.splat.scene import GaussianScene, render

cat, bundle = Path(sys.argv[1]), Path(sys.argv[2])
scene = GaussianScene.load(bundle / FILES["scene"], device="cpu")
c = load_category(cat, size=json.loads((bundle / "manifest.json").read_text())["camera"]["width"])
print(f"SH degree {scene.sh_degree}, {scene.num_gaussians} Gaussians; mean |shN| "
      f"{scene.shN.abs().mean().item():.4f}, mean |sh0| {scene.sh0.abs().mean().item():.4f}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


for split in ("train", "test"):
    views = [v for v in getattr(c, split) if split == "train" or v.label == "good"]
    by_degree = {d: [] for d in range(scene.sh_degree, -1, -1)}
    for v in views:
        for d in by_degree:
            out = render(scene, v.w2c.float()[None], v.K.float()[None], v.image.shape[1], v.image.shape[0], sh_degree=d)
            by_degree[d].append(psnr(out.colors[0].clamp(0, 1), v.image.float()))
    print(split, f"{len(views)} views:", ", ".join(f"SH degree {d} {np.mean(p):.2f} dB" for d, p in by_degree.items()))
