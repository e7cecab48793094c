"""``visionpipe serve STAGE``: one stage as a long-running service, or with ``--drain`` until its input is done.

Flags override ``VISIONPIPE_*`` environment variables, which override the
settings file. SIGTERM (and Ctrl-C) stop consumption and give in-flight
batches ``service.drain_grace_s`` to finish and ack; anything unfinished is
left unacked for another replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import click

from visionpipe.broker import BrokerAuthError, BrokerUnreachable, connect
from visionpipe.health import HealthServer
from visionpipe.logs import setup_logging
from visionpipe.metrics import Metrics
from visionpipe.services.commands.preflight import GATEWAY, check_broker_url, check_port, role_port
from visionpipe.services.models.registry import WeightsUnavailable
from visionpipe.services.runtime.factory import make_worker
from visionpipe.services.runtime.worker import Worker
from visionpipe.settings import SETTINGS_FILE_ENV, Settings, load_settings
from visionpipe.topology import STAGES

log = logging.getLogger(__name__)

# sysexits' EX_CONFIG: the settings name weights this machine does not have (not fetched, offline, altered).
EXIT_NO_WEIGHTS = 78
# sysexits' EX_UNAVAILABLE: the broker did not answer within broker.connect_timeout_s at start-up, or refused us.
EXIT_NO_BROKER = 69
EXIT_CODES = """\b
Exit codes:
  0   stopped cleanly (SIGTERM, Ctrl-C, or --drain with nothing left)
  1   bad settings: the broker URL, the port in use
  69  the broker did not answer at start-up (broker.connect_timeout_s) or refused the credentials
  78  the weights asked for are not on this machine (visionpipe models fetch)
"""


def cli_settings(
    settings_file: Path | None = None,
    broker: str | None = None,
    device: str | None = None,
    weights: str | None = None,
    detector: str | None = None,
    classifier: str | None = None,
    **service: object,
) -> Settings:
    """Settings with the common flags applied on top of environment and file."""
    if settings_file is not None:
        os.environ[SETTINGS_FILE_ENV] = str(settings_file)
    return load_settings(
        broker={"url": broker},
        service={"device": device, **service},
        detector={"model": detector, "weights": weights},
        classifier={"model": classifier, "weights": weights},
    )


async def serve_stage(name: str, settings: Settings, drain: bool) -> None:
    metrics = Metrics()
    broker = await connect(settings=settings)
    worker = make_worker(name, broker, settings, metrics, drain=drain)
    health = HealthServer(metrics, worker.ready_checks, settings.service.host, settings.service.port)
    await health.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, worker, sig)
    try:
        await worker.run()
    finally:
        await health.stop()
        await broker.close()
    log.info("stage %s stopped", name)


def _on_signal(worker: Worker, sig: signal.Signals) -> None:
    log.info("%s: draining in-flight batches, then exiting", sig.name)
    worker.stop()


@click.command(epilog=EXIT_CODES)
@click.argument("stage", type=click.Choice([*STAGES, GATEWAY]))
@click.option("--broker", help="memory://, redis://host:port/db or kafka://host:port (default: settings)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="where models (and nvJPEG/DALI) run")
@click.option("--weights", help="random, a local file, DEFAULT or a torchvision weights name")
@click.option("--detector", help="torchvision detection model name")
@click.option("--classifier", help="torchvision classification model name")
@click.option(
    "--port", type=int, help="port of /healthz /readyz /metrics (default: gateway 8000, stages 8001-8003; 0: any free)"
)
@click.option("--host", help="address of /healthz /readyz /metrics")
@click.option("--drain", is_flag=True, help="process what is queued, then exit 0 once input and upstream are empty")
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML, YAML or JSON settings file (env VISIONPIPE_* and flags override it)",
)
def serve(
    stage: str,
    broker: str | None,
    device: str | None,
    weights: str | None,
    detector: str | None,
    classifier: str | None,
    port: int | None,
    host: str | None,
    drain: bool,
    settings_file: Path | None,
) -> None:
    """Run one STAGE (decode, detector or classifier) or the HTTP gateway as a service."""
    settings = cli_settings(settings_file, broker, device, weights, detector, classifier, port=port, host=host)
    settings = role_port(settings, stage)
    setup_logging(settings.service.log_level, settings.service.log_json)
    check_broker_url(settings)
    check_port(settings.service.host, settings.service.port, f"{stage}'s probes" if stage != GATEWAY else stage)
    try:
        if stage == GATEWAY:
            _serve_gateway(settings)
        else:
            asyncio.run(serve_stage(stage, settings, drain))
    except WeightsUnavailable as exc:
        # Never serve with weights other than those asked for: /readyz was false throughout, and the
        # orchestrator shows this line as the reason the stage keeps failing.
        log.error("stage %s cannot start: %s", stage, exc)
        _exit_now(EXIT_NO_WEIGHTS)
    except (BrokerUnreachable, BrokerAuthError) as exc:
        log.error("%s cannot start: %s", stage, exc)
        _exit_now(EXIT_NO_BROKER)
    _exit_now()


def _serve_gateway(settings: Settings) -> None:
    import uvloop

    from visionpipe.services.gateway.server import serve_gateway

    # The gateway connects inside uvicorn's start-up, which would print a traceback for a broker that does not
    # answer: ask once before, so that is said in one line.
    if not settings.broker.url.startswith("memory:"):
        asyncio.run(_reachable(settings))
    uvloop.run(serve_gateway(settings))


async def _reachable(settings: Settings) -> None:
    broker = await connect(settings=settings)
    await broker.close()


def _exit_now(code: int = 0) -> None:
    """Exit at once after a clean stop: batches acked, broker and probes closed, logs flushed.

    Interpreter teardown of a process holding torch (a full garbage collection of
    its heap, then C++ destructors) takes seconds on a busy CPU and would push the
    exit past the orchestrator's grace period for no gain: the OS frees everything
    it would.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
