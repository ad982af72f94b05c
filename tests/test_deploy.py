"""Deployment files: the compose files say what the brief asks, and `docker compose config`
accepts them where the docker client has the compose plugin (skipped otherwise)."""

from __future__ import annotations

import shutil
import subprocess
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
    dockerfile = ROOT / ("Dockerfile" if kind == "gpu" else "docker/Dockerfile.cpu")
    assert (COMPOSE[kind].parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == dockerfile
    if kind == "gpu":
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
        assert service["environment"]["RPEPAD_DEVICE"] == "cuda"


def test_dockerfiles_pin_what_the_project_pins() -> None:
    gpu = (ROOT / "Dockerfile").read_text()
    assert "nvidia/cuda:${CUDA_TAG}" in gpu and "CUDA_TAG=13." in gpu
    assert "torch==2.14.1" in gpu and "--no-binary gsplat gsplat==1.5.3" in gpu and '".[gpu]"' in gpu
    assert "TORCH_CUDA_ARCH_LIST" in gpu
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "torch==2.14.1" in cpu and '".[cpu]"' in cpu and "onnxruntime-gpu" not in cpu


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="the docker client here has no compose plugin")
@pytest.mark.parametrize("kind", sorted(COMPOSE))
def test_docker_compose_config_validates(kind: str, tmp_path: Path) -> None:
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE[kind]), "config", "--quiet"],
                            capture_output=True, text=True, env={"BUNDLES": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert result.returncode == 0, result.stderr
