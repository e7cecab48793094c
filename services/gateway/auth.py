"""Bearer tokens for the front doors: the gateway's API and the ingest service's streams API take the same ones.

The tokens file holds one token per line. A line is stripped before anything else is looked at, so an indented
``# comment`` is a comment and never a token, and a token with whitespace inside is refused when the file is
read: a header ``Authorization: Bearer a b`` could never carry it, so such a line is a mistake in the file (two
tokens on one line, a comment without its ``#``), and silently accepting it would leave a token that cannot work
or, worse, one that matches something unintended.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency's annotations at run time, and they name
# the security scheme local to ``bearer``, which postponed annotations could not resolve.
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from visionpipe.services.gateway.errors import GatewayError

COMMENT = "#"


def read_tokens(path: Path | None) -> frozenset[str]:
    """Bearer tokens, one per line (blank lines and ``#`` comments skipped); a named file with none is an error."""
    if path is None:
        return frozenset()
    tokens = set()
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(COMMENT):
            continue
        if any(ch.isspace() for ch in line):
            raise ValueError(f"gateway.tokens_file {path} line {number}: a token cannot hold whitespace")
        tokens.add(line)
    if not tokens:
        raise ValueError(f"gateway.tokens_file {path} holds no token")
    return frozenset(tokens)


def bearer(tokens: frozenset[str]) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that answers 401 unless the request carries one of ``tokens``."""
    scheme = HTTPBearer(auto_error=False, description="one of the tokens in gateway.tokens_file")
    encoded = [t.encode() for t in tokens]

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # Every token compared, each in constant time: neither which one matched nor how much leaks in timing.
        if not any([hmac.compare_digest(given, t) for t in encoded]):
            raise GatewayError(401, "unauthorized", "a valid bearer token is required")

    return check


def auth_dependencies(tokens: frozenset[str]) -> list[Any]:
    """The route dependencies that require a token, or none when tokens are off."""
    return [Depends(bearer(tokens))] if tokens else []
