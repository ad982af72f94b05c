"""The Kubernetes manifests (deploy/k8s, docs/DEPLOY.md): every resource the Kustomize base
lists validates offline against the Kubernetes schemas (`kubernetes-validate`, strict), and
agrees with the code: the probes hit routes the app serves, the env names are settings
fields, the autoscaler's metric is one the service exports, the selectors pick the pods.
No cluster and no network; `kubectl kustomize` is run where kubectl is installed."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate  # the dev extra: a missing package fails, it does not skip
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "k8s"
ADAPTER = BASE / "prometheus-adapter"  # optional example, outside the base
K8S_VERSION = "1.35.0"  # the schemas validated against (kubernetes-validate ships 1.x up to its own version)
STARTUP_BUDGET_S = 600  # bundle loading, hashing and warm-up of every category (docs/DEPLOY.md)


def _listed(folder: Path) -> dict[str, dict]:
    """The resources a kustomization.yaml lists, by file name (one resource per file)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    out = {}
    for name in kustomization["resources"]:
        docs = [d for d in yaml.safe_load_all((folder / name).read_text()) if d is not None]
        assert len(docs) == 1, f"{name}: one resource per file"
        out[name] = docs[0]
    return out


RESOURCES = {**{f"k8s/{n}": d for n, d in _listed(BASE).items()},
             **{f"adapter/{n}": d for n, d in _listed(ADAPTER).items()}}


def _one(kind: str) -> dict:
    (doc,) = [d for d in _listed(BASE).values() if d["kind"] == kind]
    return doc


def _container() -> dict:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _pod_labels() -> dict[str, str]:
    return _one("Deployment")["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("folder", [BASE, ADAPTER], ids=["base", "adapter"])
def test_kustomization_lists_every_manifest(folder: Path) -> None:
    on_disk = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_listed(folder)) == on_disk


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_resource_validates_against_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(RESOURCES[name], K8S_VERSION, strict=True)  # raises ValidationError


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The check above can fail: an unknown field (a typo of livenessProbe) is refused."""
    broken = copy.deepcopy(_one("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz",
                                                                                       "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_base_has_the_resources_the_deployment_needs() -> None:
    kinds = sorted(d["kind"] for d in _listed(BASE).values())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    assert _one("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert _one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_probes_hit_routes_that_answer_as_the_probes_expect(tmp_path: Path) -> None:
    """Built from the app factory with no bundle: liveness must answer while the bundles load,
    readiness must not; the scrape path serves the autoscaler's metric."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    container = _container()
    startup, ready, live = (container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    app = create_app(Settings(_env_file=None, bundles=tmp_path / "none", records=False, device="cpu"))
    served = {getattr(route, "path", None) for route in app.routes}
    assert {startup["path"], ready["path"], live["path"], annotations["prometheus.io/path"]} <= served
    with TestClient(app) as client:
        assert client.get(live["path"]).status_code == 200  # alive while not ready: no restart during loading
        assert client.get(ready["path"]).status_code == 503  # no bundle: kept out of the Service
        assert client.get(startup["path"]).status_code == 503
        metrics = client.get(annotations["prometheus.io/path"])
    assert metrics.status_code == 200
    metric = _one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert f"# TYPE {metric} gauge" in metrics.text
    assert startup["path"] == ready["path"] == "/readyz" and live["path"] == "/healthz"


def test_startup_probe_covers_bundle_loading() -> None:
    deployment, container = _one("Deployment"), _container()
    startup = container["startupProbe"]
    window = startup["failureThreshold"] * startup["periodSeconds"]
    assert window >= STARTUP_BUDGET_S
    # a rollout is not declared failed while a new pod may still be loading
    assert deployment["spec"]["progressDeadlineSeconds"] > window
    # the preStop pause and the requests in flight fit in the grace period
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause


def test_env_names_and_values_are_the_services_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    env = _container()["env"]
    fields = set(Settings.model_fields)
    for var in env:
        assert var["name"].startswith("RPEPAD_") and var["name"][len("RPEPAD_"):].lower() in fields, var["name"]
    for key in [k for k in os.environ if k.startswith("RPEPAD_")]:
        monkeypatch.delenv(key)
    literal = {v["name"]: v["value"] for v in env if "value" in v}
    for name, value in literal.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # the values parse (a wrong device or a negative size would raise)
    assert settings.device == "cuda" and settings.max_batch == int(literal["RPEPAD_MAX_BATCH"])
    # Secrets are optional references, so the base applies without them.
    for var in env:
        if "valueFrom" in var:
            assert var["valueFrom"]["secretKeyRef"]["optional"] is True
    # The directories the settings name are the volumes mounted there.
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    bundles = mounts[str(settings.bundles)]
    assert bundles["readOnly"] is True
    claim = volumes[bundles["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True and claim["claimName"] == _one("PersistentVolumeClaim")["metadata"]["name"]
    # mountable by replicas on several nodes at once
    assert {"ReadOnlyMany", "ReadWriteMany"} & set(_one("PersistentVolumeClaim")["spec"]["accessModes"])
    data = mounts[str(settings.data_dir)]
    assert not data.get("readOnly", False) and data["name"] in volumes


def test_gpu_image_resources_and_user_match_the_dockerfile() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())["services"]["rpe-pad"]
    container = _container()
    assert container["image"] == compose["image"] == "rpe-pad:gpu"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1  # extended resources: request = limit
    assert {"cpu", "memory"} <= set(resources["requests"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", dockerfile).group(1))
    assert re.search(r"^USER rpepad$", dockerfile, re.M)
    pod_security = _one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_targets_the_container_port() -> None:
    service, container = _one("Service"), _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]
    assert service["spec"]["type"] == "ClusterIP" and port["port"] == 80
    target = port["targetPort"]
    number = ports[target] if isinstance(target, str) else target
    assert number in ports.values()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {number}" in dockerfile and f'"--port", "{number}"' in dockerfile  # what the image listens on
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == number
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in (number, *[n for n, p in ports.items() if p == number])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_pick_the_deployments_pods() -> None:
    labels = _pod_labels()
    assert _selects(_one("Deployment")["spec"]["selector"]["matchLabels"], labels)
    assert _selects(_one("Service")["spec"]["selector"], labels)
    pdb = _one("PodDisruptionBudget")["spec"]
    assert set(pdb["selector"]) == {"matchLabels"} and _selects(pdb["selector"]["matchLabels"], labels)
    assert not _selects(pdb["selector"]["matchLabels"], _one("PersistentVolumeClaim")["metadata"]["labels"])
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    deployment = _one("Deployment")
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])


def test_hpa_metric_is_exported_and_served_by_the_adapter_rule() -> None:
    from service.telemetry import Telemetry

    hpa = _one("HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    exported = {family.name: family.type for family in Telemetry().registry.collect()}
    assert exported.get(name) == "gauge"
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    # The adapter's rule exposes exactly that series under that name, per pod.
    config = yaml.safe_load(_listed(ADAPTER)["configmap.yaml"]["data"]["config.yaml"])
    (rule,) = [r for r in config["rules"] if r["name"]["as"] == name]
    assert rule["seriesQuery"].startswith(name + "{") and re.fullmatch(rule["name"]["matches"], name)
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("folder", [BASE, ADAPTER], ids=["base", "adapter"])
def test_kubectl_kustomize_renders_what_was_validated(folder: Path) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in _listed(folder).values())
