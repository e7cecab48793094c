"""deploy/k8s against the code: settings the stages read, streams and groups KEDA watches, what the brokers accept.

The settings model, the stage-to-stream map and the Kafka group naming are read from ``visionpipe`` when the
tests run, so a change there fails here until the manifests follow.
"""

from __future__ import annotations

import copy
import tomllib
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.helpers import (
    CONTAINER_HOST,
    OVERLAYS,
    ROOT,
    by_kind,
    environment_dict,
    load_compose,
    load_settings_from_env,
    required_env,
    setting_env_names,
    stage_group,
    stage_streams,
)
from tests.deploy.manifests import (
    K8S_ONLY_SETTINGS,
    Objects,
    configmap_env,
    objects_of,
    pod_spec,
)
from visionpipe.broker.kafka import kafka_group_id
from visionpipe.settings import Settings
from visionpipe.topology import STAGES

# --- the stages --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_names_are_settings_and_values_load(rendered: dict[str, Objects], overlay: str) -> None:
    env = configmap_env(objects_of(rendered, overlay))
    assert sorted(set(env) - setting_env_names()) == []
    settings = load_settings_from_env(env)  # raises on a value the service itself would reject
    assert settings.service.host == CONTAINER_HOST
    assert settings.broker.url.startswith(f"{overlay}://")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("stage", STAGES)
def test_configmap_has_what_each_stage_needs(rendered: dict[str, Objects], overlay: str, stage: str) -> None:
    needed = required_env(stage)
    assert set(needed) <= setting_env_names(), f"the required list names settings that no longer exist: {needed}"
    assert [k for k in needed if k not in configmap_env(objects_of(rendered, overlay))] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_compose_and_configmap_set_the_same_settings(rendered: dict[str, Objects], overlay: str) -> None:
    """One list of settings for both deployments, so a setting added to one cannot be forgotten in the other."""
    compose = load_compose()
    compose_names = set().union(*(environment_dict(compose["services"][s]) for s in STAGES))
    k8s_names = set(configmap_env(objects_of(rendered, overlay))) - K8S_ONLY_SETTINGS
    assert sorted(compose_names ^ k8s_names) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_deployment(rendered: dict[str, Objects], overlay: str, stage: str) -> None:
    objects = objects_of(rendered, overlay)
    settings = load_settings_from_env(configmap_env(objects))
    deployment = by_kind(objects, "Deployment")[stage]
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["args"] == ["serve", stage]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()

    # Probes on the port the settings make the service listen on, and the scrape annotations on the same.
    (port,) = container["ports"]
    assert port["containerPort"] == settings.service.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.service.port)
    assert annotations["prometheus.io/path"] == "/metrics"

    # SIGTERM starts the drain; the kubelet kills at the grace period, which must leave the drain its full time.
    assert spec["terminationGracePeriodSeconds"] >= settings.service.drain_grace_s + 10

    # Non-root, read-only root, nothing extra; the writable paths the image uses are volumes.
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm"} <= mounts

    password_file = settings.broker.password_file
    if password_file is not None:
        assert any(str(password_file).startswith(m + "/") for m in mounts), "password file is not mounted"

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    pdbs = [
        p
        for p in by_kind(objects, "PodDisruptionBudget").values()
        if p["spec"]["selector"]["matchLabels"].items() <= pod_labels
    ]
    assert len(pdbs) == 1


def test_image_tag_is_the_project_version(rendered: dict[str, Objects]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for deployment in by_kind(objects_of(rendered, "redis"), "Deployment").values():
        (container,) = pod_spec(deployment)["containers"]
        assert container["image"] == f"visionpipe:{version}"


# --- autoscaling ---------------------------------------------------------------------------------------------------


def _settings(objects: Objects) -> Settings:
    return load_settings_from_env(configmap_env(objects))


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("stage", STAGES)
def test_scaled_object_watches_the_stage_input(rendered: dict[str, Objects], overlay: str, stage: str) -> None:
    """Each trigger names the stream and consumer group the stage really reads, and the broker it really uses."""
    objects = objects_of(rendered, overlay)
    settings = _settings(objects)
    source, _sink = stage_streams(settings, stage)
    group = stage_group(settings, stage)
    scaled = by_kind(objects, "ScaledObject")[stage]
    assert scaled["spec"]["scaleTargetRef"]["name"] == stage
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    broker = urlsplit(settings.broker.url)
    kinds = set()
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        kinds.add(trigger["type"])
        if trigger["type"] == "redis-streams":
            assert (meta["stream"], meta["consumerGroup"]) == (source, group)
            assert meta["address"] == broker.netloc.rsplit("@", 1)[-1]
            assert meta.get("databaseIndex", "0") == (broker.path.strip("/") or "0")
        elif trigger["type"] == "kafka":
            assert (meta["topic"], meta["consumerGroup"]) == (source, kafka_group_id(source, group))
            assert meta["bootstrapServers"] == broker.netloc
        else:
            pytest.fail(f"unexpected trigger type {trigger['type']}")
    expected = {"redis": {"redis-streams"}, "kafka": {"kafka"}}[overlay]
    assert kinds == expected


def test_redis_scaling_sees_both_pending_and_lag(rendered: dict[str, Objects]) -> None:
    """Pending entries alone miss a queue nobody has read yet; lag alone misses slow batches. Both, per stage."""
    for stage in STAGES:
        scaled = by_kind(objects_of(rendered, "redis"), "ScaledObject")[stage]
        measures = {
            key
            for t in scaled["spec"]["triggers"]
            for key in ("pendingEntriesCount", "lagCount")
            if key in t["metadata"]
        }
        assert measures == {"pendingEntriesCount", "lagCount"}


def test_kafka_scaling_stays_within_partitions(rendered: dict[str, Objects]) -> None:
    """A consumer beyond the partition count gets no partition: more replicas than that only waste GPUs."""
    objects = objects_of(rendered, "kafka")
    partitions = _settings(objects).broker.kafka_partitions
    for stage in STAGES:  # stage consumers only: the gateway's group is per replica with Kafka (memory store)
        scaled = by_kind(objects, "ScaledObject")[stage]
        assert scaled["spec"]["maxReplicaCount"] <= partitions
        assert all(t["metadata"].get("allowIdleConsumers", "false") == "false" for t in scaled["spec"]["triggers"])


# --- the brokers -----------------------------------------------------------------------------------------------


def test_redis_uses_the_stages_password_and_never_evicts(rendered: dict[str, Objects]) -> None:
    objects = objects_of(rendered, "redis")
    (container,) = pod_spec(by_kind(objects, "StatefulSet")["redis"])["containers"]
    args = container["args"]
    opts = dict(zip(args[::2], args[1::2], strict=True))
    assert opts["--maxmemory-policy"] == "noeviction"
    auth = next(e for e in container["env"] if e["name"] == "REDISCLI_AUTH")["valueFrom"]["secretKeyRef"]
    assert opts["--requirepass"] == "$(REDISCLI_AUTH)"
    stage_secret = next(
        v["secret"] for v in pod_spec(by_kind(objects, "Deployment")["decode"])["volumes"] if "secret" in v
    )
    assert auth["name"] == stage_secret["secretName"]
    password_file = _settings(objects).broker.password_file
    assert password_file is not None and password_file.name == auth["key"]
    (trigger_auth,) = by_kind(objects, "TriggerAuthentication").values()
    expected = [{"parameter": "password", "name": auth["name"], "key": auth["key"]}]
    assert trigger_auth["spec"]["secretTargetRef"] == expected


def test_kafka_accepts_the_messages_the_stages_send(rendered: dict[str, Objects]) -> None:
    objects = objects_of(rendered, "kafka")
    settings = _settings(objects)
    kafka = by_kind(objects, "StatefulSet")["kafka"]
    spec = pod_spec(kafka)
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for prop in (
        "KAFKA_MESSAGE_MAX_BYTES",
        "KAFKA_REPLICA_FETCH_MAX_BYTES",
        "KAFKA_FETCH_MAX_BYTES",
        "KAFKA_SOCKET_REQUEST_MAX_BYTES",
        "KAFKA_REPLICA_FETCH_RESPONSE_MAX_BYTES",
    ):
        assert int(env[prop]) > settings.broker.kafka_max_message_bytes, prop
    assert int(env["KAFKA_NUM_PARTITIONS"]) == settings.broker.kafka_partitions
    # Service links would add KAFKA_PORT=tcp://… which the image would turn into a bogus broker property.
    assert spec["enableServiceLinks"] is False
    # The advertised address must be one the stages can resolve: the pod's name under the headless Service.
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split("://", 1)[1]
    assert advertised.startswith(f"$(POD_NAME).{kafka['spec']['serviceName']}.visionpipe.svc")
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert fields["POD_NAME"] == "metadata.name"
    assert urlsplit(settings.broker.url).netloc.startswith(f"{kafka['spec']['serviceName']}.visionpipe.svc")


def test_kafka_is_three_nodes_and_every_topic_survives_losing_one(rendered: dict[str, Objects]) -> None:
    objects = objects_of(rendered, "kafka")
    settings = _settings(objects)
    kafka = by_kind(objects, "StatefulSet")["kafka"]
    (container,) = pod_spec(kafka)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    nodes = kafka["spec"]["replicas"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    name, service = kafka["metadata"]["name"], kafka["spec"]["serviceName"]
    assert voters == [f"{i}@{name}-{i}.{service}.visionpipe.svc.cluster.local:9093" for i in range(nodes)]
    node_id = next(e for e in container["env"] if e["name"] == "KAFKA_NODE_ID")["valueFrom"]["fieldRef"]
    assert node_id["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert kafka["spec"]["podManagementPolicy"] == "Parallel", "the quorum forms only with every node running"
    assert by_kind(objects, "Service")[service]["spec"]["publishNotReadyAddresses"] is True
    assert (nodes, settings.broker.kafka_replication_factor, settings.broker.kafka_min_insync_replicas) == (3, 3, 2)
    assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == nodes and int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == nodes
    assert by_kind(objects, "PodDisruptionBudget")["kafka"]["spec"]["maxUnavailable"] == 1


def test_overlays_differ_only_in_the_broker(rendered: dict[str, Objects]) -> None:
    """The stage Deployments are the base's in both overlays; only settings (the ConfigMap hash) differ."""

    def stripped(objects: Objects) -> dict[str, Any]:
        out = {}
        for name, d in by_kind(objects, "Deployment").items():
            d = copy.deepcopy(d)
            for c in pod_spec(d)["containers"]:
                c.pop("envFrom")
            out[name] = d
        return out

    assert stripped(objects_of(rendered, "redis")) == stripped(objects_of(rendered, "kafka"))
