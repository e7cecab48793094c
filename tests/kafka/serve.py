"""Run the tests' Apache Kafka (one KRaft node) for a benchmark script: ``python -m tests.kafka.serve DIR`` prints its
URL on one line once it answers, and stops it on SIGTERM or SIGINT (benchmarks/local-brokers.sh uses it)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.kafka.apache import start_apache_kafka


def main(workdir: str) -> None:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cluster = start_apache_kafka(Path(workdir))
    try:
        print(cluster.url, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        cluster.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # taken by sigwait, not by default
    main(sys.argv[1])
