"""JSON schemas for the KEDA objects we ship (ScaledObject, TriggerAuthentication), written from KEDA's documentation.

kubernetes-validate knows only built-in kinds, and the tests have no network to fetch KEDA's CRDs, so these
schemas restate the documented fields (keda.sh: "ScaledObject specification", "TriggerAuthentication
specification", and the Redis Streams, Apache Kafka and Prometheus scaler pages, KEDA 2.x) — closed where KEDA is
closed, so a misspelt field fails here as it would fail the API server's structural-schema check. Trigger metadata
is a map of strings in KEDA (a number there must be quoted), and each scaler's documented parameters are listed so
that a typo in one (``pendingEntryCount``) is caught, which KEDA itself would silently ignore. The HPA ``behavior``
block is KEDA's copy of ``autoscaling/v2`` and is checked against Kubernetes' own definition.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
from referencing import Registry, Resource

K8S_DEFS = "/api/_definitions.json#/$defs/"

_QUANTITY = {"type": "string", "pattern": r"^[0-9]+$"}
_BOOL = {"type": "string", "enum": ["true", "false"]}

SCALER_METADATA: dict[str, dict[str, Any]] = {
    "redis-streams": {
        "type": "object",
        "additionalProperties": False,
        "required": ["stream"],
        "properties": {
            "address": {"type": "string", "pattern": r"^[^:/]+:[0-9]+$"},
            "host": {"type": "string"},
            "port": _QUANTITY,
            "addressFromEnv": {"type": "string"},
            "hostFromEnv": {"type": "string"},
            "portFromEnv": {"type": "string"},
            "usernameFromEnv": {"type": "string"},
            "passwordFromEnv": {"type": "string"},
            "stream": {"type": "string", "minLength": 1},
            "consumerGroup": {"type": "string", "minLength": 1},
            "pendingEntriesCount": _QUANTITY,
            "streamLength": _QUANTITY,
            "lagCount": _QUANTITY,
            "activationLagCount": _QUANTITY,
            "enableTLS": _BOOL,
            "unsafeSsl": _BOOL,
            "databaseIndex": _QUANTITY,
        },
        # Pending entries and lag are measured for a consumer group: without one KEDA falls back to stream length.
        "dependentRequired": {"pendingEntriesCount": ["consumerGroup"], "lagCount": ["consumerGroup"]},
        "anyOf": [
            {"required": ["address"]},
            {"required": ["addressFromEnv"]},
            {"required": ["host"]},
            {"required": ["hostFromEnv"]},
        ],
    },
    "kafka": {
        "type": "object",
        "additionalProperties": False,
        "required": ["bootstrapServers", "consumerGroup"],
        "properties": {
            "bootstrapServers": {"type": "string", "pattern": r"^[^:,/]+:[0-9]+(,[^:,/]+:[0-9]+)*$"},
            "bootstrapServersFromEnv": {"type": "string"},
            "consumerGroup": {"type": "string", "minLength": 1},
            "consumerGroupFromEnv": {"type": "string"},
            "topic": {"type": "string", "minLength": 1},
            "topicFromEnv": {"type": "string"},
            "lagThreshold": _QUANTITY,
            "activationLagThreshold": _QUANTITY,
            "offsetResetPolicy": {"type": "string", "enum": ["latest", "earliest"]},
            "allowIdleConsumers": _BOOL,
            "scaleToZeroOnInvalidOffset": _BOOL,
            "excludePersistentLag": _BOOL,
            "limitToPartitionsWithLag": _BOOL,
            "ensureEvenDistributionOfPartitions": _BOOL,
            "version": {"type": "string"},
            "fullMetadata": _BOOL,
            "partitionLimitation": {"type": "string"},
            "sasl": {"type": "string"},
            "saslTokenProvider": {"type": "string"},
            "tls": {"type": "string", "enum": ["enable", "disable"]},
            "unsafeSsl": _BOOL,
            "awsRegion": {"type": "string"},
        },
    },
    # keda.sh "Prometheus" scaler: the query must return one number; threshold is per replica.
    "prometheus": {
        "type": "object",
        "additionalProperties": False,
        "required": ["serverAddress", "query", "threshold"],
        "properties": {
            "serverAddress": {"type": "string", "pattern": r"^https?://[^/]+"},
            "query": {"type": "string", "minLength": 1},
            "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
            "activationThreshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
            "namespace": {"type": "string"},
            "customHeaders": {"type": "string"},
            "ignoreNullValues": _BOOL,
            "queryParameters": {"type": "string"},
            "unsafeSsl": _BOOL,
            "timeout": _QUANTITY,
        },
    },
}

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}

_TRIGGER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string", "minLength": 1},
        "name": _NAME,
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "authenticationRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": _NAME, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}},
        },
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
    },
    "allOf": [
        {"if": {"properties": {"type": {"const": t}}}, "then": {"properties": {"metadata": schema}}}
        for t, schema in SCALER_METADATA.items()
    ],
}

_NON_NEGATIVE = {"type": "integer", "minimum": 0}

SCALED_OBJECT: dict[str, Any] = {
    "$id": "https://kubernetes.io/api/keda-scaledobject.json",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": _NAME,
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": _NON_NEGATIVE,
                "initialCooldownPeriod": _NON_NEGATIVE,
                "idleReplicaCount": _NON_NEGATIVE,
                "minReplicaCount": _NON_NEGATIVE,
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": _NON_NEGATIVE,
                        "behavior": {
                            "enum": ["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _NAME,
                                "behavior": {
                                    "$ref": K8S_DEFS + "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"
                                },
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
        },
    },
}

TRIGGER_AUTHENTICATION: dict[str, Any] = {
    "$id": "https://kubernetes.io/api/keda-triggerauthentication.json",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
                    },
                },
                "env": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
                "configMapTargetRef": {"type": "array"},
            },
        },
    },
}

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}


@cache
def _registry(kubernetes_version: str) -> Registry:
    """Kubernetes' shared definitions (ObjectMeta, HPA behavior) from the schemas kubernetes-validate ships."""
    folder = f"kubernetes-json-schema/v{kubernetes_version}-local-strict/_definitions.json"
    path = files("kubernetes_validate").joinpath(folder)
    definitions = Resource.from_contents(json.loads(path.read_text()))
    return definitions @ Registry()


def keda_errors(obj: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Schema violations of a KEDA object, as 'path: message' lines (empty when valid)."""
    schema = SCHEMAS[obj["kind"]]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(kubernetes_version))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
