"""What a command checks before anything slow starts: the broker's URL, its port, that the broker answers.

Importing torch and loading the models take seconds to tens of seconds. A mistyped broker URL, a port another
process holds or a broker nobody started is said in one line before that, not as a traceback after it.

Each kind of process has its own default port, so a gateway, the three stages and an ingest service started
side by side on one machine do not collide; a port set by flag, environment or settings file always wins
(the containers set 8000 for every process, each in its own network namespace).
"""

from __future__ import annotations

import errno
import socket

import click

from visionpipe.broker import Broker, BrokerAuthError, BrokerUnreachable, check_url, connect
from visionpipe.settings import Settings

GATEWAY = "gateway"  # `visionpipe serve gateway`: the HTTP front door (visionpipe.services.gateway)
INGEST = "ingest"
DEFAULT_PORTS = {GATEWAY: 8000, "decode": 8001, "detector": 8002, "classifier": 8003, INGEST: 8010}
PORTS = "the defaults: gateway and run --serve 8000, decode 8001, detector 8002, classifier 8003, ingest 8010"


def role_port(settings: Settings, role: str) -> Settings:
    """``settings`` with the port of ``role`` (``DEFAULT_PORTS``), unless a port was set."""
    if "port" in settings.service.model_fields_set:
        return settings
    service = settings.service.model_copy(update={"port": DEFAULT_PORTS[role]})
    return settings.model_copy(update={"service": service})


def check_broker_url(settings: Settings) -> None:
    try:
        check_url(settings.broker.url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def check_port(host: str, port: int, what: str) -> None:
    """Raise, in one line, if ``what`` could not listen on ``host:port`` now (bound and closed at once)."""
    if port == 0:
        return
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as exc:
        reason = {
            errno.EADDRINUSE: "is in use by another process (another visionpipe?)",
            errno.EACCES: "needs more privileges (ports below 1024)",
            errno.EADDRNOTAVAIL: f"cannot be had: {host} is not an address of this machine",
        }.get(exc.errno or 0, f"cannot be had: {exc.strerror}")
        raise click.ClickException(
            f"{what} cannot listen on {host}:{port}: the port {reason}. Pass --port N (0: any free port); {PORTS}"
        ) from None


async def connect_or_explain(settings: Settings) -> Broker:
    """The broker, or one line saying why not (nothing answers within the deadline, or it refused us)."""
    try:
        return await connect(settings=settings)
    except (BrokerUnreachable, BrokerAuthError) as exc:
        raise click.ClickException(str(exc)) from None
