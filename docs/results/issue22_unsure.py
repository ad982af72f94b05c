"""Issue 22, session 38: evidence discounted where the calibration models disagree (the rule is in
docs/RESULTS.md, session 38, written before these figures).

``field FOLDS_DIR BUNDLE_DIR CATEGORY_DIR OUT.safetensors``: U, one value per Gaussian of the bundle's
shipped model: the blend-weighted mean of D (the per-pixel standard deviation of the five fold
models' renders, the mean over RGB) over novel poses (each training camera orbited ``ORBIT_DEG``
about the object's centre, about a random axis perpendicular to its view; seed 0).

``maps CACHE_DIR SEED FOLDS_DIR BUNDLE_DIR CATEGORY_DIR FIELD.safetensors``: U rendered by the shipped
model at each row's pose of the caches ``kf<SEED>_<category>_f<k>.pt`` (``issue22_kfold_eval.py
cache``: the same painting, jitter and order), at the scoring resolution: ``u<SEED>_<category>_f<k>.pt``.

``compare CACHE_DIR SEED OUT.json CATEGORY [...]``: the arms of ``ARMS`` (the environment's ``ARMS``,
default ``product,unsure``; ``unsure_colour``: U's scales on the area maps alone), cross-fitted on five
folds (fit on four folds' clean copies, judge the fifth), as session 36's comparison.

``coverage CACHE_DIR SEED FOLDS_DIR BUNDLE_DIR CATEGORY_DIR [VIEW:FOLD,...]`` (a diagnosis): how many fitted
views saw the surface at each named held-out view's peak (its fold model) and at the test split's peaks and
defects (the shipped model).

``residue FOLDS_DIR BUNDLE_DIR CATEGORY_DIR VIEW:FOLD,... TEST_VIEW,... OUT.png`` (a diagnosis): is a
held-out view's blob its fold model's alone, or does the shipped model, fitted on the view, leave it too? With a
sheet of crops.

``kinds CACHE_DIR SEED CATEGORY [...]``: for each painted kind, the median percentile of U's mean in
its masks among the object's pixels (a diagnosis).

``test BUNDLE_DIR CATEGORY_DIR FIELD.safetensors CACHE_DIR SEED`` (reported, chooses nothing): the test
split at its true poses against the shipped model, aligned as the calibration aligns; each arm of ``ARMS``
(default all three) fitted on the cache's clean copies of all five folds, its threshold scaled by the
bundle's ``heldout_scale``.

    PYTHONPATH=.:docs/results python docs/results/issue22_unsure.py field /tmp/m36/kf/BL /tmp/m36/BLk/Lego \\
        ../shared/data/Lego /tmp/m38/U_Lego.safetensors
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from issue22_shared_edges import INSIDE_COPIES, SEED as INSIDE_SEED, TRIES  # noqa: F401 - the cache's constants
from models.bundle import open_bundle
from models.camera import perturb_pose
from models.data import load_category
from models.metrics import auroc
from models.scoring import (EITHER_MAPS, LEVEL_QUANTILE, _either_pres, blur_maps, quantile)
from models.splat.render import rasterization
from models.splat.scene import GaussianScene
from training.defects import KINDS
from training.evaluate import render_references
from training.selfcheck import SelfCheckConfig

FOLDS, RATE, COLOURS, ORBIT_DEG, BINS = 5, 0.02, 2, 8.0, 10


def _centre(w2cs: torch.Tensor) -> torch.Tensor:
    """The point nearest all the cameras' optical axes (least squares)."""
    c2w = torch.linalg.inv(w2cs.double())
    origins, dirs = c2w[:, :3, 3], F.normalize(c2w[:, :3, 2], dim=1)
    A = torch.zeros(3, 3, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    for o, d in zip(origins, dirs):
        P = torch.eye(3, dtype=torch.float64) - d[:, None] * d[None]
        A += P
        b += P @ o
    return torch.linalg.solve(A, b)


def novel_poses(w2cs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each camera orbited by ``ORBIT_DEG`` about the cameras' centre, about a random axis
    perpendicular to its optical axis."""
    centre, rng = _centre(w2cs), np.random.default_rng(seed)
    out = []
    for w2c in w2cs.double():
        c2w = torch.linalg.inv(w2c)
        view = F.normalize(c2w[:3, 2], dim=0)
        a = torch.from_numpy(rng.normal(size=3))
        axis = F.normalize(a - (a @ view) * view, dim=0)
        angle = math.radians(ORBIT_DEG)
        K = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
        R = torch.eye(3, dtype=torch.float64) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
        M = torch.eye(4, dtype=torch.float64)
        M[:3, :3], M[:3, 3] = R, centre - R @ centre  # a rotation about the centre, in world coordinates
        out.append(torch.linalg.inv(M @ c2w))
    return torch.stack(out)


def _feature_render(scene: GaussianScene, feature: torch.Tensor, w2cs: torch.Tensor, Ks: torch.Tensor, size: int):
    p = scene.params()
    image, alpha, _ = rasterization(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]),
                                    feature, w2cs.float(), Ks.float(), size, size,
                                    backgrounds=torch.zeros(len(w2cs), feature.shape[-1]))
    return image, alpha


def field(folds: Path, bundle: Path, category_dir: Path, out: Path) -> None:
    field_of(bundle, category_dir, [GaussianScene.load(folds / f"fold{f}.safetensors") for f in range(FOLDS)], out)


def field_of(bundle: Path, category_dir: Path, models: list[GaussianScene], out: Path) -> None:
    """U of the bundle's shipped model from the fold ``models`` (``field``'s body; session 46 passes a work
    folder's)."""
    t0 = time.time()
    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=False)
    shipped = GaussianScene.load(bundle / "splats" / "scene.safetensors")
    w2cs = torch.stack([v.w2c for v in category.train]).double()
    Ks = torch.stack([v.K for v in category.train]).float()
    poses = novel_poses(w2cs)
    n = shipped.num_gaussians
    weighted, weight = torch.zeros(n), torch.zeros(n)
    for i in range(0, len(poses), 4):
        P, K = poses[i:i + 4], Ks[i:i + 4]
        renders = torch.stack([render_references(m, P, K, width, width) for m in models])
        D = renders.std(0).mean(-1)  # [B, H, W]
        feature = torch.ones(n, 2, requires_grad=True)
        image, _ = _feature_render(shipped, feature, P, K, width)
        (image[..., 0] * D + image[..., 1]).sum().backward()
        weighted += feature.grad[:, 0]
        weight += feature.grad[:, 1]
        print(f"poses {i + len(P)}/{len(poses)}, D object median {float(D[D > 0].median()):.4f}, "
              f"{time.time() - t0:.0f} s", flush=True)
    seen = weight > 1e-6
    U = torch.where(seen, weighted / weight.clamp_min(1e-6), torch.zeros(n))
    U[~seen] = U[seen].median()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"unsure": U.contiguous()}, str(out))
    print(f"{category_dir.name}: U over {int(seen.sum())} of {n} Gaussians seen; median {float(U.median()):.4f}, "
          f"99th pct {float(U.quantile(0.99)):.4f}; {time.time() - t0:.0f} s", flush=True)


def render_unsure(shipped: GaussianScene, U: torch.Tensor, w2cs: torch.Tensor, K: torch.Tensor, width: int,
                  size: int = 224) -> torch.Tensor:
    """``[N, size, size]``: U as the shipped model renders it at ``w2cs`` (background 0)."""
    out = []
    for i in range(0, len(w2cs), 8):
        P = w2cs[i:i + 8]
        with torch.no_grad():
            image, _ = _feature_render(shipped, U[:, None], P, K[None].expand(len(P), 3, 3), width)
        out.append(F.interpolate(image.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                 align_corners=False)[:, 0])
    return torch.cat(out)


def _cache_poses(held: list, seed: int, background) -> torch.Tensor:
    """The poses of a cache's rows, in its order: the self-check's copies (``painted_queries``
    with ``seed``), then the inside-missing copies (``issue22_shared_edges.inside_set``)."""
    from issue22_shared_edges import inside_missing

    cfg = SelfCheckConfig(seed=seed)
    per_view = cfg.clean_copies + cfg.per_kind * len(KINDS)
    K = held[0].K
    sigma = cfg.jitter_px / (math.sqrt(2) * float(K[0, 0]))
    first = perturb_pose(torch.stack([v.w2c for v in held for _ in range(per_view)]).double(), sigma, 0.0,
                         torch.Generator().manual_seed(cfg.seed))
    rng, poses = np.random.default_rng(seed + INSIDE_SEED), []
    for v in held:
        for _ in range(INSIDE_COPIES):
            if inside_missing(v.image.numpy(), background, rng) is not None:
                poses.append(v.w2c)
    sigma = 1.0 / (math.sqrt(2) * float(K[0, 0]))
    second = perturb_pose(torch.stack(poses).double(), sigma, 0.0, torch.Generator().manual_seed(seed + INSIDE_SEED))
    return torch.cat([first, second])


def maps(cache: Path, seed: int, folds: Path, bundle: Path, category_dir: Path, field_path: Path) -> None:
    # The painters draw from numpy's generator in the order the selection drew: the self-check's
    # painting first. Repainting here replays that draw only for the inside copies (their own rng).
    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=False)
    shipped = GaussianScene.load(bundle / "splats" / "scene.safetensors")
    U = load_file(str(field_path))["unsure"]
    for f in range(FOLDS):
        out = cache / f"u{seed}_{category_dir.name}_f{f}.pt"
        fitted = set(json.loads((folds / f"fold{f}.json").read_text())["views"])
        held = [v for v in category.train if v.name not in fitted]
        poses = _cache_poses(held, seed, category.background)
        n_rows = len(torch.load(cache / f"kf{seed}_{category_dir.name}_f{f}.pt", weights_only=False)["labels"])
        if len(poses) != n_rows:
            raise SystemExit(f"fold {f}: {len(poses)} poses for {n_rows} cached rows")
        torch.save(render_unsure(shipped, U, poses, held[0].K, width).half(), out)
        print(category_dir.name, "fold", f, len(poses), "rows", flush=True)


def unsure_scales(pres: list[torch.Tensor], u: torch.Tensor, fr: torch.Tensor) -> tuple[list[float], list[list[float]]]:
    """U's decile bounds over the object's pixels, and each map's 99th percentile per decile."""
    bins = [quantile(u[fr], float(q)) for q in torch.linspace(0, 1, BINS + 1)[1:-1]]
    which = torch.bucketize(u.contiguous(), torch.tensor(bins))
    scales = [[max(quantile(pre[which == b], 0.99), 1e-6) if bool((which == b).any()) else 1.0 for b in range(BINS)]
              for pre in pres]
    return bins, scales


def _scores(pres, levels, sigma) -> torch.Tensor:
    out = None
    for pre, level in zip(pres, levels):
        m = torch.cat([blur_maps(pre[i:i + 64], sigma).flatten(1).amax(1) for i in range(0, len(pre), 64)]) / level
        out = m if out is None else torch.maximum(out, m)
    return out


ARMS = {"product": (), "unsure": EITHER_MAPS, "unsure_colour": ("area3", "area5")}  # the maps U's scales divide


def _pres(d: dict, stats, u: torch.Tensor | None, unsure, arm: str = "product") -> list[torch.Tensor]:
    pres = list(_either_pres(d["terms"].float(), stats, d["sil"].float(), d["edges"].float(), len(EITHER_MAPS)))
    if unsure is None:
        return pres
    bins, scales = unsure
    which = torch.bucketize(u.float().contiguous(), torch.tensor(bins))
    return [pre / torch.tensor(s)[which] if name in ARMS[arm] else pre
            for name, pre, s in zip(EITHER_MAPS, pres, scales)]


def judge(cal: list[dict], cal_u: list[torch.Tensor], d: dict, u: torch.Tensor, arm: str) -> dict:
    from models.scoring import fit_normal_stats

    sigma = d["sigma"]
    keep = [~c["labels"] for c in cal]
    clean = {k: torch.cat([c[k][m].float() for c, m in zip(cal, keep)]) for k in ("terms", "sil", "edges")}
    clean["fr"] = torch.cat([c["fr"][m].bool() for c, m in zip(cal, keep)])
    cu = torch.cat([x[m].float() for x, m in zip(cal_u, keep)])
    stats = fit_normal_stats(clean["terms"], clean["sil"], clean["edges"], colours=COLOURS)  # scales, bins: no levels
    pres = _pres(clean, stats, None, None)
    unsure = unsure_scales(pres, cu, clean["fr"]) if ARMS[arm] else None
    if unsure is not None:
        pres = _pres(clean, stats, cu, unsure, arm)
    levels = [max(quantile(blur_maps(p, sigma).flatten(1).amax(1), LEVEL_QUANTILE), 1e-6) for p in pres]
    normal = _scores(pres, levels, sigma).numpy()
    threshold = float(np.quantile(normal, 1.0 - RATE))
    scores = _scores(_pres(d, stats, u, unsure, arm), levels, sigma).numpy()
    labels = d["labels"].numpy()
    return {"false_alarm_rate": float(np.mean(scores[~labels] > threshold)), "good": int((~labels).sum()),
            "found": int(np.sum(scores[labels] > threshold)), "of": int(labels.sum()),
            "image_auroc": float(auroc(labels, scores)),
            "found_by_kind": {k: int(np.sum(scores[np.array(d["kinds"]) == k] > threshold))
                              for k in sorted(set(d["kinds"]) - {"good"})}}


def compare(cache: Path, seed: int, out: Path, categories: list[str], arms: tuple[str, ...] = ("product", "unsure")
            ) -> None:
    t0, rows = time.time(), {}
    for name in categories:
        data = [torch.load(cache / f"kf{seed}_{name}_f{f}.pt", weights_only=False) for f in range(FOLDS)]
        us = [torch.load(cache / f"u{seed}_{name}_f{f}.pt") for f in range(FOLDS)]
        for arm in arms:
            rs = []
            for f in range(FOLDS):
                others = [g for g in range(FOLDS) if g != f]
                rs.append(judge([data[g] for g in others], [us[g] for g in others], data[f], us[f], arm))
            rows.setdefault(name, {})[arm] = {
                "found": sum(r["found"] for r in rs), "of": sum(r["of"] for r in rs),
                "mean_far": float(np.mean([r["false_alarm_rate"] for r in rs])),
                "mean_image_auroc": float(np.mean([r["image_auroc"] for r in rs])),
                "found_by_kind": {k: sum(r["found_by_kind"][k] for r in rs) for k in rs[0]["found_by_kind"]},
                "folds": rs}
            print(name, arm, {k: v for k, v in rows[name][arm].items() if k != "folds"},
                  f"{time.time() - t0:.0f} s", flush=True)
    summary = {arm: {"found": sum(rows[n][arm]["found"] for n in categories),
                     "of": sum(rows[n][arm]["of"] for n in categories),
                     "mean_far": float(np.mean([rows[n][arm]["mean_far"] for n in categories]))}
               for arm in arms}
    print("summary", json.dumps(summary), flush=True)
    out.write_text(json.dumps({"seed": seed, "seconds": round(time.time() - t0), "summary": summary, "rows": rows},
                              indent=1) + "\n")


def kinds(cache: Path, seed: int, categories: list[str]) -> None:
    """Where the painted defects lie in U: for each kind, the median over its copies of the percentile of U's mean
    in the mask among the object's pixels (the render's foreground) of the same copy."""
    for name in categories:
        pct = {}
        for f in range(FOLDS):
            d = torch.load(cache / f"kf{seed}_{name}_f{f}.pt", weights_only=False)
            u = torch.load(cache / f"u{seed}_{name}_f{f}.pt").float()
            for i in torch.nonzero(d["labels"]).flatten().tolist():
                mask, obj = d["masks"][i].bool(), d["fr"][i].bool()
                if mask.any() and obj.any():
                    pct.setdefault(d["kinds"][i], []).append(float((u[i][obj] < u[i][mask].mean()).float().mean()))
        print(name, {k: (round(float(np.median(v)), 2), len(v)) for k, v in sorted(pct.items())}, flush=True)


def coverage_field(scene: GaussianScene, views: list, width: int) -> torch.Tensor:
    """Per Gaussian of ``scene``: how many of ``views`` it draws at least one pixel's worth in (the sum of its
    blend weights over the view's pixels, by the gradient of a rendered per-Gaussian one)."""
    count = torch.zeros(scene.num_gaussians)
    for i in range(0, len(views), 4):
        vs = views[i:i + 4]
        feature = torch.ones(len(vs), scene.num_gaussians, 1, requires_grad=True)
        image, _ = _feature_render(scene, feature, torch.stack([v.w2c for v in vs]), torch.stack([v.K for v in vs]),
                                   width)
        image.sum().backward()
        count += (feature.grad[..., 0] >= 1.0).float().sum(0)
    return count


def coverage(cache: Path, seed: int, folds: Path, bundle: Path, category_dir: Path, pairs: list[tuple[str, int]]
             ) -> None:
    """A diagnosis (chooses nothing): at each named held-out view's peak (as ``issue22_heldout_tail.py size``
    finds it), the coverage the fold model that lacked it renders there (its Gaussians' ``coverage_field`` over
    the fold's fitted views); then at the test split's good views' peaks and in its defects' masks, the shipped
    model's coverage over every training view. Printed: the coverage in a 9 x 9 window, its percentile among
    the object's pixels (alpha > 0.5), and the share of the object with coverage under 1."""
    from issue22_heldout_tail import _clean, _load
    from models.inspector import Inspector, compare_at_poses
    from models.refine import RefineConfig
    from models.scoring import fit_normal_stats
    from training.splats import holdout_indices

    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=True)

    def read(scene, count, w2c, K, y, x, mask=None):
        with torch.no_grad():
            image, alpha = _feature_render(scene, count[:, None], w2c[None], K[None], width)
        cov, obj = image[0, ..., 0], alpha[0, ..., 0] > 0.5
        at = float(cov[max(0, y - 4):y + 5, max(0, x - 4):x + 5].mean()) if mask is None else float(cov[mask].mean())
        return (f"coverage {at:.2f} (object percentile {float((cov[obj] < at).float().mean()):.2f}; object median "
                f"{float(cov[obj].median()):.1f}, under 1 on {float((cov[obj] < 1).float().mean()):.3f})")

    if pairs:
        data = _load(cache, seed, category_dir.name)
        (terms, sil, edges), fold = _clean(data)
        stats = fit_normal_stats(terms, sil, edges, sigma=4.0, colours=COLOURS)
        n_train = len(category.train)
        copies = int((fold == 0).sum()) // len(holdout_indices(n_train, FOLDS, 0))
    for name, f in pairs:
        index = category.train.index(next(v for v in category.train if v.name == name))
        i = int(torch.nonzero(fold == f)[0]) + holdout_indices(n_train, FOLDS, f).index(index) * copies
        peak = torch.stack([blur_maps(p, 4.0)[0] / level for p, level in
                            zip(_either_pres(terms[i:i + 1], stats, sil[i:i + 1], edges[i:i + 1], len(EITHER_MAPS)),
                                stats.levels)]).amax(0)
        y, x = np.unravel_index(int(peak.argmax()), peak.shape)
        y, x = int(y * width / peak.shape[0]), int(x * width / peak.shape[1])
        model = GaussianScene.load(folds / f"fold{f}.safetensors")
        fitted = set(json.loads((folds / f"fold{f}.json").read_text())["views"])
        count = coverage_field(model, [v for v in category.train if v.name in fitted], width)
        v = category.train[index]
        print(f"{name} (fold {f}): peak {float(peak.max()):.2f}; fold model's {read(model, count, v.w2c, v.K, y, x)}",
              flush=True)
    inspector = Inspector.load(bundle, device="cpu")
    shipped = inspector.scene
    count = coverage_field(shipped, category.train, width)
    q = category.test
    images, poses, Ks = (torch.stack([getattr(v, k) for v in q]) for k in ("image", "w2c", "K"))
    maps, scores = compare_at_poses(shipped, inspector.scorer, images, poses, Ks, RefineConfig())
    for j, v in enumerate(q):
        amap = F.interpolate(maps[j][None, None].float(), size=(width, width), mode="bilinear")[0, 0]
        y, x = np.unravel_index(int(amap.argmax()), amap.shape)
        row = f"{v.name}: score {float(scores[j]):.3f}; at the peak {read(shipped, count, v.w2c, v.K, int(y), int(x))}"
        if v.label != "good":
            mask = F.interpolate(v.mask[None, None].float(), size=(width, width))[0, 0] > 0.5
            row += f"; in the mask {read(shipped, count, v.w2c, v.K, 0, 0, mask)}"
        print(row, flush=True)


def residue(folds: Path, bundle: Path, category_dir: Path, pairs: list[tuple[str, int]], test_names: list[str],
            image: Path) -> None:
    """A diagnosis (chooses nothing): is a held-out view's blob the fold model's alone? For each named held-out
    view, the peak of |photo - render| (the mean over RGB, blurred with sigma 2 px at the bundle's size) under the
    fold model that lacked it, and the shipped model's (fitted on that view) at the same place. A sheet at twice
    the bundle's size: each view's 80 x 80 crop at the peak (photo, fold model, shipped model), then each named
    test view's crop at its map's peak (a defect: its mask's centre), photo and shipped model."""
    from PIL import Image, ImageDraw

    from models.inspector import Inspector, compare_at_poses
    from models.refine import RefineConfig
    from models.splat.scene import render

    width = open_bundle(bundle).camera.width
    big = 2 * width
    small, large = (load_category(category_dir, size=w, load_test=True) for w in (width, big))
    inspector = Inspector.load(bundle, device="cpu")
    shipped = inspector.scene

    def draw(scene, v, size):
        return render(scene, v.w2c[None].float(), v.K[None].float(), size, size).colors.clamp(0, 1)[0]

    def crop(img, y, x):
        y0, x0 = min(max(0, y - 40), big - 80), min(max(0, x - 40), big - 80)
        return img[y0:y0 + 80, x0:x0 + 80]

    rows, labels = [], []
    for name, f in pairs:
        v, V = (next(t for t in c.train if t.name == name) for c in (small, large))
        model = GaussianScene.load(folds / f"fold{f}.safetensors")
        a, b = (blur_maps((draw(m, v, width) - v.image).abs().mean(-1)[None], 2.0)[0] for m in (model, shipped))
        y, x = divmod(int(a.argmax()), width)
        print(f"{name} (fold {f}): fold model's peak {float(a.max()):.3f} at ({y}, {x}); the shipped model there "
              f"{float(b[y, x]):.3f} ({float(b[y, x] / a.max()):.0%}), its own peak {float(b.max()):.3f}", flush=True)
        rows.append([crop(t, 2 * y, 2 * x) for t in (V.image, draw(model, V, big), draw(shipped, V, big))])
        labels.append(f"{name.split('/')[-1]} (held out of fold {f}): photo, fold model, shipped model")
    tests = [v for v in large.test if v.name in test_names]
    images, poses, Ks = (torch.stack([getattr(v, k) for v in tests]) for k in ("image", "w2c", "K"))
    maps, scores = compare_at_poses(shipped, inspector.scorer, images, poses, Ks, RefineConfig())
    for j, v in enumerate(tests):
        if v.label == "good":
            amap = F.interpolate(maps[j][None, None].float(), size=(big, big), mode="bilinear")[0, 0]
            y, x = divmod(int(amap.argmax()), big)
        else:
            ys, xs = torch.nonzero(v.mask, as_tuple=True)
            y, x = int(ys.float().mean()), int(xs.float().mean())
        rows.append([crop(v.image, y, x), crop(draw(shipped, v, big), y, x)])
        labels.append(f"{v.name}: photo, shipped model ({'peak' if v.label == 'good' else 'defect'})")
    cell, gap, head = 160, 8, 18
    sheet = Image.new("RGB", (3 * (cell + gap) + gap, len(rows) * (cell + head + gap) + gap), "white")
    pen = ImageDraw.Draw(sheet)
    for r, (row, label) in enumerate(zip(rows, labels)):
        top = gap + r * (cell + head + gap)
        pen.text((gap, top), label, fill="black")
        for c, t in enumerate(row):
            tile = Image.fromarray((t.numpy() * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (gap + c * (cell + gap), top + head))
    image.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(image)
    print("sheet", image, flush=True)


def _fit(clean: dict, cu: torch.Tensor, arm: str, sigma: float):
    """The statistics, U's scales (or None), the levels and the threshold on clean copies, as ``judge`` fits them."""
    from models.scoring import fit_normal_stats

    stats = fit_normal_stats(clean["terms"], clean["sil"], clean["edges"], colours=COLOURS)
    pres = _pres(clean, stats, None, None)
    unsure = unsure_scales(pres, cu, clean["fr"]) if ARMS[arm] else None
    if unsure is not None:
        pres = _pres(clean, stats, cu, unsure, arm)
    levels = [max(quantile(blur_maps(p, sigma).flatten(1).amax(1), LEVEL_QUANTILE), 1e-6) for p in pres]
    return stats, unsure, levels, float(np.quantile(_scores(pres, levels, sigma).numpy(), 1.0 - RATE))


def test(bundle: Path, category_dir: Path, field_path: Path, cache: Path, seed: int, arms: tuple[str, ...]) -> None:
    """Reported, chooses nothing: the test split at its true poses against the shipped model
    (aligned as the calibration aligns), each arm fitted on the cache's clean copies of all five
    folds, its threshold scaled by the bundle's convergence ratio (``heldout_scale``)."""
    from issue22_interior_cache import foregrounds
    from models.bundle import FILES, REPORTS
    from models.calibration import Calibration
    from models.inspector import align_references
    from models.refine import RefineConfig
    from models.scoring import AnomalyScorer

    calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
    scale = json.loads((bundle / REPORTS["calibration"]).read_text())["heldout_scale"]
    scorer = AnomalyScorer.from_config(calib.scorer)
    width = open_bundle(bundle).camera.width
    category = load_category(category_dir, size=width, load_test=True)
    shipped = GaussianScene.load(bundle / "splats" / "scene.safetensors")
    U = load_file(str(field_path))["unsure"]
    q = category.test
    images, poses, Ks = (torch.stack([getattr(v, k) for v in q]) for k in ("image", "w2c", "K"))
    refs = align_references(images, render_references(shipped, poses, Ks, width, width), RefineConfig())
    terms, sil = scorer.inputs(images, refs)
    d = {"terms": terms, "sil": sil, "edges": scorer.edges(refs)}
    u = render_unsure(shipped, U, poses.double(), Ks[0], width)
    labels = np.array([v.label != "good" for v in q])
    data = [torch.load(cache / f"kf{seed}_{category_dir.name}_f{f}.pt", weights_only=False) for f in range(FOLDS)]
    us = [torch.load(cache / f"u{seed}_{category_dir.name}_f{f}.pt") for f in range(FOLDS)]
    keep = [~c["labels"] for c in data]
    clean = {k: torch.cat([c[k][m].float() for c, m in zip(data, keep)]) for k in ("terms", "sil", "edges")}
    clean["fr"] = torch.cat([c["fr"][m].bool() for c, m in zip(data, keep)])
    cu = torch.cat([x[m].float() for x, m in zip(us, keep)])
    for arm in arms:
        stats, unsure, levels, threshold = _fit(clean, cu, arm, scorer.sigma)
        scores = _scores(_pres(d, stats, u, unsure, arm), levels, scorer.sigma).numpy() / (threshold * scale)
        print(f"{category_dir.name} {arm}: image AUROC {auroc(labels, scores):.4f}, found {int((scores[labels] > 1).sum())} "
              f"of {int(labels.sum())}, good rejected {int((scores[~labels] > 1).sum())} of {int((~labels).sum())}; "
              f"lowest defects {sorted((round(float(s), 3), v.name) for s, v, l in zip(scores, q, labels) if l)[:3]}, "
              f"highest good {sorted((round(float(s), 3), v.name) for s, v, l in zip(scores, q, labels) if not l)[-3:]}",
              flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "field":
        field(*(Path(a) for a in args))
    elif cmd == "maps":
        maps(Path(args[0]), int(args[1]), *(Path(a) for a in args[2:]))
    elif cmd == "compare":  # ARMS=a,b picks the arms (default: product and unsure)
        import os
        compare(Path(args[0]), int(args[1]), Path(args[2]), args[3:],
                tuple(os.environ.get("ARMS", "product,unsure").split(",")))
    elif cmd == "coverage":  # CACHE_DIR SEED FOLDS_DIR BUNDLE_DIR CATEGORY_DIR [VIEW:FOLD,...]
        pairs = [(a.split(":")[0], int(a.split(":")[1])) for a in args[5].split(",")] if len(args) > 5 else []
        coverage(Path(args[0]), int(args[1]), *(Path(a) for a in args[2:5]), pairs)
    elif cmd == "residue":  # FOLDS_DIR BUNDLE_DIR CATEGORY_DIR VIEW:FOLD,... TEST_VIEW,... OUT.png
        residue(Path(args[0]), Path(args[1]), Path(args[2]),
                [(a.split(":")[0], int(a.split(":")[1])) for a in args[3].split(",")], args[4].split(","), Path(args[5]))
    elif cmd == "kinds":  # CACHE_DIR SEED CATEGORY [...]
        kinds(Path(args[0]), int(args[1]), args[2:])
    elif cmd == "test":  # BUNDLE_DIR CATEGORY_DIR FIELD CACHE_DIR SEED
        import os
        test(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]), int(args[4]),
             tuple(os.environ.get("ARMS", "product,unsure,unsure_colour").split(",")))
    else:
        raise SystemExit(__doc__)
