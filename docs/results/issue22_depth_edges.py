"""Issue 22, session 25 (a diagnosis on a test split; it chooses nothing): the five maps with
the pre-blur evidence removed within R px of the render's depth edges (a relative depth jump over
T to a 4-neighbour, on the object), on a synth test split at true poses, each map over the
bundle's own level. Does the good views' render residue sit on the depth edges?

    python docs/results/issue22_depth_edges.py BUNDLE_DIR CATEGORY_DIR T[,T...] R[,R...]
"""
import sys
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from models.data import load_category
from models.inspector import Inspector, align_references
from models.refine import RefineConfig
from models.scoring import EITHER_MAPS, _either_pres, blur_maps, edge_strength, silhouette_evidence
from models.splat.scene import render
from training.splats import preset

bundle, cat = Path(sys.argv[1]), Path(sys.argv[2])
ins = Inspector.load(bundle, device="cpu")
c = load_category(cat, size=preset("cpu").image_size)
sc = ins.scorer
qs = c.test
imgs = torch.stack([q.image for q in qs]).float()
poses = torch.stack([q.w2c for q in qs]).float(); Ks = torch.stack([q.K for q in qs]).float()
refs, depths, alphas = [], [], []
for i in range(0, len(qs), 8):
    out = render(ins.scene, poses[i:i+8], Ks[i:i+8], imgs.shape[2], imgs.shape[1], with_depth=True)
    refs.append(out.colors.clamp(0, 1)); depths.append(out.depths[..., 0]); alphas.append(out.alphas[..., 0])
refs = align_references(imgs, torch.cat(refs), RefineConfig())
depth, alpha = torch.cat(depths), torch.cat(alphas)
d224 = F.interpolate(depth[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
a224 = F.interpolate(alpha[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
# relative depth jump to any 4-neighbour, and the alpha edge (the outline)
pad = F.pad(d224[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
jump = torch.stack([(pad[:, 1:-1, 2:] - d224).abs(), (pad[:, 1:-1, :-2] - d224).abs(),
                    (pad[:, 2:, 1:-1] - d224).abs(), (pad[:, :-2, 1:-1] - d224).abs()]).amax(0) / d224.clamp(min=1e-3)
q224, r224 = sc._pair(imgs, refs)
terms = sc._terms(q224, r224); sil = silhouette_evidence(q224, r224, sc.background); edges = edge_strength(r224)
pres = list(_either_pres(terms, sc.stats, sil, edges, 5))
for thr in [float(t) for t in sys.argv[3].split(",")]:
  for radius in [int(r) for r in sys.argv[4].split(",")]:
    edge = ((jump > thr) & (a224 > 0.5)).float()[:, None]
    if radius:
        edge = F.max_pool2d(edge, 2 * radius + 1, 1, radius)
    keep = 1 - edge[:, 0]
    per = torch.stack([(blur_maps(p * keep, sc.sigma) / lv).flatten(1).amax(1) for p, lv in zip(pres, sc.stats.levels)], 1)
    # relevel each map on nothing: report raw per-map ratio to the product's level
    s = per.amax(1).numpy()
    lab = np.array([q.label != "good" for q in qs])
    from models.metrics import auroc
    good = np.sort(s[~lab])[::-1]
    weak = sorted((float(v), q.name) for v, q, l in zip(s, qs, lab) if l)[:3]
    print(f"jump>{thr} r{radius}: masked {float(edge.mean()):.3f} AUROC {auroc(lab, s):.4f} good top {np.round(good[:4],3)} weakest {[(round(v,3),n.split('/',1)[1]) for v,n in weak]}", flush=True)
