"""Issue 22, session 23 (a diagnosis on a test split's good views; it chooses nothing): what the
render's residue on unseen views is made of. Each good test view of a category, at its true
pose, prepared as the product prepares a query, against (a) the bundle's render, ECC-aligned
as the refinement aligns it, with the photograph and the render each blurred by a few sigmas,
and (b) a reference of the nearest training photographs, warped to the view by the render's
depth (each sample kept where the training view's own render depth agrees and its pixel is
opaque; the render where no photograph sees the pixel). Figures: the mean colour residual
(squared RGB difference, summed over the channels) on the object's pixels.

    python docs/results/issue22_residue_looks.py CATEGORY_DIR BUNDLE_DIR [OUT.json]
"""
import json
import sys
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F

from models.data import GOOD, load_category
from models.inspector import Inspector, align_references
from models.refine import RefineConfig
from models.splat.scene import render

NEAREST, DEPTH_TOL, OPAQUE = 3, 0.01, 0.98


def renders(scene, poses, Ks, size, batch=8):
    out = [render(scene, poses[i:i + batch].float(), Ks[i:i + batch].float(), size, size, with_depth=True)
           for i in range(0, len(poses), batch)]
    return (torch.cat([o.colors for o in out]).clamp(0, 1), torch.cat([o.alphas for o in out])[..., 0],
            torch.cat([o.depths for o in out])[..., 0])


def blur(images, sigma):
    if sigma == 0:
        return images
    k = 2 * round(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(images.permute(0, 3, 1, 2), (k, k), (sigma, sigma)).permute(0, 2, 3, 1)


def warped_photos(train, pose, K, colour, alpha, depth):
    """The nearest training photographs warped to ``pose`` by the render's ``depth``."""
    images, poses, Ks, alphas, depths, centres = train
    size = colour.shape[0]
    centre = -(pose[:3, :3].T @ pose[:3, 3])
    cos = F.cosine_similarity(centres, centre[None], dim=1)
    v, u = torch.meshgrid(*(torch.arange(size, dtype=torch.float64) + 0.5,) * 2, indexing="ij")
    z = depth.double()
    cam = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    world = (cam - pose[:3, 3]) @ pose[:3, :3]
    acc, weight = torch.zeros(size, size, 3, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64)
    for j in cos.topk(NEAREST).indices.tolist():
        p = world @ poses[j][:3, :3].T + poses[j][:3, 3]
        uj = Ks[j][0, 0] * p[..., 0] / p[..., 2] + Ks[j][0, 2]
        vj = Ks[j][1, 1] * p[..., 1] / p[..., 2] + Ks[j][1, 2]
        grid = torch.stack([uj / size * 2 - 1, vj / size * 2 - 1], -1)[None].float()
        sample = lambda t: F.grid_sample(t[None], grid, align_corners=False)[0]  # noqa: E731
        col = sample(images[j].permute(2, 0, 1)).permute(1, 2, 0).double()
        seen = ((p[..., 2] - sample(depths[j][None])[0]).abs() < DEPTH_TOL * p[..., 2]) \
            & (sample(alphas[j][None])[0] > OPAQUE) & (grid[0].abs().amax(-1) < 1)
        w = float(cos[j]) ** 8 * seen.double()
        acc += col * w[..., None]
        weight += w
    use = (weight > 0) & (alpha > OPAQUE)
    out = colour.double().clone()
    out[use] = acc[use] / weight[use][:, None]
    return out.float()


def sources(ins: Inspector, c):
    """What the warped-photograph reference needs: the query preparation, the prepared size,
    intrinsics at that size, and the training photographs with their renders' alpha and depth."""
    prep = lambda img: ins.prepare(img.numpy())  # noqa: E731
    size = prep(c.test[0].image).shape[1]
    scale = size / c.width

    def K_at(K):
        K = K.double().clone()
        K[:2] *= scale
        return K
    t_poses = torch.stack([v.w2c.double() for v in c.train])
    t_Ks = torch.stack([K_at(v.K) for v in c.train])
    _, t_alpha, t_depth = renders(ins.scene, t_poses, t_Ks, size)
    train = (torch.stack([prep(v.image) for v in c.train]).float(), t_poses, t_Ks, t_alpha, t_depth,
             torch.stack([-(p[:3, :3].T @ p[:3, 3]) for p in t_poses]))
    return prep, size, K_at, train


def main(category_dir: Path, bundle: Path) -> dict:
    ins = Inspector.load(bundle, device="cpu")
    c = load_category(category_dir)
    prep, size, K_at, train = sources(ins, c)
    goods = [q for q in c.test if q.label == GOOD]
    x = torch.stack([prep(q.image) for q in goods]).float()
    poses, Ks = torch.stack([q.w2c.double() for q in goods]), torch.stack([K_at(q.K) for q in goods])
    colour, alpha, depth = renders(ins.scene, poses, Ks, size)
    aligned = align_references(x, colour, RefineConfig())
    warped = torch.stack([warped_photos(train, poses[i], Ks[i], colour[i], alpha[i], depth[i]) for i in range(len(goods))])
    fg = ((colour - 1).abs().amax(-1) > 0.05) | ((x - 1).abs().amax(-1) > 0.05)
    mse = lambda a, b: round(float(((a - b) ** 2).sum(-1)[fg].mean()), 5)  # noqa: E731
    out = {"views": len(goods), "size": size,
           "blur (photograph sigma, render sigma)": {f"{sq},{sr}": mse(blur(x, sq), blur(aligned, sr))
                                                     for sq in (0, 0.3, 0.5, 0.7, 1.0) for sr in (0, 0.5)},
           "render at the true pose": mse(x, colour), "nearest photographs warped by the render's depth": mse(x, warped)}
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(result, indent=1) + "\n")
