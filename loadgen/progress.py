"""The live display of a run: elapsed time against duration, and the counts that tell trouble early.

On a terminal it is a rich progress bar; elsewhere (CI logs, tests) rich
disables itself, so a run's output stays clean when piped.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from visionpipe.loadgen.recorder import Recorder
from visionpipe.loadgen.schedule import LoadSpec


class LiveProgress:
    def __init__(self, rec: Recorder, spec: LoadSpec, label: str, enabled: bool = True) -> None:
        self.rec, self.spec = rec, spec
        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not enabled or not console.is_terminal,
        )
        self.task = self.progress.add_task(label, total=spec.duration_s, counts="")
        self.start = time.monotonic()

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.update()
        self.progress.stop()

    def counts(self) -> str:
        rec = self.rec
        p99 = rec.latency.get_value_at_percentile(99) / 1000 if rec.latency.get_total_count() else 0.0
        return (
            f"sent {len(rec.scheduled)}  done {len(rec.done)}  failed {len(rec.failed)}  "
            f"in flight {rec.outstanding}  dup {rec.duplicates}  p99 {p99:.1f} ms"
        )

    def update(self) -> None:
        elapsed = min(self.spec.duration_s, time.monotonic() - self.start)
        self.progress.update(self.task, completed=elapsed, counts=self.counts())

    def draining(self) -> None:
        self.progress.update(self.task, description=f"{self.progress.tasks[0].description} (draining)")
