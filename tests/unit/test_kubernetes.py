"""deploy/kubernetes and deploy/Dockerfile: valid against the Kubernetes API schemas, and
in agreement with the settings, probes and ports the code has (no cluster or Docker
daemon here: what a cluster would reject or a pod would fail on is checked offline)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from streams.settings import Settings

DEPLOY = Path(__file__).parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ROOT = DEPLOY.parent


def env_file() -> dict[str, str]:
    lines = (KUBERNETES / "shotstream.env").read_text(encoding="utf-8").splitlines()
    pairs = (line.partition("=") for line in lines if line and not line.startswith("#"))
    return {name: value for name, _, value in pairs}


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return loaded


def rendered() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/kubernetes`` sends, as far as this kustomization
    uses kustomize: its resources, the ConfigMap it generates, the namespace."""
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]
    for generator in kustomization()["configMapGenerator"]:
        assert generator["envs"] == ["shotstream.env"]
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": env_file(),
            }
        )
    for doc in docs:
        doc["metadata"]["namespace"] = kustomization()["namespace"]
    return docs


def deployment(name: str) -> dict[str, Any]:
    (found,) = [
        d for d in rendered() if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    ]
    return found


def pod_of(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(name)["spec"]["template"]["spec"]
    return spec


def test_every_manifest_is_valid_against_the_kubernetes_api_schema() -> None:
    """Strict: an unknown field (a misspelt ``enableServiceLinks``) or a wrong type fails,
    as ``kubectl apply`` would fail it."""
    import kubernetes_validate

    docs = rendered()
    assert {d["kind"] for d in docs} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    broken = {**docs[0], "spec": {"replicas": "2"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)


def test_the_configuration_is_read_by_the_settings_and_serves_other_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every variable is a setting (a typo would be ignored in silence), they validate
    together, and the probes' and Prometheus' ports are bound beyond loopback (the
    defaults, 127.0.0.1, are out of the kubelet's reach: probes fail, pods restart)."""
    import os

    for name in list(os.environ):
        if name.startswith("SHOTSTREAM_"):
            monkeypatch.delenv(name)
    env = env_file()
    assert Settings.unknown_variables(env) == {}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.metrics_host == settings.gateway.host == "0.0.0.0"  # noqa: S104
    assert not settings.embedded_broker
    worker, gateway = pod_of("shotstream-worker"), pod_of("shotstream-gateway")
    (metrics,) = worker["containers"][0]["ports"]
    (http,) = gateway["containers"][0]["ports"]
    assert metrics["containerPort"] == settings.metrics_port
    assert http["containerPort"] == settings.http_port
    image = kustomization()["images"][0]
    for pod, port in ((worker, metrics), (gateway, http)):
        # service links would set SHOTSTREAM_<SERVICE>_PORT=tcp://... in every pod
        assert pod["enableServiceLinks"] is False
        assert pod["containers"][0]["image"] == image["name"]  # what kustomize replaces
        # admitted where the "restricted" Pod Security Standard is enforced
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
        container = pod["containers"][0]
        refs = [
            ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]
        ]
        assert refs == ["shotstream", "shotstream-keys"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == port["name"]
    data = worker["containers"][0]["volumeMounts"][0]["mountPath"]
    assert str(settings.data_dir) == data
    # the compute threads are what the pod asks for: without a CPU limit torch would
    # count the node's cores (there is no cgroup quota to read)
    threads = settings.batching.compute_streams * settings.models.torch_threads
    assert worker["containers"][0]["resources"]["requests"]["cpu"] == str(threads)
    assert "cpu" not in worker["containers"][0]["resources"]["limits"]


def test_grace_periods_and_the_startup_probe_cover_what_the_processes_take() -> None:
    """A worker's drain and a gateway's requests in flight (up to its reply timeout) fit
    in the grace period; the gateway's startup probe waits as long as it waits for Kafka
    and the topics before exiting."""
    from streams.app import EXIT_MARGIN_S

    settings = Settings()
    worker, gateway = pod_of("shotstream-worker"), pod_of("shotstream-gateway")
    drain = settings.kafka.drain_timeout_s + EXIT_MARGIN_S
    assert worker["terminationGracePeriodSeconds"] >= drain
    pause = gateway["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    replies = int(pause[1]) + settings.gateway.reply_timeout_s + 2
    assert gateway["terminationGracePeriodSeconds"] >= replies
    startup = gateway["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= (
        settings.gateway.startup_timeout_s
    )


def test_the_probe_paths_are_the_ones_the_processes_answer() -> None:
    """Every probe path is answered as a probe: the worker's metrics server answers any
    other path with the metrics page (a misspelt path would always pass), the gateway's
    with 404."""
    from streams.metrics import PrometheusObserver
    from tests.unit.test_gateway_http import Http

    observer = PrometheusObserver()
    base = f"http://127.0.0.1:{observer.serve(0)}"
    assert "# HELP" in httpx.get(f"{base}/livezz", timeout=10).text  # what a typo gets
    worker = pod_of("shotstream-worker")["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        path = worker[probe]["httpGet"]["path"]
        response = httpx.get(f"{base}{path}", timeout=10)
        assert response.status_code in (200, 503), path
        assert "# HELP" not in response.text, path
    gateway = pod_of("shotstream-gateway")["containers"][0]
    paths = {
        gateway[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for path in paths:
        response = Http().get(path)
        assert response.status_code in (200, 503), path
        assert "status" in response.json(), path


def test_prometheus_annotations_name_the_ports_that_serve_metrics() -> None:
    for name in ("shotstream-worker", "shotstream-gateway"):
        template = deployment(name)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        (port,) = template["spec"]["containers"][0]["ports"]
        assert annotations["prometheus.io/port"] == str(port["containerPort"]), name
        assert annotations["prometheus.io/path"] == "/metrics"


def test_the_image_holds_the_packages_and_matches_the_manifests() -> None:
    """The Dockerfile copies every package pyproject installs (a missing one fails only at
    import, in the cluster), past .dockerignore; it pins torch as scripts/setup.sh does;
    its user, data directory and ports are those the manifests use."""
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    packages = re.search(r"^packages = \[(.*)\]$", pyproject, re.M)
    assert packages is not None
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for package in re.findall(r'"(\w+)"', packages.group(1)):
        assert f"COPY {package}/ {package}/" in dockerfile, package
        assert f"!{package}/" in ignored, package
    for needed in ("pyproject.toml", "constraints.txt", "README.md"):
        assert f"!{needed}" in ignored
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    (torch,) = set(re.findall(r'"(torch==[\d.]+)"', setup))
    assert f'pip install "{torch}" --index-url' in dockerfile
    exposed = re.findall(r"^EXPOSE (.*)$", dockerfile, re.M)[0].split()
    for pod in (pod_of("shotstream-worker"), pod_of("shotstream-gateway")):
        assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile
        (port,) = pod["containers"][0]["ports"]
        assert str(port["containerPort"]) in exposed
    assert f"SHOTSTREAM_DATA_DIR={env_file()['SHOTSTREAM_DATA_DIR']}" in dockerfile
