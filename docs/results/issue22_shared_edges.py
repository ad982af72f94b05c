"""Issue 22, session 18: `lab` (the `cpu` preset's scorer) against `lab_shared` (`structure`'s
edge strength the pixel-wise minimum of the photograph's and the render's) and `lab_s2` (blur
sigma 2), on the four self-checks' selection data plus 2 copies of each held-out view with a
small part gone from inside (a disc of 3-6 % of the width centred at least 2 px inside the
outline, filled by OpenCV's Telea inpainting, at least 10 Delta E*ab on average in its mask).
Thresholds: the 98th percentile of each variant's clean held-out image scores (the product's rule).

    python docs/results/issue22_shared_edges.py OUT.json BUNDLES_DIR:CATEGORY_DIR [...]
"""
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from issue22_selection_terms import compare, selection, structure_figures
from lab.scorer_study import Features, _masks224
from models.camera import perturb_pose
from models.inspector import align_references
from models.refine import RefineConfig
from models.scoring import edge_strength, lab_terms
from training.defects import foreground, visible
from training.evaluate import render_references

INSIDE_COPIES, TRIES, SEED = 2, 50, 2000


def inside_missing(image: np.ndarray, background, rng: np.random.Generator):
    """A disc inside the object filled from its surroundings, or None when no draw is visible."""
    h, w = image.shape[:2]
    fg = foreground(image, background)
    inner = np.argwhere(cv2.erode(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool))
    u8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    for _ in range(TRIES):
        cy, cx = inner[rng.integers(len(inner))]
        disc = np.zeros((h, w), np.uint8)
        cv2.circle(disc, (int(cx), int(cy)), max(1, int(rng.uniform(0.015, 0.03) * w)), 1, -1)
        mask = disc.astype(bool) & fg
        out = image.copy()
        out[mask] = cv2.inpaint(u8, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)[mask].astype(np.float32) / 255
        if visible("stain", image, out, mask):  # the stains' floor: MIN_PIXELS and STAIN_MIN_DELTA_E
            return out, mask
    return None


def inside_set(s: SimpleNamespace, held: list, seed: int = SEED):
    rng = np.random.default_rng(seed)
    images, masks, poses = [], [], []
    for v in held:
        for _ in range(INSIDE_COPIES):
            painted = inside_missing(v.image.numpy(), s.category.background, rng)
            if painted is not None:
                images.append(painted[0]), masks.append(painted[1]), poses.append(v.w2c)
    K = held[0].K
    sigma = 1.0 / (math.sqrt(2) * float(K[0, 0]))  # the self-check's 1 px rms jitter
    poses = perturb_pose(torch.stack(poses).double(), sigma, 0.0, torch.Generator().manual_seed(seed))
    images = torch.from_numpy(np.stack(images))
    Ks = K[None].expand(len(images), 3, 3)
    refs = render_references(s.scene, poses, Ks, s.category.width, s.category.height)
    refs = align_references(images, refs.cpu(), RefineConfig()).cpu()
    return images, refs, _masks224(masks), len(held)


def lab_and_query_edges(scorer, images, refs):
    lab, qedges = [], []
    for i in range(0, len(images), 16):
        q, r = scorer.squares(images[i:i + 16]), scorer.squares(refs[i:i + 16])
        lab.append(lab_terms(q, r, scorer.tolerance)), qedges.append(edge_strength(q))
    return torch.cat(lab), torch.cat(qedges)


def selection_with_inside(bundles: Path, category_dir: Path, seed: int | None = None):
    """The self-check's selection data plus the inside-missing copies: the queries' labels,
    masks, kinds and silhouette evidence (``both``), the `lab` terms, the renders' edge strength
    and the photographs' edge strength. ``seed``: None for the set of sessions 18-20 (the
    self-check's own painting); a number for a fresh set (its painting, jitter and copies)."""
    from training.selfcheck import heldout_views

    s = selection(bundles, category_dir) if seed is None else selection(bundles, category_dir, seed)
    held = heldout_views(Path(bundles), Path(category_dir))[3]
    images, refs, masks, n_held = inside_set(s, held) if seed is None else inside_set(s, held, seed + SEED)
    f = Features(s.scorer, images, refs)
    lab0, qe0 = lab_and_query_edges(s.scorer, s.images, s.refs)
    lab1, qe1 = lab_and_query_edges(s.scorer, images, refs)
    n = len(images)
    print(s.category.name, "inside-missing copies painted", n, "of", INSIDE_COPIES * n_held, flush=True)
    both = SimpleNamespace(
        category=s.category, scorer=s.scorer,
        f=SimpleNamespace(silhouette=torch.cat([s.f.silhouette, f.silhouette])),
        labels=np.concatenate([s.labels, np.ones(n, bool)]), masks=np.concatenate([s.masks, masks]),
        kinds=np.concatenate([s.kinds, np.array(["inside_missing"] * n)]),
        images=torch.cat([s.images, images]), refs=torch.cat([s.refs, refs]))
    terms = torch.cat([torch.cat([lab0, s.f.terms[:, 1:]], 1), torch.cat([lab1, f.terms[:, 1:]], 1)])
    return both, terms, torch.cat([s.f.edges, f.edges]), torch.cat([qe0, qe1])


def with_kinds(out: dict, both: SimpleNamespace) -> dict:
    """``out``'s figures, each with how many defects of each kind the selection data hold."""
    of_kind = {str(k): int((both.kinds == k).sum()) for k in sorted(set(both.kinds)) if k != "good"}
    for r in out.values():
        r["of_by_kind"] = of_kind
    return out


def measure(bundles: Path, category_dir: Path) -> dict:
    both, terms, ref_edges, query_edges = selection_with_inside(bundles, category_dir)
    shared = torch.minimum(ref_edges, query_edges)
    s2 = SimpleNamespace(**{**vars(both), "scorer": SimpleNamespace(sigma=2.0)})
    out = {"lab": structure_figures("lab", both, terms, ref_edges),
           "lab_shared": structure_figures("lab_shared", both, terms, shared),
           "lab_s2": structure_figures("lab_s2", s2, terms, ref_edges)}
    return with_kinds(out, both)

if __name__ == "__main__":
    compare(measure, ("lab", "lab_shared", "lab_s2"))
