"""Device driver: `rpe-pad lab gpu-check`'s steps, with the CUDA tests in a background process
beside the bundle's steps, and a shorter load test, to fit the device time left."""
import subprocess, sys, time
from pathlib import Path
from lab import gpu_check as g
from lab.steps import Check

out, root = Path("/tmp/gc"), Path.cwd()
env = g._environment()
check = Check(out, "gpu-check")
log = (out / "cuda_tests.log").open("w")
tests = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                         stdout=log, stderr=subprocess.STDOUT)
def step(name, fn):
    r = check.step(name, fn); g.write_report(check, env); return r
built = step("bundle", lambda: g.build_bundle(out))
if built:
    bundle, category = Path(built["bundle"]), Path(built["category"])
    step("evaluate", lambda: g.evaluate_cuda(bundle, category, out))
    step("serve", lambda: g.serve_and_load(bundle.parent, category, out, seconds=12.0))
    step("bench", lambda: g.bench_cuda(bundle, category, out))
def wait_tests():
    tests.wait(timeout=120)
    text = (out / "cuda_tests.log").read_text()
    last = [l for l in text.splitlines() if " passed" in l or " failed" in l][-1]
    if tests.returncode != 0:
        raise RuntimeError(last)
    return {"summary": last.strip("= ")}
step("cuda-tests", wait_tests)
print((out / "gpu_check.md").read_text())
