"""Bearer tokens from a secret file, CORS only when configured, and no secret in any log line."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from tests.services.gateway.helpers import gateway_settings, jpeg, serving

TOKEN = "tok-Secr3t-for-tests"


async def test_tokens_are_required_when_configured_and_never_logged(
    ns: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\nother-token\n")
    settings = gateway_settings(ns, gateway={"tokens_file": str(tokens)}, service={"log_level": "DEBUG"})
    caplog.set_level(logging.DEBUG)
    async with serving(settings) as live, aiohttp.ClientSession() as s:
        image = {"data": jpeg(), "headers": {"Content-Type": "image/jpeg"}}
        async with s.post(live.url + "/v1/detect", **image) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert (await r.json())["error"] == "unauthorized"
        bad = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {TOKEN}x"}
        async with s.post(live.url + "/v1/detect", data=jpeg(), headers=bad) as r:
            assert r.status == 401
        good = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {TOKEN}"}
        async with s.post(live.url + "/v1/detect", data=jpeg(), headers=good) as r:
            assert r.status == 200
        async with s.get(live.url + "/v1/results/x", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/"):
            async with s.get(live.url + open_path) as r:
                assert r.status == 200, open_path
        async with s.get(live.url + "/openapi.json") as r:
            spec = await r.json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert caplog.records, "nothing was logged at DEBUG: the check below would prove nothing"
    assert TOKEN not in caplog.text and "other-token" not in caplog.text


def test_an_empty_tokens_file_is_an_error(ns: str, tmp_path: Path) -> None:
    from visionpipe.services.gateway.service import Gateway

    (tmp_path / "tokens").write_text("\n# none\n")
    with pytest.raises(ValueError, match="holds no token"):
        Gateway(gateway_settings(ns, gateway={"tokens_file": str(tmp_path / "tokens")}))


@pytest.mark.parametrize("origins", [[], ["https://app.example"]], ids=["off", "on"])
async def test_cors_is_off_unless_origins_are_set(ns: str, origins: list[str]) -> None:
    async with (
        serving(gateway_settings(ns, gateway={"cors_origins": origins}), stages=False) as live,
        aiohttp.ClientSession() as s,
    ):
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        async with s.options(live.url + "/v1/detect", headers=preflight) as r:
            allowed = r.headers.get("Access-Control-Allow-Origin")
        async with s.get(live.url + "/healthz", headers={"Origin": "https://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        assert allowed == ("https://app.example" if origins else None)


def test_an_indented_comment_is_no_token_and_whitespace_inside_a_token_is_refused(tmp_path: Path) -> None:
    from visionpipe.services.gateway.auth import read_tokens

    tokens = tmp_path / "tokens"
    tokens.write_text(f"  # old\n\t# older\n  {TOKEN}  \n")
    assert read_tokens(tokens) == frozenset({TOKEN})
    tokens.write_text(f"{TOKEN} other-token\n")
    with pytest.raises(ValueError, match="line 1: a token cannot hold whitespace"):
        read_tokens(tokens)


async def test_a_commented_out_token_does_not_open_the_api(ns: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"  # old\n{TOKEN}\n")
    async with (
        serving(gateway_settings(ns, gateway={"tokens_file": str(tokens)}), stages=False) as live,
        aiohttp.ClientSession() as s,
    ):
        for given in ("# old", "#", "old"):
            async with s.get(live.url + "/v1/results/x", headers={"Authorization": f"Bearer {given}"}) as r:
                assert r.status == 401, given


async def test_docs_and_metrics_can_be_protected_too(ns: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    settings = gateway_settings(ns, gateway={"tokens_file": str(tokens), "protect_docs_and_metrics": True})
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(settings, stages=False) as live, aiohttp.ClientSession() as s:
        for path in ("/metrics", "/docs", "/openapi.json"):
            async with s.get(live.url + path) as r:
                assert r.status == 401, path
            async with s.get(live.url + path, headers=good) as r:
                assert r.status == 200, path
        async with s.get(live.url + "/openapi.json", headers=good) as r:
            assert "/v1/detect" in (await r.json())["paths"]
        for path in ("/healthz", "/readyz", "/"):  # probes and the page stay open
            async with s.get(live.url + path) as r:  # (not ready: no stage runs behind it)
                assert r.status == (503 if path == "/readyz" else 200), path
