"""The ingest service in compose (profile `ingest`) and Kubernetes: real settings, one replica, its API reachable."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.helpers import (
    CONTAINER_HOST,
    OVERLAYS,
    by_kind,
    environment_dict,
    load_compose,
    load_settings_from_env,
    setting_env_names,
)
from tests.deploy.manifests import Objects, configmap_env, objects_of, pod_spec


def _ingest_configmap(objects: Objects) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("visionpipe-ingest")]
    return cm["data"]


def test_setting_names_include_the_source_list_as_one_variable() -> None:
    names = setting_env_names()
    assert "VISIONPIPE_INGEST__SOURCES" in names and "VISIONPIPE_INGEST__SOURCES__URL" not in names


@pytest.mark.parametrize("sources", [None, '["rtsp://cam1/s", {"url": "rtsp://cam2/s", "id": "door", "fps": 5}]'])
def test_compose_ingest_service_is_configured_with_real_settings(sources: str | None) -> None:
    compose = load_compose({"VISIONPIPE_INGEST__SOURCES": sources} if sources else {})
    svc = compose["services"]["ingest"]
    assert svc["profiles"] == ["ingest"] and svc["command"] == ["ingest"]
    env = environment_dict(svc)
    assert sorted(k for k in env if k.startswith("VISIONPIPE_") and k not in setting_env_names()) == []
    settings = load_settings_from_env(env)
    assert settings.service.host == CONTAINER_HOST
    assert [s.url for s in settings.ingest.sources] == ([] if sources is None else ["rtsp://cam1/s", "rtsp://cam2/s"])
    assert settings.broker.url == environment_dict(compose["services"]["decode"])["VISIONPIPE_BROKER__URL"]
    assert (
        settings.streams.prefix
        == load_settings_from_env(environment_dict(compose["services"]["decode"])).streams.prefix
    )
    host, container = svc["ports"][0].rsplit(":", 1)[0], svc["ports"][0].rsplit(":", 1)[1]
    assert host.startswith("127.0.0.1:") and int(container) == settings.service.port
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert "deploy" not in svc, "ingest decodes on the CPU by default and needs no GPU reservation"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_ingest_is_one_replica_with_both_configmaps_and_a_service(
    rendered: dict[str, Objects], overlay: str
) -> None:
    objects = objects_of(rendered, overlay)
    deployment = by_kind(objects, "Deployment")["ingest"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "ingest" not in by_kind(objects, "ScaledObject"), "autoscaling ingest would read each camera twice"
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["args"] == ["ingest"]
    env = {**configmap_env(objects), **_ingest_configmap(objects)}
    assert sorted(set(_ingest_configmap(objects)) - setting_env_names()) == []
    settings = load_settings_from_env(env)
    assert settings.ingest.sources == [] and settings.broker.url.startswith(f"{overlay}://")
    refs = {e["configMapRef"]["name"] for e in container["envFrom"]}
    present = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    assert len(refs) == 2 and refs <= present
    (port,) = container["ports"]
    assert port["containerPort"] == settings.service.port
    service: dict[str, Any] = by_kind(objects, "Service")["ingest"]
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
