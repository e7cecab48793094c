"""Prometheus and Grafana files: they parse, point at each other, and query series the services really export.

The dashboard's queries are checked against ``visionpipe.metrics.Metrics`` as it is when the tests run, so renaming
a metric or a label there fails here until the dashboard follows.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from tests.deploy.helpers import ROOT, load_compose
from visionpipe.metrics import Metrics

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "visionpipe.json"
# Labels Prometheus adds to every series (target labels, our relabelling) or to histogram buckets.
TARGET_LABELS = {"instance", "job", "service", "pod", "le"}
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def exported() -> dict[str, set[str]]:
    """Series name -> label names, for every metric a stage exports."""
    metrics = Metrics()
    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            out[value._name] = set(value._labelnames)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_covers_what_the_issue_asks(dashboard: dict[str, Any]) -> None:
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "batch size", "backlog", "latency", "gpu memory"):
        assert topic in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    refs = [(p["id"], t["refId"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(refs) == len(set(refs))


def test_dashboard_queries_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    series = exported()
    for expr in queries(dashboard):
        used = {m for m in re.findall(r"\b(visionpipe_\w+)", expr)}
        assert used, f"queries no visionpipe metric: {expr}"
        labels: set[str] = set()
        for name in used:
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s) and name[: -len(s)] in series), name)
            assert base in series, f"{name} is not exported by visionpipe.metrics: {expr}"
            labels |= series[base]
        grouped = {g.strip() for clause in re.findall(r"by \(([^)]*)\)", expr) for g in clause.split(",")}
        selected = set(re.findall(r"(\w+)=~?\"", expr))
        assert grouped | selected <= labels | TARGET_LABELS, f"unknown labels in {expr}"


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = provisioned["datasources"]
    assert datasource["url"] == "http://prometheus:9090", "the compose service name and port"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"])


def test_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/visionpipe.yml").read_text())["providers"]
    grafana = load_compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    for provider in providers:
        source = mounts[provider["options"]["path"]]
        assert (ROOT / source / DASHBOARD.name).exists()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.rsplit("/", 1)[0] in mounts and home.endswith(DASHBOARD.name)


def test_kubernetes_scrape_job_reads_the_pod_annotations() -> None:
    job = yaml.safe_load((ROOT / "deploy/prometheus/kubernetes-scrape.yml").read_text())["scrape_configs"][0]
    sources = {label for rule in job["relabel_configs"] for label in rule.get("source_labels", [])}
    for annotation in ("scrape", "port", "path"):
        assert f"__meta_kubernetes_pod_annotation_prometheus_io_{annotation}" in sources
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["namespaces"]["names"] == ["visionpipe"]
