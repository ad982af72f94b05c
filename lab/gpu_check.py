"""`rpe-pad lab gpu-check` (`make gpu-check`): one run that proves the CUDA path on a GPU machine.

Steps, each timed and recorded whether it passes or not (a failed step does not stop the
ones that do not need it):

1. ``cuda-tests``: the tests marked ``cuda`` (``pytest -m cuda``): gsplat against our CPU
   rasterizer (images, and the gradient the CPU fit uses), ONNX Runtime's CUDA provider against its CPU provider, the Inspector on
   CUDA against the Inspector on the CPU on the same queries;
2. ``bundle``: a small synthetic category (``rpe-pad synth``) and its bundle built on the
   GPU (``rpe-pad train --preset demo``; the Gaussian fit runs on gsplat);
3. ``evaluate``: that bundle's test split through the default pipeline on CUDA (image and
   pixel AUROC, and the operating point);
4. ``bench``: ``rpe-pad lab bench`` on CUDA at batch sizes 1 to 64, with the peers'
   iterative mode beside it;
5. ``serve``: ``rpe-pad serve --device cuda`` on loopback, then ``lab loadtest`` with 1
   and with 8 clients.

It writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Without CUDA it refuses in
one line (exit status 2) before doing anything. Nothing in it reaches the network; the
sizes keep the whole run within ten minutes on one GPU (the build is the long step).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import torch

from lab.steps import Check, run_logged

NO_CUDA = "gpu-check needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False); run it on a GPU host"
SYNTH = dict(size=128, train_views=60, test_views=16)  # small: the build fits the ten minutes
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def cuda_tests(out: Path, root: Path) -> dict:
    text = run_logged([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(root / "tests")],
                out / "cuda_tests.log", timeout=300)
    summary = [line for line in text.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    last = summary[-1] if summary else ""
    if "skipped" in last and " passed" not in last:
        raise RuntimeError(f"every CUDA test was skipped ({last.strip()}): is gsplat or onnxruntime-gpu missing?")
    return {"summary": last.strip("= ")}


def build_bundle(out: Path) -> dict:
    from models.bundle import WORK_FILES
    from training.pipeline import work_dir
    from training.synth import SynthConfig, generate

    category = out / "data" / "gpucheck"
    if not category.exists():
        generate(category, SynthConfig(seed=0, **SYNTH), progress=False)
    start = time.perf_counter()
    run_logged([sys.executable, "-m", "rpe_pad.cli", "train", str(category), "--out", str(out / "bundles"),
          "--preset", "demo"], out / "train.log", timeout=600)
    summary = json.loads((work_dir(out / "bundles", "gpucheck") / WORK_FILES["train_summary"]).read_text())
    return {"category": str(category), "bundle": str(out / "bundles" / "gpucheck"),
            "train_seconds": round(time.perf_counter() - start, 1),
            "stage_seconds": {k: v.get("stage_seconds") for k, v in summary.items()},
            "num_gaussians": summary.get("splats", {}).get("num_gaussians")}


def evaluate_cuda(bundle: Path, category: Path, out: Path) -> dict:
    from lab.evaluate import evaluate

    m = evaluate(bundle, category, out_dir=out / "evaluate", progress=False, device="cuda")
    keep = ("image_auroc", "pixel_auroc", "aupro", "pose_reproj_err_px_median", "decision", "verification")
    return {k: m.get(k) for k in keep}


def bench_cuda(bundle: Path, category: Path, out: Path) -> dict:
    from lab.benchmarks import bench_pipeline, write_bench

    result = bench_pipeline(bundle, category, modes=("rpe+refine",), batch_sizes=BATCH_SIZES, iterative_queries=2,
                            devices=["cuda"], progress=False)
    write_bench(result, out / "bench")
    d = result["devices"]["cuda"]
    return {"per_query_ms": {r["batch"]: r["per_query_ms"] for r in d["modes"]["rpe+refine"]},
            "throughput_qps": {r["batch"]: r["throughput_qps"] for r in d["modes"]["rpe+refine"]},
            "iterative_ms": d.get("iterative", {}).get("per_query_ms", {}).get("total"),
            "speedup_vs_iterative": d.get("speedup_vs_iterative", {}).get("rpe+refine"),
            "gpu": result["machine"].get("cuda_device")}


def serve_and_load(bundles: Path, category: Path, out: Path, seconds: float = 30.0) -> dict:
    import httpx

    from lab.loadtest import run_load
    from lab.served import Service

    with Service(bundles, out / "records", log=out / "serve.log", device="cuda") as service:
        info = httpx.get(f"{service.url}/categories", timeout=10).json()["categories"][0]
        if not info["device"].startswith("cuda"):
            raise RuntimeError(f"the service runs the bundle on {info['device']}, not CUDA")
        if info.get("pose_device") != "cuda":
            raise RuntimeError(f"the service runs the pose network on {info.get('pose_device')}, not CUDA "
                               "(ONNX Runtime's CUDA provider: serve.log says why)")
        image = sorted((category / "test" / "good").glob("*.png"))[0]
        one = asyncio.run(run_load(service.url, "gpucheck", image, clients=1, seconds=seconds / 2))
        eight = asyncio.run(run_load(service.url, "gpucheck", image, clients=8, seconds=seconds))
        return {"device": info["device"], "pose_device": info["pose_device"], "one_client": one, "eight_clients": eight}


def run_check(out: Path, root: Path) -> Check:
    """All steps into ``out``; the caller has checked for CUDA."""
    out.mkdir(parents=True, exist_ok=True)
    check, environment = Check(out, "gpu-check"), _environment()

    def step(name: str, fn) -> dict | None:  # the report is rewritten after each step, so a run cut short keeps its figures
        result = check.step(name, fn)
        write_report(check, environment)
        return result

    step("cuda-tests", lambda: cuda_tests(out, root))
    built = step("bundle", lambda: build_bundle(out))
    if built is None:
        for name in ("evaluate", "bench", "serve"):
            check.skip(name, "no bundle")
    else:
        bundle, category = Path(built["bundle"]), Path(built["category"])
        step("evaluate", lambda: evaluate_cuda(bundle, category, out))
        step("bench", lambda: bench_cuda(bundle, category, out))
        step("serve", lambda: serve_and_load(bundle.parent, category, out))
    write_report(check, environment)
    return check


def _environment() -> dict:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for name in ("gsplat", "onnxruntime"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
        except ImportError:
            env[name] = None
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return env


def markdown(report: dict) -> str:
    """The report's Markdown: environment, one row per step, then the figures."""
    env = report["environment"]
    lines = ["# gpu-check", "",
             f"{env.get('gpu', 'no GPU')}; torch {env.get('torch')} (CUDA {env.get('cuda')}), gsplat {env.get('gsplat')}, "
             f"onnxruntime {env.get('onnxruntime')} ({', '.join(env.get('onnxruntime_providers') or [])}). "
             f"Overall: **{'passed' if report['ok'] else 'FAILED'}** in {report['seconds']:.0f} s.", "",
             "| step | result | seconds |", "|---|---|---:|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {'ok' if s['ok'] else 'failed: ' + (s['error'] or '').splitlines()[0]} "
                     f"| {s['seconds']:.1f} |")
    by = {s["step"]: s["result"] for s in report["steps"] if s["result"]}
    if "cuda-tests" in by:
        lines += ["", f"CUDA tests: {by['cuda-tests']['summary']}."]
    if "bundle" in by:
        b = by["bundle"]
        lines += ["", f"Bundle: built on the GPU in {b['train_seconds']:.0f} s ({b.get('num_gaussians')} Gaussians); "
                  "stages: " + ", ".join(f"{k} {v} s" for k, v in b["stage_seconds"].items()) + "."]
    if "evaluate" in by:
        e = by["evaluate"]
        dec = e.get("decision") or {}
        lines += ["", f"Default pipeline on CUDA, test split: image AUROC {e['image_auroc']:.3f}, pixel AUROC "
                  f"{e['pixel_auroc']:.3f}, AUPRO {e['aupro']:.3f}; at the threshold {dec.get('tp')} of "
                  f"{(dec.get('tp') or 0) + (dec.get('fn') or 0)} defects found, {dec.get('fp')} of "
                  f"{(dec.get('fp') or 0) + (dec.get('tn') or 0)} good parts rejected."]
    if "bench" in by:
        b = by["bench"]
        lines += ["", "| batch | ms per query | queries/s |", "|---:|---:|---:|"]
        for batch, t in b["per_query_ms"].items():
            lines.append(f"| {batch} | {t['total']:.1f} | {b['throughput_qps'][batch]:.1f} |")
        if b.get("speedup_vs_iterative"):
            lines += ["", f"Iterative (the peers'): {b['iterative_ms'] / 1000:.2f} s per query; the default mode is "
                      f"{b['speedup_vs_iterative']:.0f}x faster at batch 1."]
    if "serve" in by:
        lines += ["", "| service on CUDA | p50 ms | p95 ms | p99 ms | requests/s | 5xx |", "|---|---:|---:|---:|---:|---:|"]
        for name, key in (("1 client", "one_client"), ("8 clients", "eight_clients")):
            r = by["serve"][key]
            lat = r["latency_ms"]
            lines.append(f"| {name}, {r['seconds']:.0f} s | {lat.get('p50')} | {lat.get('p95')} | {lat.get('p99')} "
                         f"| {r['throughput_rps']} | {r['errors_5xx']} |")
    return "\n".join(lines) + "\n"


def write_report(check: Check, environment: dict) -> dict:
    report = {"ok": check.ok, "seconds": round(sum(s["seconds"] for s in check.steps), 1),
              "environment": environment, "steps": check.steps}
    (check.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (check.out / "gpu_check.md").write_text(markdown(report))
    return report


def main(out: Path, root: Path) -> int:
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    check = run_check(out, root)
    print((out / "gpu_check.md").read_text())
    print(f"report: {out} (gpu_check.json, gpu_check.md)")
    return 0 if check.ok else 1
