"""``python -m tests.services.gateway.probe PORT OUT``: GET /healthz every 25 ms until SIGTERM, then write JSON
(count, worst and 99th-percentile latency in ms, failures) to OUT.

A process of its own, so what it measures is the gateway's answer time, not the test process's own load.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

INTERVAL_S = 0.025


def main() -> None:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    latencies: list[float] = []
    failures = 0
    while not stop:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                ok = resp.status == 200
        except OSError:
            ok = False
        latencies.append((time.perf_counter() - t0) * 1000)
        failures += not ok
        time.sleep(INTERVAL_S)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    out.write_text(
        json.dumps(
            {
                "count": len(latencies),
                "worst_ms": latencies[-1] if latencies else 0.0,
                "p99_ms": p99,
                "failures": failures,
            }
        )
    )


if __name__ == "__main__":
    main()
