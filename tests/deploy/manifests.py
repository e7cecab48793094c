"""What the Kubernetes tests share: the rendered objects' accessors, validation, and the references between objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
from kubernetes_validate.utils import latest_version

from tests.deploy.helpers import K8S

K8S_VERSION = latest_version()
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Settings that only a Kubernetes deployment has (compose runs its Redis without a password).
K8S_ONLY_SETTINGS = {"VISIONPIPE_BROKER__PASSWORD_FILE"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# How env/envFrom entries name what they read, by the kind they read.
KEY_KINDS = {"ConfigMap": "configMapRef", "Secret": "secretRef"}

Objects = list[dict[str, Any]]


def objects_of(rendered: dict[str, Objects], overlay: str) -> Objects:
    return rendered[overlay]


def configmap_env(objects: Objects) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("visionpipe-settings")]
    return cm["data"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def k8s_errors(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'/'.join(map(str, e.path))}: {e.message}"
    return None


def outer_kustomization(tmp_path: Path, body: str) -> Path:
    """A kustomization in ``tmp_path`` on top of the redis overlay (kustomize accepts only relative paths)."""
    overlay = os.path.relpath(K8S / "overlays" / "redis", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources:\n  - {overlay}\n{body}")
    return tmp_path


def _pod_references(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the ConfigMaps, Secrets and ServiceAccount a pod spec uses."""
    refs: set[tuple[str, str]] = set()
    sources = [src for c in spec["containers"] for src in c.get("envFrom", [])]
    sources += [var["valueFrom"] for c in spec["containers"] for var in c.get("env", []) if "valueFrom" in var]
    for src in sources:
        for kind, key in KEY_KINDS.items():
            for field in (key, key.replace("Ref", "KeyRef")):
                if field in src:
                    refs.add((kind, src[field]["name"]))
    for vol in spec.get("volumes", []):
        if vol.get("secret", {}).get("optional") or vol.get("configMap", {}).get("optional"):
            continue  # an optional volume's object may be absent (the gateway's tokens): nothing dangles
        if "secret" in vol:
            refs.add(("Secret", vol["secret"]["secretName"]))
        if "configMap" in vol:
            refs.add(("ConfigMap", vol["configMap"]["name"]))
    if "serviceAccountName" in spec:
        refs.add(("ServiceAccount", spec["serviceAccountName"]))
    return refs


def _keda_references(obj: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the workload, TriggerAuthentications and Secrets a KEDA object names."""
    if obj["kind"] == "TriggerAuthentication":
        return {("Secret", ref["name"]) for ref in obj["spec"].get("secretTargetRef", [])}
    target = obj["spec"]["scaleTargetRef"]
    refs = {(target.get("kind", "Deployment"), target["name"])}
    auths = [t["authenticationRef"] for t in obj["spec"]["triggers"] if "authenticationRef" in t]
    return refs | {(a.get("kind", "TriggerAuthentication"), a["name"]) for a in auths}


def referenced(objects: Objects) -> set[tuple[str, str]]:
    """(kind, name) of every object that some object names."""
    refs: set[tuple[str, str]] = set()
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            refs |= _pod_references(pod_spec(obj))
        elif obj["kind"] in KEDA_KINDS:
            refs |= _keda_references(obj)
    return refs
