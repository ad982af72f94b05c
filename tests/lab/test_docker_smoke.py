"""`rpe-pad lab docker-smoke`'s own logic, without a Docker engine: the package-index
settings it hands the build as secrets, and how it picks a client that builds with BuildKit.
(The smoke itself is opt-in, `make docker-smoke`; its figures are in docs/DEPLOY.md.)"""

from __future__ import annotations

import subprocess
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
