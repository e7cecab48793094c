"""``python -m visionpipe.samples [--bench DIR]``: regenerate the synthetic samples, or write the benchmark's inputs."""

import sys
from pathlib import Path

from visionpipe.samples import write_bench_set, write_samples

if len(sys.argv) == 3 and sys.argv[1] == "--bench":
    write_bench_set(Path(sys.argv[2]))
else:
    for p in write_samples():
        print(f"{p}  {p.stat().st_size} bytes")
