"""Timing benchmarks, with the machine: `rpe-pad lab bench-render` (the renderer alone,
medians of repeated runs) and `rpe-pad lab bench` (the inspection pipeline per stage and by
batch size, against the peers' iterative pose optimisation)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from models import camera
from models.splat.scene import GaussianScene, render


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def random_scene(n: int, seed: int = 0, radius: float = 0.8) -> GaussianScene:
    """``n`` Gaussians in a ball of ``radius`` (object-sized, as a fitted MAD scene)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=gen)
    means = direction / direction.norm(dim=-1, keepdim=True) * radius * torch.rand(n, 1, generator=gen) ** (1 / 3)
    return GaussianScene(
        means=means,
        scales=torch.log(torch.rand(n, 3, generator=gen) * 0.02 + 0.004),
        quats=torch.randn(n, 4, generator=gen),
        opacities=torch.logit(torch.rand(n, generator=gen) * 0.9 + 0.05),
        sh0=torch.randn(n, 1, 3, generator=gen) * 0.5,
        shN=torch.zeros(n, 0, 3),
    )


def bench_render(
    scene: GaussianScene, size: int = 256, repeats: int = 10, devices: list[str] | None = None, backward: bool = True
) -> dict:
    """Median forward (and forward+backward) time of one view at ``size`` x ``size``."""
    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    eye = torch.tensor([[3.2, 1.4, 1.9]], dtype=torch.float64)
    viewmat = camera.look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    K = camera.intrinsics_from_fov(0.6911112070083618, size, size)[None].float()
    results = {"num_gaussians": scene.num_gaussians, "size": size, "repeats": repeats, "machine": machine()}
    for device in devices:
        sc = scene.to(device)
        vm, Kd = viewmat.to(device), K.to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        with torch.no_grad():
            render(sc, vm, Kd, size, size)  # warm-up (CUDA: kernel build/load)
            times = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                render(sc, vm, Kd, size, size)
                sync()
                times.append(time.perf_counter() - start)
        entry = {"forward_s_median": statistics.median(times), "forward_s_min": min(times)}
        if backward:
            params = {k: v.detach().clone().requires_grad_(True) for k, v in sc.params().items()}
            times = []
            for _ in range(max(3, repeats // 2)):
                sync()
                start = time.perf_counter()
                render(params, vm, Kd, size, size, sh_degree=sc.sh_degree).colors.sum().backward()
                sync()
                times.append(time.perf_counter() - start)
            entry["forward_backward_s_median"] = statistics.median(times)
        results[device] = entry
    return results


def load_or_random(scene_path: Path | None, gaussians: int) -> GaussianScene:
    return GaussianScene.load(scene_path) if scene_path else random_scene(gaussians)


# ------------------------------------------------------------------ rpe-pad bench
STAGES = ("match", "pose", "optimise", "refine", "render", "score")  # as Inspector.inspect times them
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def _queries(category_dir: Path, width: int, n: int) -> tuple[torch.Tensor, list[bool], int]:
    """``n`` query images ``[n, H, W, 3]``, whether each is defective, and how many distinct
    test views there are: the category's test views, repeated cyclically."""
    from models.data import load_category

    category = load_category(category_dir, size=width)
    if not category.test:
        raise ValueError(f"{category_dir}: no test views to benchmark with")
    images = torch.stack([q.image for q in category.test])
    order = torch.arange(n) % len(images)
    return images[order], [category.test[int(i)].is_anomalous for i in order], len(images)


def _image_auroc(scores: list[float], defective: list[bool], distinct: int) -> float | None:
    """Image AUROC of the queries timed one at a time (each test view counted once), when
    they hold both good and defective views; else None."""
    from models.metrics import auroc

    n = min(len(scores), distinct)
    if len(set(defective[:n])) < 2:
        return None
    return round(float(auroc(np.array(defective[:n], dtype=float), np.array(scores[:n], dtype=float))), 4)


def _at_threshold(scores: list[float], defective: list[bool], distinct: int, threshold: float,
                  verdicts: list[str]) -> dict:
    """The same queries (each test view once) at the bundle's calibrated threshold: the score's
    decision (``training.evaluate.decision_metrics``: recall, false-alarm rate and the counts)
    and the verdicts an operator sees (``review`` where the pose check did not verify)."""
    from training.evaluate import decision_metrics

    n = min(len(scores), distinct)
    labels = np.array(defective[:n], dtype=bool)
    out = {"views": n, **decision_metrics(labels, np.array(scores[:n], dtype=float), threshold)}
    out["verdicts"] = {kind: {v: sum(1 for d, x in zip(labels, verdicts[:n]) if d == want and x == v)
                              for v in ("anomalous", "review", "normal")}
                       for kind, want in (("defective", True), ("good", False))}
    return out


def bench_pipeline(bundle_dir: Path, category_dir: Path, modes: tuple[str, ...] = ("rpe", "rpe+refine"),
                   batch_sizes: tuple[int, ...] = BATCH_SIZES, iterative_queries: int = 2,
                   iterative_steps: int = 175, devices: list[str] | None = None, progress: bool = True,
                   single_queries: int = 8, k: int | None = None) -> dict:
    """Per-stage latency and throughput of the one inspection pipeline on a bundle (``k``:
    gallery matches per query, default the bundle's own).

    For each device (CPU, and CUDA when present) and each pose mode in ``modes``: one
    warm-up batch, then one batch of each size in ``batch_sizes`` (test views repeated
    cyclically); per-query stage times are the batch's stage times over its size
    (``Inspection.timings_ms``); throughput is queries per second of wall time. Batch size
    1 is ``single_queries`` different queries one at a time, reported by the stage times of
    the median query (by total time), with each stage's own median beside them. Then the
    peers' ``iterative`` mode on ``iterative_queries`` queries, one at a time (its cost
    does not change with batching), and the speed ratios ``iterative / mode`` of the
    per-query time (pose + render + score, at batch size 1). With both ``rpe`` and
    ``rpe+refine``: ``refine_added_ms``, what refinement adds to a query at batch size 1
    (median total of one minus the other's). Where the queries run one at a time (batch
    size 1, and ``iterative``) hold good and defective views, each run reports their image
    AUROC (each test view once) and, beside it, the recall and false-alarm rate at the bundle's
    calibrated threshold with the verdicts (``at_threshold``), so a speed-up is read at known
    accuracy on the same queries: give ``single_queries`` and ``iterative_queries`` the test
    split's size."""
    from tqdm.auto import tqdm

    import lab  # noqa: F401 (registers the evaluation-only pose modes)
    from models.inspector import Inspector

    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if single_queries < 1:
        raise ValueError(f"single_queries must be at least 1, got {single_queries}")
    result = {"bundle": str(bundle_dir), "category_dir": str(category_dir), "machine": machine(),
              "batch_sizes": list(batch_sizes), "k": k, "devices": {}}
    for device in devices:
        per_device: dict = {"modes": {}}
        images = None
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for mode in modes:
            inspector = Inspector.load(bundle_dir, device, pose=mode, k=k)
            result["k"] = inspector.config.k  # the caller's, else the bundle's
            if images is None:
                images, defective, distinct = _queries(category_dir, inspector.width,
                                                       max(*batch_sizes, iterative_queries, single_queries))
            inspector.inspect(images[:1])  # warm-up (ONNX session, CUDA kernels, caches)
            rows = []
            for b in tqdm(batch_sizes, desc=f"bench {device} {mode}", disable=not progress):
                runs = [images[i : i + 1] for i in range(single_queries)] if b == 1 else [images[:b]]
                timings, scores, verdicts, wall = [], [], [], 0.0
                for batch in runs:
                    sync()
                    start = time.perf_counter()
                    out = inspector.inspect(batch)
                    sync()
                    wall += time.perf_counter() - start
                    timings.append(out[0].timings_ms)
                    scores.append(out[0].score)
                    verdicts.append(out[0].verdict)
                median_query = sorted(timings, key=lambda t: t["total"])[(len(timings) - 1) // 2]
                stages = {k: round(v, 2) for k, v in median_query.items()}
                row = {"batch": b, "per_query_ms": stages, "throughput_qps": round(b * len(runs) / wall, 3),
                       "wall_s": round(wall, 3)}
                if len(runs) > 1:
                    row["queries"] = len(runs)
                    row["stage_medians_ms"] = {k: round(statistics.median(t[k] for t in timings), 2) for k in timings[0]}
                    row["image_auroc"] = _image_auroc(scores, defective, distinct)
                    row["at_threshold"] = _at_threshold(scores, defective, distinct, out[0].threshold, verdicts)
                    row["scores"], row["defective"] = [round(x, 4) for x in scores], defective[:len(scores)]
                rows.append(row)
            per_device["modes"][mode] = rows
        if iterative_queries > 0:
            inspector = Inspector.load(bundle_dir, device, pose="iterative", k=k,
                                       pose_options={"steps": iterative_steps})
            result["k"] = inspector.config.k
            if images is None:
                images, defective, distinct = _queries(category_dir, inspector.width, iterative_queries)
            Inspector.load(bundle_dir, device, pose="iterative", k=k,
                           pose_options={"steps": 1}).inspect(images[:1])  # warm-up
            times, scores, verdicts = [], [], []
            for i in tqdm(range(iterative_queries), desc=f"bench {device} iterative", disable=not progress):
                out = inspector.inspect(images[i : i + 1])
                times.append(out[0].timings_ms)
                scores.append(out[0].score)
                verdicts.append(out[0].verdict)
            per_device["iterative"] = {"queries": iterative_queries, "steps": iterative_steps,
                                       "per_query_ms": {k: round(statistics.median(t[k] for t in times), 1)
                                                        for k in times[0]},
                                       "image_auroc": _image_auroc(scores, defective, distinct),
                                       "at_threshold": _at_threshold(scores, defective, distinct, out[0].threshold,
                                                                     verdicts)}
            it_total = per_device["iterative"]["per_query_ms"]["total"]
            per_device["speedup_vs_iterative"] = {
                mode: round(it_total / one["per_query_ms"]["total"], 2)
                for mode, rows in per_device["modes"].items() if (one := _batch_one(rows)) is not None}
        ones = {mode: _batch_one(rows) for mode, rows in per_device["modes"].items()}
        if ones.get("rpe") and ones.get("rpe+refine"):
            per_device["refine_added_ms"] = round(ones["rpe+refine"]["per_query_ms"]["total"]
                                                  - ones["rpe"]["per_query_ms"]["total"], 1)
        result["devices"][device] = per_device
    return result


def _batch_one(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["batch"] == 1), None)


def bench_markdown(result: dict) -> str:
    """Tables: per-query stage times and throughput by batch size; the iterative ratios."""
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
             + (f", {m['cuda_device']}" if "cuda_device" in m else "") + "."]
    for device, d in result["devices"].items():
        for mode, rows in d["modes"].items():
            keys = [k for k in STAGES if k in rows[0]["per_query_ms"]]
            lines += ["", f"**{device}, pose mode `{mode}`** (ms per query; throughput in queries/s)", "",
                      "| batch | " + " | ".join(keys) + " | total | throughput |",
                      "|---:|" + "---:|" * (len(keys) + 2)]
            for r in rows:
                t = r["per_query_ms"]
                lines.append(f"| {r['batch']} | " + " | ".join(f"{t[k]:.1f}" for k in keys)
                             + f" | {t['total']:.1f} | {r['throughput_qps']:.2f} |")
            one = _batch_one(rows)
            if one and one.get("at_threshold"):
                auroc = "" if one.get("image_auroc") is None else f"image AUROC {one['image_auroc']:.3f}; "
                lines += ["", f"The {one['queries']} queries run one at a time ({one['at_threshold']['views']} test "
                              f"views, each once): {auroc}"
                              f"{_operating_point(one['at_threshold'])}."]
        if "iterative" in d:
            it = d["iterative"]
            auroc = "" if it.get("image_auroc") is None else f", image AUROC {it['image_auroc']:.3f}"
            auroc += f"; {_operating_point(it['at_threshold'])}" if it.get("at_threshold") else ""
            lines += ["", f"**{device}, `iterative`** ({it['steps']} steps, median of {it['queries']} queries{auroc}): "
                      f"{it['per_query_ms']['total'] / 1000:.1f} s per query; "
                      + ", ".join(f"`{mode}` is {r:.1f}x faster" for mode, r in d["speedup_vs_iterative"].items())
                      + " (per-query time at batch size 1)."]
        if "refine_added_ms" in d:
            one = _batch_one(d["modes"]["rpe+refine"])
            lines += ["", (f"**{device}, refinement** adds {d['refine_added_ms']:.0f} ms to a query at batch size 1 "
                           f"(`rpe+refine` minus `rpe`, median query of {one.get('queries', 1)}); its `refine` stage "
                           f"takes {one.get('stage_medians_ms', one['per_query_ms']).get('refine', 0.0):.0f} ms "
                           "(median over those queries).")]
    return "\n".join(lines)


def _operating_point(d: dict) -> str:
    """``at the calibrated threshold T, recall R (x of n), false-alarm rate F (y of m)``, each where
    the queries hold that kind of part, and how many the pose check sent to review."""
    parts = [f"at the calibrated threshold {d['threshold']:.3g}"]
    if d["recall"] is not None:
        parts.append(f"recall {d['recall']:.2f} ({d['tp']} of {d['tp'] + d['fn']})")
    if d["false_positive_rate"] is not None:
        parts.append(f"false-alarm rate {d['false_positive_rate']:.2f} ({d['fp']} of {d['fp'] + d['tn']})")
    review = sum(v["review"] for v in d["verdicts"].values())
    return ", ".join(parts) + (f"; {review} sent to review by the pose check" if review else "")


def bench_plot(result: dict, path: Path) -> None:
    """Per-query stage times (stacked bars, one colour per stage) and throughput against
    batch size, per device and mode; and per-query time at batch size 1 against the
    peers' ``iterative`` (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(STAGES, plt.get_cmap("tab10").colors))
    panels = [(dev, mode, rows) for dev, d in result["devices"].items() for mode, rows in d["modes"].items()]
    with_iterative = [dev for dev, d in result["devices"].items() if "iterative" in d]
    cols = len(panels) + len(with_iterative)
    fig, axes = plt.subplots(2, cols, figsize=(4.5 * cols, 7), squeeze=False)
    for col, (dev, mode, rows) in enumerate(panels):
        ax = axes[0, col]
        xs = [str(r["batch"]) for r in rows]
        bottom = [0.0] * len(rows)
        for stage in STAGES:
            vals = [r["per_query_ms"].get(stage, 0.0) for r in rows]
            if any(vals):
                ax.bar(xs, vals, bottom=bottom, label=stage, color=colours[stage])
                bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(f"{dev}: {mode}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per query")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        ax.plot(xs, [r["throughput_qps"] for r in rows], marker="o")
        ax.set_xlabel("batch size")
        ax.set_ylabel("queries / s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for j, dev in enumerate(with_iterative):
        d = result["devices"][dev]
        ax = axes[0, len(panels) + j]
        ones = {mode: _batch_one(rows) for mode, rows in d["modes"].items()}
        names = ["iterative", *(mode for mode, one in ones.items() if one is not None)]
        totals = [d["iterative"]["per_query_ms"]["total"]] + [one["per_query_ms"]["total"] for one in ones.values()
                                                              if one is not None]
        ax.bar(names, totals, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
        ax.set_yscale("log")
        ax.set_ylabel("ms per query (batch 1, log)")
        ax.set_title(f"{dev}: against the peers' iterative")
        for x, t in enumerate(totals):
            ax.annotate(f"{t / 1000:.2f} s", (x, t), ha="center", va="bottom", fontsize=8)
        axes[1, len(panels) + j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_bench(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(bench_markdown(result) + "\n")
    bench_plot(result, out / "bench.png")
