"""The Markdown section ``make gpu-check`` writes beside its JSON: tables a reader can paste into RESULTS.md.

Every number comes from the JSON of the same run; a section that failed says
so with its error, a ratio whose baseline never drained says "n/a".
"""

from __future__ import annotations

from typing import Any

from visionpipe.loadgen.bench.targets import met_label

DNN = ("detector", "classifier")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return [*out, ""]


def _failed(doc: dict[str, Any], name: str) -> list[str] | None:
    sec = doc.get(name)
    if sec is None:
        return ["_not run_", ""]
    if "error" in sec:
        return [f"**failed** after {sec['elapsed_s']} s: `{sec['error']}`", ""]
    return None


def _tests(doc: dict[str, Any]) -> list[str]:
    out = ["### GPU tests", ""]
    bad = _failed(doc, "tests")
    if bad:
        return out + bad
    t = doc["tests"]["result"]
    counts = [t.get("passed"), t.get("failures"), t.get("errors"), t.get("skipped"), t["exit_code"]]
    out += _table(["passed", "failed", "errors", "skipped", "exit code"], [counts])
    out += [f"- failed: `{name}`" for name in t.get("failed", [])]
    return [*out, ""]


def _executor(doc: dict[str, Any]) -> list[str]:
    out = ["### Executor on the device (mechanics, then policies)", ""]
    bad = _failed(doc, "executor")
    if bad:
        return out + bad
    for model, run in doc["executor"]["result"].items():
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
        rows = [
            [
                r["policy"],
                r["params"],
                r["mechanics"],
                r["trace"],
                r["load"],
                r["throughput"],
                r["p50_ms"],
                r["p99_ms"],
                r.get("peak_p99_ms"),
                r["mean_batch"],
                r["gpu_busy_ms_per_request"],
            ]
            for r in run["rows"]
        ]
        out += _table(
            [
                "policy",
                "params",
                "mechanics",
                "trace",
                "load",
                "req/s",
                "p50 ms",
                "p99 ms",
                "peak p99",
                "mean batch",
                "GPU ms/req",
            ],
            rows,
        )
        out += _table(
            ["target", "value", "threshold", "met", "detail"],
            [
                [t["target"], t["value"], f"{t['op']} {t['threshold']}", met_label(t["met"]), t["detail"]]
                for t in run["targets"]
            ],
        )
    return out


def _batch1(doc: dict[str, Any]) -> list[str]:
    out = ["### Batch-1 latency (through TorchDevice: stage, upload, compute, download)", ""]
    bad = _failed(doc, "batch1")
    if bad:
        return out + bad
    b = doc["batch1"]["result"]
    rows = [
        [k, v["request"]["p50_ms"], v["request"]["p99_ms"], v["compute"]["p50_ms"]]
        for k, v in b.items()
        if isinstance(v, dict)
    ]
    out += [b["model"], "", *_table(["mode", "request p50 ms", "request p99 ms", "compute p50 ms"], rows)]
    if b.get("graphs_speedup"):
        out += [f"CUDA graphs: {b['graphs_speedup']}x faster at p50 (goal: ≤ 3 ms; eager was 6.2 ms on an H100).", ""]
    return out


def _decode_and_classifier(doc: dict[str, Any]) -> list[str]:
    out = ["### Decode stage vs raw batched decode_jpeg", ""]
    bad = _failed(doc, "decode")
    if bad:
        out += bad
    else:
        rows = [
            [k, v["backend"], v["batch"], v["stage_img_s"], v["raw_decode_jpeg_img_s"], v["stage_over_raw"]]
            for k, v in doc["decode"]["result"].items()
        ]
        out += _table(["size", "backend", "batch", "stage img/s", "raw img/s", "stage ÷ raw (target ≥ 0.9)"], rows)
    out += ["### Classifier stage at saturation vs raw forward", ""]
    bad = _failed(doc, "classifier")
    if bad:
        return out + bad
    c = doc["classifier"]["result"]
    raw_key = next(k for k in c if k.startswith("raw_"))
    return out + _table(
        ["model", "max batch", "stage crops/s", raw_key, "stage ÷ raw (target ≥ 0.9)"],
        [[c["model"], c["max_batch"], c["stage_crops_s"], c[raw_key], c["stage_over_raw"]]],
    )


def _pipeline(doc: dict[str, Any]) -> list[str]:
    out = ["### visionpipe run on the memory broker (per-stage split)", ""]
    bad = _failed(doc, "run")
    if bad:
        return out + bad
    rows = []
    for label, rec in doc["run"]["result"].items():
        s = rec.get("summary")
        if s is None:
            rows.append([label, f"failed (exit {rec['exit_code']})", "", "", "", "", ""])
            continue
        share = s["share"]
        non_dnn = 1.0 - sum(share.get(k, 0.0) for k in DNN)
        split = ", ".join(f"{k} {v:.0%}" for k, v in share.items())
        rows.append(
            [
                label,
                s["images_per_s"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p99"],
                s["decoder"],
                f"{non_dnn:.0%}",
                split,
            ]
        )
    return out + _table(
        [
            "input",
            "images/s",
            "p50 ms",
            "p99 ms",
            "decoder",
            "non-DNN share (target ≤ 10% at 640x480)",
            "share of time per request",
        ],
        rows,
    )


def markdown(doc: dict[str, Any]) -> str:
    env = doc["env"]
    head = [
        f"## GPU check ({doc['mode']} mode)",
        "",
        f"`{doc['command']}` — {env['device']}, Python {env['python']}, torch {env['torch']}, torchvision "
        f"{env['torchvision']}, {env['cpus']} CPUs, load at start {env['loadavg_start']}; {doc['elapsed_s']} s "
        "in all. Random weights throughout (outputs are meaningless; times are not).",
        "",
    ]
    body = _tests(doc) + _executor(doc) + _batch1(doc) + _decode_and_classifier(doc) + _pipeline(doc)
    return "\n".join(head + body) + "\n"
