"""``loadgen compare --find-capacity``: each broker's rate stepped to its knee, the brokers compared below it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.loadgen.test_cli import PASSTHROUGH, QUICK, SLOW, loadgen
from tests.servers import Server
from visionpipe.loadgen.capacity import STEP


@pytest.mark.timeout(400)
def test_find_capacity_steps_each_broker_to_its_knee_and_compares_there(
    redis_server: Server, kafka_server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "cap"
    proc = loadgen(
        "compare",
        "--brokers",
        f"{redis_server.url},{kafka_server.url}",
        "--find-capacity",
        "--stage-command",
        PASSTHROUGH,
        "--rate",
        "2.25",
        "--duration",
        "2",
        "--out",
        str(out),
        *QUICK,
        env=SLOW,  # keeps up with about 4 requests/s
        timeout=380,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    doc = json.loads((out / "results.json").read_text())
    capacity = doc["capacity"]
    assert len(capacity["brokers"]) == 2  # redis, and tansu (the Kafka-protocol test broker)
    for broker in capacity["brokers"].values():
        steps = broker["steps"]
        # Every rate is a step from --rate (up, or down when a busy host saturates the first), measured once.
        ks = [math.log(st["rate"] / 2.25, STEP) for st in steps]
        assert all(k == pytest.approx(round(k), abs=1e-6) for k in ks) and len(set(map(round, ks))) == len(ks), steps
        kept = [st["rate"] for st in steps if not st["saturated"]]
        assert broker["knee_rps"] == max(kept), steps
        assert any(st["saturated"] and st["rate"] > broker["knee_rps"] for st in steps), "the edge above was found"
        assert broker["knee_rps"] < 6, steps  # the stand-in keeps up with about 4 requests/s
    common = capacity["compared_at_rps"]
    assert common == min(b["knee_rps"] for b in capacity["brokers"].values())
    assert all(r["summary"]["offered_rps"] == pytest.approx(common, rel=0.35) for r in doc["runs"])
    md = (out / "report.md").read_text()
    assert "## Capacity" in md and f"compare the brokers at {common:.3g} req/s" in md
    if doc["saturated"]:  # a broker run again at that rate (its steps went the other way) hit a busy moment
        assert doc["verdict"] == [] and "**Saturated: no broker is ranked.**" in md
    else:  # below every knee: ranked, capacity first
        assert doc["verdict"][0]["metric"] == "capacity (req/s)" and "capacity (req/s)" in proc.stdout
