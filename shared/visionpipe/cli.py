"""The one command, ``visionpipe``.

Subcommands live beside the code they drive and are imported only when
invoked, so ``visionpipe --help`` does not load torch and a missing optional
dependency (DALI, matplotlib) breaks only the command that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from visionpipe import __version__

# Modules of the `bench` extra: a stage's image leaves them out, so their commands say how to get them.
BENCH_EXTRA = frozenset({"hdrh", "matplotlib", "psutil"})


class LazyGroup(click.Group):
    """A click group whose subcommands are ``(module:attribute, short help)``, imported on use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name][0].split(":")
            try:
                command = getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name not in BENCH_EXTRA:
                    raise
                raise click.ClickException(
                    f"`{cmd_name}` needs {exc.name}, which is in the bench extra: pip install 'visionpipe[bench]'"
                ) from exc
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name][0]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


@click.group(
    cls=LazyGroup,
    lazy={
        "run": ("visionpipe.services.commands.run:run", "Run the whole pipeline in one process over images."),
        "serve": (
            "visionpipe.services.commands.serve:serve",
            "Run one stage (decode, detector, classifier) as a service.",
        ),
        "loadgen": ("visionpipe.loadgen.commands:loadgen", "Drive the pipeline with load; compare brokers."),
        "broker-demo": (
            "visionpipe.loadgen.bench.broker_demo:broker_demo",
            "Pass messages through one relay stage; print hop latency.",
        ),
        "dlq": ("visionpipe.broker.dlq:dlq", "List or replay dead-lettered messages."),
        "ingest": (
            "visionpipe.services.commands.ingest:ingest",
            "Ingest video streams (files, RTSP, HTTP, V4L2); add, list and remove them at run time.",
        ),
        "models": ("visionpipe.services.commands.models:models", "List, fetch and verify the bundled models."),
    },
)
@click.version_option(__version__, prog_name="visionpipe")
def main() -> None:
    """GPU vision-inference pipeline: decode -> detect -> classify over a broker."""


@main.group(
    cls=LazyGroup,
    short_help="Benchmarks: side-by-side ratios, written to files.",
    lazy={
        "executor": (
            "visionpipe.loadgen.bench.executor:bench_executor",
            "Batching policies side by side (sim, cpu, cuda).",
        ),
        "broker": (
            "visionpipe.loadgen.bench.broker_hop:bench_broker",
            "Produce -> consume -> ack hop at stream payload sizes.",
        ),
        "decode": ("visionpipe.loadgen.bench.decode:bench_decode", "Decode paths side by side on the same files."),
        "ingest": (
            "visionpipe.loadgen.bench.ingest:bench_ingest",
            "One video stream through the pipeline vs decode alone; JPEG vs raw transport.",
        ),
        "gpu-check": (
            "visionpipe.loadgen.bench.gpu_check:gpu_check",
            "Everything measured on a GPU in one run (or its CPU mode), as JSON + Markdown.",
        ),
        "pipeline": (
            "visionpipe.loadgen.bench.pipeline:bench_pipeline",
            "Bundled vs old models, visionpipe run vs a plain script (CPU).",
        ),
        "gateway": (
            "visionpipe.loadgen.bench.gateway:bench_gateway",
            "HTTP gateway vs broker-direct latency at one load; sustained requests/s.",
        ),
        "deadlines": (
            "visionpipe.loadgen.bench.deadlines:bench_deadlines",
            "End-to-end deadlines in the three-stage simulator: per-stage delays vs static split vs propagated.",
        ),
    },
)
def bench() -> None:
    """Benchmarks: side-by-side ratios written to files.

    Not timed tests; their code lives in visionpipe.loadgen.bench.
    """
