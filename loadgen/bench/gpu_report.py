"""The Markdown ``gpu-check`` writes beside its JSON, the goals it is measured against, one line per section.

Every number comes from the JSON of the same run. A section says whether it ran, was skipped (and why),
failed (with its error) or was still running when the process ended; a goal is met, not met, or not run —
never met by a run that did not happen, and never in the CPU mode, which has no GPU to meet it on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from visionpipe.loadgen.bench.targets import met_label

DNN = ("detector", "classifier")
RUN_VGA, PLAIN_VGA = "640x480 photos: visionpipe run", "640x480 photos: plain script"
OVERLAP_TARGET = "mechanics: capacity at the p99 SLO overlapped ÷ serial-pinned (load grid)"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return [*out, ""]


def _result(doc: dict[str, Any], name: str) -> Any:
    rec = doc.get("sections", {}).get(name)
    return rec.get("result") if rec and rec.get("state") == "ok" else None


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _overlap_ratio(doc: dict[str, Any]) -> float | None:
    targets = _dig(_result(doc, "overlap"), "detector", "targets") or []
    return next((t["value"] for t in targets if t["target"] == OVERLAP_TARGET), None)


def _graphs_ratio(doc: dict[str, Any]) -> float | None:
    b = _dig(_result(doc, "batch1"), "efficientnet_lite0")
    eager, graphs = _dig(b, "eager", "request", "p50_ms"), _dig(b, "cuda_graphs", "request", "p50_ms")
    return round(graphs / eager, 3) if eager and graphs else None


def _run_ratio(doc: dict[str, Any]) -> float | None:
    r = _result(doc, "run")
    ours, plain = _dig(r, RUN_VGA, "summary", "images_per_s"), _dig(r, PLAIN_VGA, "summary", "images_per_s")
    return round(ours / plain, 3) if ours and plain else None


# (goal, section, value from the document, op, threshold)
GOALS: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None], str, float], ...] = (
    ("overlapped ÷ serial-pinned capacity at p99 ≤ SLO, shipped detector", "overlap", _overlap_ratio, ">=", 1.1),
    (
        "classifier stage at saturation ÷ raw b256 forward",
        "classifier",
        lambda d: _dig(_result(d, "classifier"), "stage_over_raw"),
        ">=",
        0.90,
    ),
    (
        "nvJPEG decode stage ÷ raw decode of the same work (640x480)",
        "decode",
        lambda d: _dig(_result(d, "decode"), "640x480", "stage_over_raw"),
        ">=",
        0.90,
    ),
    ("batch-1 classifier latency with graphs ÷ eager (p50)", "batch1", _graphs_ratio, "<=", 0.5),
    ("visionpipe run ÷ plain script, 640x480 photos (images/s)", "run", _run_ratio, ">=", 1.5),
    (
        "non-DNN share of p50, 640x480 photos",
        "run",
        lambda d: _dig(_result(d, "run"), RUN_VGA, "non_dnn_share_at_p50"),
        "<=",
        0.10,
    ),
)


def goals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the GPU run: its value, and met / not met / not run (the CPU mode never meets one)."""
    out = []
    for goal, section, value_of, op, threshold in GOALS:
        value = value_of(doc)
        rec = doc.get("sections", {}).get(section, {})
        if doc.get("mode") == "cpu":
            state = "not run (CPU mode)"
        elif value is None:
            state = f"not run (section {section}: {rec.get('state', 'not reached')})"
        else:
            state = met_label(value >= threshold if op == ">=" else value <= threshold)
        out.append({"goal": goal, "section": section, "value": value, "op": op, "threshold": threshold, "state": state})
    return out


def headline(name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """The one-line summary of a finished (or skipped) section: its state, time and the figures that matter."""
    line: dict[str, Any] = {"state": rec["state"], "elapsed_s": rec.get("elapsed_s"), "estimate_s": rec["estimate_s"]}
    for key in ("reason", "error"):
        if key in rec:
            line[key] = rec[key]
    r = rec.get("result")
    if not isinstance(r, dict):
        return line
    if name == "tests":
        line.update({k: r.get(k) for k in ("passed", "failures", "errors", "skipped", "timed_out")})
    elif name in ("overlap", "policies"):
        runs = {m: run for m, run in r.items() if isinstance(run, dict)}
        line["targets"] = {m: {t["target"]: t["value"] for t in run.get("targets", [])} for m, run in runs.items()}
    elif name == "classifier":
        line["stage_over_raw"] = r.get("stage_over_raw")
    elif name == "batch1":
        line["graphs_over_eager_p50"] = _graphs_ratio({"sections": {"batch1": rec}})
    elif name == "decode":
        line["stage_over_raw"] = {k: v.get("stage_over_raw") for k, v in r.items() if isinstance(v, dict)}
    elif name == "run":
        line["run_over_plain"] = _run_ratio({"sections": {"run": rec}})
        line["non_dnn_share_at_p50"] = _dig(r, RUN_VGA, "non_dnn_share_at_p50")
    return line


def _status(doc: dict[str, Any], name: str) -> list[str] | None:
    """A line for a section that has no result to show, else None."""
    rec = doc.get("sections", {}).get(name)
    if rec is None:
        return ["_not reached_", ""]
    state = rec["state"]
    if state == "skipped":
        return [f"_skipped_: {rec['reason']}", ""]
    if state == "running":
        return [f"**still running** when the file was last written (estimated {rec['estimate_s']} s)", ""]
    if state == "failed":
        return [f"**failed** after {rec['elapsed_s']} s: `{rec['error']}`", ""]
    return None


def _tests(r: dict[str, Any]) -> list[str]:
    counts = [r.get("passed"), r.get("failures"), r.get("errors"), r.get("skipped"), r.get("exit_code")]
    out = _table(["passed", "failed", "errors", "skipped", "exit code"], [counts])
    if r.get("timed_out"):
        out += ["Cut short by its time limit: counts are from the lines printed so far.", ""]
    return out + [f"- failed: `{name}`" for name in r.get("failed", [])] + [""]


def _live(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for model, run in r.items():
        out += [f"#### {model}", ""]
        if "error" in run:
            out += [f"**failed**: `{run['error']}`", ""]
            continue
        meta = run["meta"]
        out += [
            f"{meta['model']}; max batch {meta['max_batch']}, SLO {meta['slo_ms']} ms, raw max-batch forward "
            f"{meta['raw_throughput']}/s; fitted ms at max batch: {meta['phases_ms_at_max_batch']}; "
            f"runs skipped for time: {meta['runs_skipped_for_time']}",
            "",
        ]
        keys = ("policy", "params", "mechanics", "trace", "load", "throughput", "p50_ms", "p99_ms", "peak_p99_ms")
        rows = [[row.get(k) for k in (*keys, "mean_batch", "gpu_busy_ms_per_request")] for row in run["rows"]]
        head = ["policy", "params", "mechanics", "trace", "load", "req/s", "p50 ms", "p99 ms", "peak p99"]
        out += _table([*head, "mean batch", "GPU ms/req"], rows)
        out += _table(
            ["target", "value", "threshold", "met", "detail"],
            [
                [t["target"], t["value"], f"{t['op']} {t['threshold']}", met_label(t["met"]), t["detail"]]
                for t in run["targets"]
            ],
        )
    return out


def _batch1(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, b in r.items():
        if "skipped" in b:
            out += [f"{name}: skipped, {b['skipped']}", ""]
            continue
        rows = [
            [k, v["request"]["p50_ms"], v["request"]["p99_ms"], v["compute"]["p50_ms"]]
            for k, v in b.items()
            if isinstance(v, dict)
        ]
        out += [b["model"], "", *_table(["mode", "request p50 ms", "request p99 ms", "compute p50 ms"], rows)]
    return out


def _decode(r: dict[str, Any]) -> list[str]:
    rows = [
        [k, v.get("backend"), v.get("batch"), v.get("stage_img_s"), v.get("raw_img_s"), v.get("stage_over_raw")]
        for k, v in r.items()
    ]
    return _table(["size", "backend", "batch", "stage img/s", "raw img/s", "stage ÷ raw"], rows)


def _classifier(c: dict[str, Any]) -> list[str]:
    raw_key = next(k for k in c if k.startswith("raw_"))
    return _table(
        ["model", "max batch", "stage crops/s", raw_key, "stage ÷ raw"],
        [[c["model"], c["max_batch"], c["stage_crops_s"], c[raw_key], c["stage_over_raw"]]],
    )


def _run(r: dict[str, Any]) -> list[str]:
    rows = []
    for label, rec in r.items():
        if not isinstance(rec, dict):
            continue
        s = rec.get("summary")
        if s is None:
            failed = "timed out" if rec.get("timed_out") else f"failed (exit {rec.get('exit_code')})"
            why = rec.get("skipped") or failed
            rows.append([label, why, "", "", "", "", ""])
            continue
        lat = s.get("latency_ms", {})
        share = s.get("share")
        split = ", ".join(f"{k} {v:.0%}" for k, v in share.items()) if share else ""
        p50_share = rec.get("non_dnn_share_at_p50")
        rows.append(
            [
                label,
                s["images_per_s"],
                lat.get("p50", s.get("batch_ms_p50")),
                lat.get("p99"),
                s.get("crops_per_image", ""),
                "" if p50_share is None else f"{p50_share:.0%}",
                split,
            ]
        )
    head = ["case", "images/s", "p50 ms", "p99 ms", "crops/image", "non-DNN share at p50", "share of time"]
    return [f"Weights: {r.get('weights')}.", "", *_table(head, rows)]


def _as_json(result: Any) -> list[str]:
    return ["```json", json.dumps(result, indent=1, default=str), "```", ""]


RENDER: dict[str, Callable[[Any], list[str]]] = {
    "tests": _tests,
    "overlap": _live,
    "classifier": _classifier,
    "batch1": _batch1,
    "decode": _decode,
    "run": _run,
    "policies": _live,
}


def markdown(doc: dict[str, Any]) -> str:
    env = doc["env"]
    head = [
        f"## GPU check ({doc['mode']} mode)",
        "",
        f"`{doc['command']}` — {env['device']}, Python {env['python']}, torch {env['torch']}, torchvision "
        f"{env['torchvision']}, {env['cpus']} CPUs, load at start {env['loadavg_start']}; {doc.get('elapsed_s')} s "
        f"of a {doc.get('budget_s')} s budget{'' if doc.get('finished') else ' (unfinished when written)'}.",
        "",
        "### Goals",
        "",
    ]
    head += _table(
        ["goal", "value", "threshold", "state"],
        [[g["goal"], g["value"], f"{g['op']} {g['threshold']}", g["state"]] for g in doc.get("goals") or goals(doc)],
    )
    body: list[str] = []
    for step in doc.get("plan", []):
        name = step["name"]
        body += [f"### {step['title']}", ""]
        rec = doc.get("sections", {}).get(name)
        status = _status(doc, name)
        if status is not None or rec is None:
            body += status or []
            continue
        body += [f"{rec['elapsed_s']} s (estimated {rec['estimate_s']} s).", ""]
        body += RENDER.get(name, _as_json)(rec["result"])
    return "\n".join(head + body) + "\n"
