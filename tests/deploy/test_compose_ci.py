"""deploy/compose: the override files `make compose-check` starts the stack with, checked without a Docker engine.

check.sh itself runs the stack (after the tests, in CI); these catch drift before that: an override that names a
service the compose file no longer has, a GPU stage that would still ask for a GPU, a fixed host port that would
collide, a variable check.sh never sets.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import ROOT, environment_dict, interpolate, load_compose, setting_env_names
from tests.deploy.test_compose import schema_errors
from tests.deploy.test_dockerfile import lint

CI = ROOT / "deploy" / "compose"
OVERRIDES = (CI / "ci.override.yml", CI / "ci.kafka-tansu.yml")
CHECK = CI / "check.sh"
# What check.sh starts: the default services and the kafka and loadgen profiles (not monitoring, not ingest).
PROFILES = {"kafka", "loadgen"}


class Reset:
    """Compose's `!reset`: drop the key from what the files before set."""


class Override:
    """Compose's `!override`: replace the value instead of merging with it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)  # type: ignore[arg-type]
        return Reset() if cls is Reset else Override(value)

    return construct


ComposeLoader.add_constructor("!reset", _tagged(Reset))
ComposeLoader.add_constructor("!override", _tagged(Override))


def load_override(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader subclass
    return doc


def merge(base: Any, over: Any) -> Any:
    """Compose's merge of one file over another, as far as these files need it: mappings key by key, `!reset`
    removes, `!override` replaces, sequences (ports, volumes) are appended."""
    if isinstance(over, Override):
        return copy.deepcopy(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + [v for v in over if v not in base]
    return copy.deepcopy(over)


def merged(env: dict[str, str] | None = None) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for path in OVERRIDES:
        doc = merge(doc, load_override(path))
    return interpolate(doc, env or {})


def started(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if not set(s.get("profiles", [])) - PROFILES}


def gpu_services(doc: dict[str, Any]) -> set[str]:
    def wants_gpu(svc: dict[str, Any]) -> bool:
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return any("gpu" in d.get("capabilities", []) for d in devices)

    return {n for n, s in doc["services"].items() if wants_gpu(s)}


def test_overrides_name_only_services_the_compose_file_has() -> None:
    base = load_compose()["services"]
    for path in OVERRIDES:
        unknown = sorted(set(load_override(path)["services"]) - set(base))
        assert unknown == [], f"{path.name} would add services instead of changing them: {unknown}"


def test_merged_file_follows_the_compose_specification() -> None:
    assert schema_errors(merged()) == []


def test_no_service_asks_for_a_gpu_and_every_stage_runs_on_the_cpu() -> None:
    assert gpu_services(load_compose()), "the shipped file reserves GPUs: the override exists to take them away"
    doc = merged()
    assert gpu_services(doc) == set()
    for name in gpu_services(load_compose()):
        env = environment_dict(doc["services"][name])
        assert env["VISIONPIPE_SERVICE__DEVICE"] == "cpu"
        assert set(env) <= setting_env_names() | {k for k in env if not k.startswith("VISIONPIPE_")}


def test_every_started_service_has_an_image_made_here() -> None:
    """No registry: a service's image is either built from the Dockerfile or named by a variable check.sh sets."""
    base = started(load_compose())
    doc = started(merged())
    for name, svc in doc.items():
        built = "build" in svc and "build" in base[name]
        assert built or svc["image"] != base[name]["image"], f"{name} would pull {base[name]['image']}"


def test_every_published_port_is_chosen_by_check_sh() -> None:
    """Fixed host ports would collide with a Redis or a gateway already running on the machine."""
    raw = merged(env=None)
    for name, svc in started(raw).items():
        for port in svc.get("ports", []):
            spec = port if isinstance(port, str) else str(port.get("published"))
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond loopback"
    unresolved = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for path in OVERRIDES:
        unresolved = merge(unresolved, load_override(path))
    for name, svc in started(unresolved).items():
        for port in svc.get("ports", []):
            assert re.search(r"\$\{(GATEWAY_(GRPC_)?PORT|CI_\w+)", port), f"{name}: {port} is not set by check.sh"


def test_variables_of_the_overrides_are_set_by_check_sh() -> None:
    script = CHECK.read_text()
    exported = set(re.findall(r"^\s*export ((?:[A-Z_]+=?\S* ?)+)", script, re.M))
    names = {n.split("=")[0] for line in exported for n in line.split()} | set(re.findall(r"export (\w+) ", script))
    for path in OVERRIDES:
        for var in re.findall(r"\$\{(\w+)", path.read_text()):
            assert var in names, f"{path.name} uses ${{{var}}}, which check.sh does not export"


def test_the_tansu_file_changes_the_kafka_service_only() -> None:
    """The broker URL is the only difference between the Redis and Kafka runs; this file only swaps the broker."""
    assert set(load_override(CI / "ci.kafka-tansu.yml")["services"]) == {"kafka"}
    for name in ("decode", "detector", "classifier", "gateway"):
        env = environment_dict(merged({"VISIONPIPE_BROKER__URL": "kafka://kafka:9092"})["services"][name])
        assert env["VISIONPIPE_BROKER__URL"] == "kafka://kafka:9092"


def test_check_sh_files_exist_and_ci_runs_it_after_the_tests() -> None:
    script = CHECK.read_text()
    for path in re.findall(r"deploy/compose/[\w./-]+", script):
        assert (ROOT / path).exists(), f"check.sh names {path}, which is not in the repository"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make compose-check" in ci and ci.index("make test") < ci.index("make compose-check")
    assert re.search(r"^compose-check:", (ROOT / "Makefile").read_text(), re.M)


@pytest.mark.parametrize("dockerfile", sorted((CI / "images").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_broker_images_pass_hadolint_and_run_unprivileged(dockerfile: Path) -> None:
    result = lint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    users = re.findall(r"^USER (\S+)", dockerfile.read_text(), re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
