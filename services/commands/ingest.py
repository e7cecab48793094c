"""``visionpipe ingest SOURCE...`` runs the service; ``visionpipe ingest add|list|remove`` talk to a running one.

``ingest`` is a group whose default command is ``run``, so ``visionpipe ingest cam.mp4 rtsp://...`` starts
the service with those sources, and ``visionpipe ingest run add`` still ingests a file named ``add``. The
client commands use the HTTP API (:mod:`.api`) with the standard library only.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from visionpipe.broker import BrokerAuthError, BrokerUnreachable
from visionpipe.logs import setup_logging
from visionpipe.services.commands.preflight import DEFAULT_PORTS, INGEST, check_broker_url, check_port, role_port
from visionpipe.services.commands.serve import cli_settings
from visionpipe.services.ingest.remote import IngestUnreachable, call
from visionpipe.settings import StreamSource

DEFAULT_API = f"http://127.0.0.1:{DEFAULT_PORTS[INGEST]}"


class DefaultGroup(click.Group):
    """A group that runs ``default`` when the first argument is not one of its commands."""

    default = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup)
def ingest() -> None:
    """Video ingest: `ingest SOURCE...` runs the service; `ingest add|list|remove` drive a running one."""


def _specs(sources: tuple[str, ...], fps: float | None, policy: str, annotate: Path | None) -> list[StreamSource]:
    from visionpipe.services.ingest.source import classify

    specs = []
    for url in sources:
        out = None
        if annotate is not None and not classify(url).live:
            out = str(annotate / f"{Path(url).stem}.annotated.mp4")
        specs.append(StreamSource(url=url, fps=fps, policy=policy, annotate=out))
    return specs


@ingest.command("run")
@click.argument("sources", nargs=-1)
@click.option("--broker", help="memory:// (default: the stages run in this process), redis://… or kafka://…")
@click.option("--fps", type=float, help="frames per second sent on, per stream (default: ingest.fps)")
@click.option("--policy", type=click.Choice(["auto", "lossless", "latest"]), default="auto", show_default=True)
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), help="write results here (JSONL)")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path), help="annotated videos of files here")
@click.option("--until-done", is_flag=True, help="exit once every stream has ended and its results are in")
@click.option("--port", type=int, help="port of the API and probes (default 8010; 0: any free port)")
@click.option("--host", help="address of the API and probes")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="where in-process stages run")
@click.option("--weights", help="random, DEFAULT or a torchvision weights name (in-process stages)")
@click.option("--settings", "settings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def run_cmd(
    sources: tuple[str, ...],
    broker: str | None,
    fps: float | None,
    policy: str,
    results: Path | None,
    annotate: Path | None,
    until_done: bool,
    port: int | None,
    host: str | None,
    device: str | None,
    weights: str | None,
    settings_file: Path | None,
) -> None:
    """Ingest SOURCES (files, rtsp://, http(s)://, /dev/videoN, lavfi:GRAPH) and serve /v1/streams."""
    from visionpipe.services.ingest.service import IngestService

    settings = role_port(cli_settings(settings_file, broker, device, weights, port=port, host=host), INGEST)
    setup_logging(settings.service.log_level, settings.service.log_json)
    check_broker_url(settings)
    check_port(settings.service.host, settings.service.port, "ingest's API")
    service = IngestService(settings, _specs(sources, fps, policy, annotate), results)
    try:
        asyncio.run(service.run(until_done=until_done))
    except (BrokerUnreachable, BrokerAuthError) as exc:
        raise click.ClickException(str(exc)) from None


def _call(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return call(api, method, path, body)
    except (KeyError, ValueError, IngestUnreachable) as exc:  # the registry's refusals, or nobody there
        raise click.ClickException(f"{method} {path}: {exc}") from None


api_option = click.option("--api", default=DEFAULT_API, show_default=True, envvar="VISIONPIPE_INGEST_API")


@ingest.command("add")
@click.argument("url")
@click.option("--id", "stream_id", help="stream id (default: from the URL)")
@click.option("--fps", type=float)
@click.option("--policy", type=click.Choice(["auto", "lossless", "latest"]), default="auto", show_default=True)
@click.option("--live/--not-live", default=None, help="override what the URL suggests")
@click.option("--deadline-ms", type=float, help="a frame is worthless this long after capture (answered early then)")
@api_option
def add_cmd(
    url: str,
    stream_id: str | None,
    fps: float | None,
    policy: str,
    live: bool | None,
    deadline_ms: float | None,
    api: str,
) -> None:
    """Add a stream to a running ingest service."""
    body = {"url": url, "id": stream_id, "fps": fps, "policy": policy, "live": live, "deadline_ms": deadline_ms}
    click.echo(json.dumps(_call(api, "POST", "/v1/streams", body), indent=2))


@ingest.command("list")
@api_option
@click.option("--json", "as_json", is_flag=True, help="the API's JSON instead of a table")
def list_cmd(api: str, as_json: bool) -> None:
    """List the streams of a running ingest service with their counters."""
    doc = _call(api, "GET", "/v1/streams")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{'id':24} {'state':12} {'policy':8} {'fps':>5} {'decoded':>8} {'sent':>7} {'dropped':>7}  url")
    for s in doc["streams"]:
        c = s["counters"]
        fps = "all" if s["fps"] is None else f"{s['fps']:g}"
        click.echo(
            f"{s['id']:24} {s['state']:12} {s['policy']:8} {fps:>5} {c['decoded']:>8} {c['published']:>7} "
            f"{c['dropped']:>7}  {s['url']}"
        )


@ingest.command("remove")
@click.argument("stream_id")
@api_option
def remove_cmd(stream_id: str, api: str) -> None:
    """Remove a stream; prints its final counters."""
    click.echo(json.dumps(_call(api, "DELETE", f"/v1/streams/{stream_id}"), indent=2))
