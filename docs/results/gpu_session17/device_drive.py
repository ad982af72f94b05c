"""Device driver, session 17: `rpe-pad lab gpu-check`'s steps on a carried synthetic category, then
the real Lego built with the `cpu` preset on the GPU and run through evaluate, bench and serve on
CUDA, then the CUDA tests. Each step is timed and recorded; a step that would not fit the time
left is skipped, and the report is rewritten after every step so a run cut short keeps its figures."""
import asyncio, json, os, shutil, subprocess, sys, time
from pathlib import Path

from lab import gpu_check as g
from lab.steps import Check, run_logged

T0, BUDGET = time.monotonic(), float(os.environ.get("BUDGET", "480"))
OUT = Path(os.environ["OUT"])
gc, lego_out = Path(os.environ.get("GC_OUT", "/tmp/gc")), Path(os.environ.get("LEGO_OUT", "/tmp/lego17"))
env = g._environment()
DEV = os.environ.get("DEV", "cuda")  # "cpu" only for a dry run of this driver off the GPU
PREBUILT = os.environ.get("PREBUILT")  # dry run: an existing Lego bundles folder instead of the build
report = {"environment": env, "checks": {}}
checks = {"gpu-check": Check(gc, "gpu-check"), "lego": Check(lego_out, "lego"), "tests": Check(gc, "tests")}


def left() -> float:
    return BUDGET - (time.monotonic() - T0)


def save():
    report["checks"] = {k: c.steps for k, c in checks.items()}
    report["elapsed_s"] = round(time.monotonic() - T0, 1)
    (OUT / "drive17.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def step(check, name, fn, need):
    if left() < need:
        checks[check].skip(name, f"{left():.0f} s left, needs about {need} s")
        save()
        return None
    r = checks[check].step(name, fn)
    save()
    return r


# 1. gpu-check's own steps on the carried synthetic category (the demo preset)
gc.mkdir(parents=True, exist_ok=True)
shutil.copytree(".whl/data/gpucheck", gc / "data" / "gpucheck", dirs_exist_ok=True)
built = step("gpu-check", "bundle", lambda: g.build_bundle(gc), 60) if DEV == "cuda" else None
if built:
    b, c = Path(built["bundle"]), Path(built["category"])
    step("gpu-check", "evaluate", lambda: g.evaluate_cuda(b, c, gc), 30)
    step("gpu-check", "serve", lambda: g.serve_and_load(b.parent, c, gc, seconds=12.0), 40)
    step("gpu-check", "bench", lambda: g.bench_cuda(b, c, gc), 60)
g.write_report(checks["gpu-check"], env)

# 2. the real Lego, `cpu` preset, built on the GPU
lego_cat = Path(".whl/data/Lego").resolve()
lego_out.mkdir(parents=True, exist_ok=True)


def lego_build():
    t = time.perf_counter()
    run_logged([sys.executable, "-m", "rpe_pad.cli", "train", str(lego_cat), "--out", str(lego_out / "B"),
                "--preset", "cpu", "--quiet"], lego_out / "train.log", timeout=max(left() - 90, 30))
    s = json.loads((lego_out / "B" / ".work" / "Lego" / "reports" / "train_summary.json").read_text())
    return {"train_seconds": round(time.perf_counter() - t, 1),
            "stage_seconds": {k: v.get("stage_seconds") for k, v in s.items()},
            "num_gaussians": s.get("splats", {}).get("num_gaussians"), "summary": s}


lb = step("lego", "build", lego_build, 150) if not PREBUILT else {}
if PREBUILT:
    shutil.copytree(PREBUILT, lego_out / "B", dirs_exist_ok=True, symlinks=True)
if lb is not None:
    bundle = lego_out / "B" / "Lego"

    def lego_eval():
        from lab.evaluate import evaluate
        m = evaluate(bundle, lego_cat, out_dir=lego_out / "evaluate", progress=False, device=DEV)
        return {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "pose_reproj_err_px_median",
                                       "decision", "verification", "per_query")}

    def lego_bench():
        from lab.benchmarks import bench_pipeline, write_bench
        r = bench_pipeline(bundle, lego_cat, modes=("rpe+refine",), batch_sizes=(1, 8, 32), iterative_queries=2,
                           devices=[DEV], progress=False, single_queries=10)
        write_bench(r, lego_out / "bench")
        return r["devices"][DEV]

    def lego_serve():
        import httpx
        from lab.loadtest import run_load
        from lab.served import Service
        image = sorted((lego_cat / "test" / "good").glob("*.png"))[0]
        with Service(bundle.parent, lego_out / "records", log=lego_out / "serve.log", device=DEV) as s:
            info = httpx.get(f"{s.url}/categories", timeout=10).json()["categories"][0]
            one = asyncio.run(run_load(s.url, "Lego", image, clients=1, seconds=10))
            eight = asyncio.run(run_load(s.url, "Lego", image, clients=8, seconds=15))
            return {"device": info["device"], "one_client": one, "eight_clients": eight}

    step("lego", "evaluate", lego_eval, 30)
    step("lego", "bench", lego_bench, 45)
    step("lego", "serve", lego_serve, 45)


# 3. the CUDA tests, last and alone
def tests():
    text = run_logged([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                      gc / "cuda_tests.log", timeout=max(left() - 5, 10))
    return {"summary": [l for l in text.splitlines() if " passed" in l][-1].strip("= ")}


if DEV == "cuda":
    step("tests", "cuda-tests", tests, 50)
save()
print(json.dumps({k: [(s["step"], s["ok"], s["seconds"], (s["error"] or "")[:300]) for s in c.steps]
                  for k, c in checks.items()}, indent=1))
