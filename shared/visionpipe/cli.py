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
            command = getattr(importlib.import_module(module), attr)
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
        "run": ("visionpipe.services.run:run", "Run the whole pipeline in one process over images."),
        "serve": ("visionpipe.services.serve:serve", "Run one stage (decode, detector, classifier) as a service."),
        "loadgen": ("visionpipe.loadgen.cli:loadgen", "Drive the pipeline with load; compare brokers."),
        "broker-demo": ("visionpipe.broker.demo:broker_demo", "Pass messages through one stage; print hop latency."),
        "dlq": ("visionpipe.broker.dlq:dlq", "List or replay dead-lettered messages."),
    },
)
@click.version_option(__version__, prog_name="visionpipe")
def main() -> None:
    """GPU vision-inference pipeline: decode -> detect -> classify over a broker."""


@main.group(
    cls=LazyGroup,
    lazy={
        "executor": ("visionpipe.executor.bench:bench_executor", "Batching policies side by side (sim, cpu, cuda)."),
        "broker": ("visionpipe.broker.bench:bench_broker", "Produce -> consume -> ack hop at stream payload sizes."),
    },
)
def bench() -> None:
    """Benchmarks that write machine-readable results (not timed tests)."""
