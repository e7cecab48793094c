"""``loadgen compare --find-capacity``: each broker's rate stepped to its knee, the brokers compared below it."""

from __future__ import annotations

import itertools
import json
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
    for name in ("redis", "kafka"):
        broker = capacity["brokers"][name]
        steps = broker["steps"]
        assert steps[0]["rate"] == 2.25 and not steps[0]["saturated"], steps
        assert steps[-1]["saturated"] and not any(s["saturated"] for s in steps[:-1]), steps
        assert all(b["rate"] == pytest.approx(a["rate"] * STEP) for a, b in itertools.pairwise(steps))
        assert broker["knee_rps"] == steps[-2]["rate"] and 2 <= broker["knee_rps"] < 5, steps
    common = capacity["compared_at_rps"]
    assert common == min(capacity["brokers"][n]["knee_rps"] for n in ("redis", "kafka"))
    assert doc["saturated"] == {}  # the runs the report compares are below every knee
    assert all(r["summary"]["offered_rps"] == pytest.approx(common, rel=0.35) for r in doc["runs"])
    assert doc["verdict"][0]["metric"] == "capacity (req/s)"
    md = (out / "report.md").read_text()
    assert "## Capacity" in md and f"compare the brokers at {common:.3g} req/s" in md
    assert "capacity (req/s)" in proc.stdout
