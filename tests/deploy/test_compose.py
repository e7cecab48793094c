"""docker-compose.yml: valid Compose, and in step with the settings model the services read.

No Docker engine runs in CI, so `docker compose config` cannot be the judge: the file is validated against the
Compose Specification's own JSON schema (vendored, see compose-spec.SOURCE.md) after the same variable
substitution compose applies, and its environment is loaded through ``visionpipe.settings.Settings``.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.helpers import (
    CONTAINER_HOST,
    ROOT,
    environment_dict,
    interpolate,
    load_compose,
    load_settings_from_env,
    required_env,
    setting_env_names,
)
from visionpipe.topology import STAGES

SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
BROKER_SERVICES = {"redis": "redis://", "kafka": "kafka://"}


@cache
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def seconds(duration: str) -> float:
    """A compose duration ("1m30s", "40s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- the specification -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [{}, {"VISIONPIPE_BROKER__URL": "kafka://kafka:9092", "VISIONPIPE_DETECTOR__WEIGHTS": "random"}],
    ids=["defaults", "kafka"],
)
def test_compose_file_follows_the_compose_specification(env: dict[str, str]) -> None:
    assert schema_errors(load_compose(env)) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"]["detector"].update(helthcheck=d["services"]["detector"].pop("healthcheck")),
        lambda d: d["services"]["redis"].update(healthcheck={"test": ["CMD", "true"], "interval": 5}),
        lambda d: d["services"]["decode"]["deploy"]["resources"]["reservations"].update(gpus=1),
        lambda d: d["services"]["decode"]["deploy"]["resources"]["reservations"]["devices"][0].update(
            capabilities="gpu"
        ),
        lambda d: d["services"]["classifier"]["depends_on"]["redis"].update(condition="healthy"),
        lambda d: d.update(service={}),
    ],
    ids=["service-key-typo", "duration-type", "unknown-key", "capabilities-type", "condition-enum", "top-level-typo"],
)
def test_the_schema_rejects_a_broken_compose_file(compose: dict[str, Any], breakage: Any) -> None:
    """The validator is not a rubber stamp: each of these mistakes is one docker compose would refuse."""
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert schema_errors(broken), "a broken compose file passed validation"


def test_variables_have_defaults_so_plain_up_works() -> None:
    """`docker compose up` with nothing exported: every ${VAR} has a default (an empty value would be a bug)."""
    raw = (ROOT / "docker-compose.yml").read_text()
    bare = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw)
    assert bare == [], f"variables without a default: {bare}"
    assert "${" not in json.dumps(load_compose())


# --- the stages ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_stage_environment_names_are_settings(compose: dict[str, Any], stage: str) -> None:
    env = environment_dict(compose["services"][stage])
    unknown = sorted(k for k in env if k.startswith("VISIONPIPE_") and k not in setting_env_names())
    assert unknown == [], f"{stage}: not fields of visionpipe.settings.Settings: {unknown}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_sets_what_it_needs_and_the_values_load(compose: dict[str, Any], stage: str) -> None:
    needed = required_env(stage)
    assert set(needed) <= setting_env_names(), f"the required list names settings that no longer exist: {needed}"
    env = environment_dict(compose["services"][stage])
    assert [k for k in needed if k not in env] == []
    settings = load_settings_from_env(env)  # raises on a value the service itself would reject
    assert settings.service.host == CONTAINER_HOST
    assert settings.broker.url.startswith("redis://redis:"), "the default broker is the compose redis service"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_is_a_scalable_gpu_service(compose: dict[str, Any], stage: str) -> None:
    svc = compose["services"][stage]
    assert svc["command"][:2] == ["serve", stage]
    # `--scale stage=N` needs N containers that do not collide on a name or a host port.
    assert "container_name" not in svc and "ports" not in svc
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    kafka_dep = svc["depends_on"]["kafka"]
    assert kafka_dep["condition"] == "service_healthy" and kafka_dep["required"] is False
    probe = " ".join(svc["healthcheck"]["test"])
    assert "/readyz" in probe and "VISIONPIPE_SERVICE__PORT" in probe, "the probe must follow the configured port"
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]


@pytest.mark.parametrize("stage", STAGES)
def test_stop_grace_outlasts_the_drain(compose: dict[str, Any], stage: str) -> None:
    """Compose kills after stop_grace_period (10 s by default): a shorter one than the drain loses in-flight work."""
    svc = compose["services"][stage]
    drain = load_settings_from_env(environment_dict(svc)).service.drain_grace_s
    assert seconds(svc["stop_grace_period"]) >= drain + 5


def test_stages_share_one_environment_apart_from_their_own_section(compose: dict[str, Any]) -> None:
    """Broker, streams and service settings must agree across stages, or they would not find each other."""
    envs = {s: environment_dict(compose["services"][s]) for s in STAGES}
    own = {s: f"VISIONPIPE_{s.upper()}__" for s in STAGES}
    common = [{k: v for k, v in env.items() if not k.startswith(own[s])} for s, env in envs.items()]
    assert all(c == common[0] for c in common)


# --- the brokers -----------------------------------------------------------------------------------------------


def test_redis_is_durable_by_default_with_a_memory_bound_and_no_eviction(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = redis["command"]
    opts = dict(zip(args[1::2], args[2::2], strict=True))
    # An append-only file on a named volume: a restart keeps what was in flight (README states each loss window).
    assert opts["--appendonly"] == "yes" and opts["--appendfsync"] == "everysec"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]
    always = load_compose({"REDIS_APPENDFSYNC": "always"})["services"]["redis"]["command"]
    assert dict(zip(always[1::2], always[2::2], strict=True))["--appendfsync"] == "always"
    # Evicting a stream would drop messages without a word; refusing writes makes ingress back off instead.
    assert opts["--maxmemory-policy"] == "noeviction"
    assert opts["--maxmemory"] and redis["deploy"]["resources"]["limits"]["memory"]
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_kafka_is_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["profiles"] == ["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and "ZOOKEEPER" not in " ".join(env)
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["healthcheck"]["test"][0] == "CMD-SHELL"


def test_kafka_accepts_the_messages_the_stages_send(compose: dict[str, Any]) -> None:
    kafka_env = {k: int(v) for k, v in compose["services"]["kafka"]["environment"].items() if str(v).isdigit()}
    for stage in STAGES:
        settings = load_settings_from_env(environment_dict(compose["services"][stage]))
        biggest = settings.broker.kafka_max_message_bytes
        for prop in (
            "KAFKA_MESSAGE_MAX_BYTES",
            "KAFKA_REPLICA_FETCH_MAX_BYTES",
            "KAFKA_FETCH_MAX_BYTES",
            "KAFKA_SOCKET_REQUEST_MAX_BYTES",
            "KAFKA_REPLICA_FETCH_RESPONSE_MAX_BYTES",
        ):
            assert kafka_env[prop] > biggest, f"{prop} is below {stage}'s kafka_max_message_bytes"
        assert kafka_env["KAFKA_NUM_PARTITIONS"] == settings.broker.kafka_partitions
        # One node: the stages must not ask for more copies than there are nodes, or topic creation fails.
        assert settings.broker.kafka_replication_factor == kafka_env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 1
        assert settings.broker.kafka_min_insync_replicas == kafka_env["KAFKA_MIN_INSYNC_REPLICAS"] == 1


def test_kafka_keeps_its_log_on_a_named_volume(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    (volume,) = kafka["volumes"]
    name, path = volume.split(":")
    assert name in compose["volumes"] and kafka["environment"]["KAFKA_LOG_DIRS"] == path


def test_the_broker_is_switched_by_one_variable() -> None:
    for name, scheme in BROKER_SERVICES.items():
        url = f"{scheme}{name}:1234"
        compose = load_compose({"VISIONPIPE_BROKER__URL": url})
        for svc in (*STAGES, "loadgen"):
            assert environment_dict(compose["services"][svc])["VISIONPIPE_BROKER__URL"] == url
        assert url in compose["services"]["loadgen"]["command"]


# --- profiles: loadgen, monitoring ------------------------------------------------------------------------------


def test_loadgen_profile_drives_the_pipeline(compose: dict[str, Any]) -> None:
    gen = compose["services"]["loadgen"]
    assert gen["profiles"] == ["loadgen"]
    cmd = gen["command"]
    assert cmd[:2] == ["loadgen", "run"]
    flags = dict(zip(cmd[2::2], cmd[3::2], strict=True))
    assert flags["--pattern"] == "poisson" and flags["--out"] == "/out"
    assert re.fullmatch(r"\d+x\d+", flags["--synthetic"])
    assert float(flags["--rate"]) > 0 and float(flags["--duration"]) > 0
    assert {s: d["condition"] for s, d in gen["depends_on"].items()} == dict.fromkeys(STAGES, "service_healthy")
    unknown = [k for k in environment_dict(gen) if k.startswith("VISIONPIPE_") and k not in setting_env_names()]
    assert unknown == []


def test_monitoring_profile_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        svc = compose["services"][name]
        assert svc["profiles"] == ["monitoring"]
        for volume in svc["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_prometheus_scrapes_every_stage_on_its_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "visionpipe")
    (sd,) = job["dns_sd_configs"]
    assert sorted(sd["names"]) == sorted([*STAGES, "gateway"])
    for stage in (*STAGES, "gateway"):
        settings = load_settings_from_env(environment_dict(compose["services"][stage]))
        assert sd["port"] == settings.service.port
    assert job["metrics_path"] == "/metrics"


def test_interpolation_follows_compose_rules() -> None:
    """The helper that stands in for compose's substitution must itself be right, or the checks above mean little."""
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}|${UNSET}|$$SET", env) == "x|d||d||$SET"
    with pytest.raises(KeyError):
        interpolate("${UNSET:?needed}", env)
