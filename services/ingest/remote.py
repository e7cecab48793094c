"""A running ingest service's streams API, seen from another process: the CLI's and the gateway's client.

``visionpipe ingest add|list|remove`` and the HTTP gateway (``gateway.ingest_url``) both reach the
ingest service that owns the streams through its API, so there is one place that knows the paths and
turns the service's answers back into the registry's own errors (409 -> StreamExists, 404 ->
UnknownStream, 422 -> ValueError), sending a bearer token where the service takes them. The standard
library's HTTP client, run off the event loop: the calls are rare and small.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any

from visionpipe.services.ingest.api import PREFIX
from visionpipe.services.ingest.schema import StreamExists, StreamInfo, UnknownStream
from visionpipe.settings import StreamSource

# An ingest service answers from memory in milliseconds, but a removal waits for the stream's reader to stop:
# up to a read timeout on a stalled camera.
CLIENT_TIMEOUT_S = 30.0
# The token `visionpipe ingest add|list|remove` sends when the service takes bearer tokens.
TOKEN_ENV = "VISIONPIPE_INGEST_TOKEN"


class IngestUnreachable(ConnectionError):
    """The ingest service did not answer (down, wrong address)."""


def default_token() -> str | None:
    """The bearer token a client sends: ``$VISIONPIPE_INGEST_TOKEN``, else one of ``gateway.tokens_file``."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    from visionpipe.services.gateway.auth import read_tokens
    from visionpipe.settings import load_settings

    tokens = read_tokens(load_settings().gateway.tokens_file)
    return min(tokens) if tokens else None


def call(api: str, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    """One request to the API at ``api``; the decoded JSON answer, or the registry's error for a refusal.

    ``token``: the bearer token to send (default: :func:`default_token`).
    """
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{api.rstrip('/')}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    token = token or default_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = _detail(exc.read())
        if exc.code == 409:
            raise StreamExists(f"HTTP 409: {detail}") from None
        if exc.code == 404:
            raise UnknownStream(f"HTTP 404: {detail}") from None
        raise ValueError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
    except OSError as exc:
        raise IngestUnreachable(f"cannot reach the ingest service at {api}: {exc}") from None


def _detail(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
    return str(doc.get("detail", doc)) if isinstance(doc, dict) else str(doc)


class RemoteStreams:
    """:class:`~.api.StreamControl` over the API of the ingest service at ``api`` (sending ``token``)."""

    def __init__(self, api: str, token: str | None = None) -> None:
        self.api, self.token = api, token

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(call, self.api, method, path, body, self.token)

    async def add(self, spec: StreamSource) -> StreamInfo:
        return StreamInfo.model_validate(await self._call("POST", PREFIX, spec.model_dump(mode="json")))

    async def list(self) -> list[StreamInfo]:
        doc = await self._call("GET", PREFIX)
        return [StreamInfo.model_validate(s) for s in doc["streams"]]

    async def get(self, stream_id: str) -> StreamInfo:
        return StreamInfo.model_validate(await self._call("GET", f"{PREFIX}/{stream_id}"))

    async def remove(self, stream_id: str) -> StreamInfo:
        return StreamInfo.model_validate(await self._call("DELETE", f"{PREFIX}/{stream_id}"))
