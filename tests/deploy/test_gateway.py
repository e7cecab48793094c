"""The gateway's deployment: compose service and Kubernetes Deployment, Service, scaling and optional Ingress,
checked against the code (its settings, its port, the metric it exports) as the stages' are."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import (
    CONTAINER_HOST,
    K8S,
    OVERLAYS,
    by_kind,
    environment_dict,
    kustomize_build,
    load_compose,
    load_settings_from_env,
    setting_env_names,
)
from tests.deploy.keda_schema import keda_errors
from tests.deploy.manifests import K8S_VERSION, Objects, configmap_env, k8s_errors, objects_of, pod_spec
from visionpipe.services.gateway.gateway_metrics import GatewayMetrics


def _gateway_env(objects: Objects) -> dict[str, str]:
    (container,) = pod_spec(by_kind(objects, "Deployment")["gateway"])["containers"]
    return {**configmap_env(objects), **{e["name"]: e["value"] for e in container.get("env", [])}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_deployment_and_service(rendered: dict[str, Objects], overlay: str) -> None:
    objects = objects_of(rendered, overlay)
    env = _gateway_env(objects)
    assert sorted(k for k in env if k not in setting_env_names()) == []
    settings = load_settings_from_env(env)
    assert settings.service.host == CONTAINER_HOST and settings.service.device == "cpu"
    deployment = by_kind(objects, "Deployment")["gateway"]
    (container,) = pod_spec(deployment)["containers"]
    assert container["args"] == ["serve", "gateway"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    port, grpc_port = container["ports"]
    assert port["containerPort"] == settings.service.port
    assert grpc_port == {"name": "grpc", "containerPort": settings.gateway.grpc_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])
    # Waiting requests are answered at once on SIGTERM; the grace period leaves the in-flight answers their time.
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= 20
    service = by_kind(objects, "Service")["gateway"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"], "grpc"]
    assert service["spec"]["ports"][1]["appProtocol"] == "kubernetes.io/h2c"  # gRPC is HTTP/2 in the clear


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_scales_on_the_metric_it_exports(rendered: dict[str, Objects], overlay: str) -> None:
    scaled = by_kind(objects_of(rendered, overlay), "ScaledObject")["gateway"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "gateway"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    exported = {m.name for m in GatewayMetrics().registry.collect()}
    assert any(name in trigger["metadata"]["query"] for name in exported), trigger["metadata"]["query"]
    assert "visionpipe_gateway_waiting_requests" in trigger["metadata"]["query"]
    assert scaled["spec"]["minReplicaCount"] >= 2, "one replica down must not stop the front door"


def test_prometheus_scaler_schema_rejects_a_typo(rendered: dict[str, Objects]) -> None:
    scaled: dict[str, Any] = copy.deepcopy(by_kind(objects_of(rendered, "redis"), "ScaledObject")["gateway"])
    assert keda_errors(scaled, K8S_VERSION) == []
    scaled["spec"]["triggers"][0]["metadata"]["treshold"] = scaled["spec"]["triggers"][0]["metadata"].pop("threshold")
    assert keda_errors(scaled, K8S_VERSION)


def test_the_ingress_component_renders_and_routes_to_the_gateway(tmp_path: Path) -> None:
    import os

    overlay = os.path.relpath(K8S / "overlays" / "redis", tmp_path)
    component = os.path.relpath(K8S / "components" / "gateway-ingress", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources:\n  - {overlay}\ncomponents:\n  - {component}\n")
    objects = kustomize_build(tmp_path)
    ingress = by_kind(objects, "Ingress")["gateway"]
    assert k8s_errors(ingress) is None
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = by_kind(objects, "Service")[backend["name"]]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_compose_gateway_is_published_healthy_and_in_the_default_profile() -> None:
    svc = load_compose()["services"]["gateway"]
    assert svc["command"] == ["serve", "gateway"] and "profiles" not in svc
    env = environment_dict(svc)
    assert sorted(k for k in env if k.startswith("VISIONPIPE_") and k not in setting_env_names()) == []
    settings = load_settings_from_env(env)
    assert settings.broker.url.startswith("redis://redis:") and settings.service.host == CONTAINER_HOST
    published, grpc_published = svc["ports"]
    assert published.endswith(f":{settings.service.port}") and published.startswith("127.0.0.1:")
    assert grpc_published.endswith(f":{settings.gateway.grpc_port}") and grpc_published.startswith("127.0.0.1:")
    probe = " ".join(svc["healthcheck"]["test"])
    assert "/v2/health/ready" in probe and "VISIONPIPE_SERVICE__PORT" in probe
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "deploy" not in svc, "the gateway reserves no GPU"
