"""``visionpipe ingest`` as a user runs it: the whole pipeline, the streams API and its CLI, probes and metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import av
import pytest
from click.testing import CliRunner

from tests.services.helpers import fast_overrides
from tests.services.ingest.helpers import wait_until
from tests.services.ingest.media import decoded_count, write_video
from visionpipe.services.commands.ingest import ingest
from visionpipe.services.ingest.annotate import LABEL_BACKGROUND
from visionpipe.services.ingest.service import IngestService
from visionpipe.settings import StreamSource, load_settings


def _settings(ns: str, **ingest: Any) -> Any:
    return load_settings(**fast_overrides(ns, f"memory://{ns}"), ingest=ingest)


async def test_a_file_of_n_frames_at_f_fps_gives_the_expected_results_in_frame_order(tmp_path: Path, ns: str) -> None:
    frames, fps, target = 30, 30, 10
    video = write_video(tmp_path / "walk.mp4", frames, fps=fps)
    out, annotated = tmp_path / "results.jsonl", tmp_path / "walk.annotated.mp4"
    spec = StreamSource(url=str(video), fps=target, annotate=str(annotated))
    service = IngestService(_settings(ns), [spec], results=out)
    await asyncio.wait_for(service.run(until_done=True), timeout=90)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    *results, end = lines
    assert [r["frame_index"] for r in results] == list(range(0, frames, fps // target))  # all, and in order
    assert all(r["ok"] and r["objects"] and r["stream"] == "walk" for r in results)
    assert all(
        r["previous_index"] == p["frame_index"] for p, r in zip([{"frame_index": -1}, *results], results, strict=False)
    )
    assert end["end_of_stream"]["reason"] == "eof" and end["end_of_stream"]["published"] == len(results)
    assert decoded_count(annotated) == frames  # every source frame, boxes drawn on them
    with av.open(str(annotated)) as video:
        first = next(video.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    # Each box's label sits on a dark band (H.264 shifts its colour a little); the frame's own pixels are not it.
    assert (abs(first - LABEL_BACKGROUND).max(axis=-1) < 40).sum() > 200


def _http(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, {"Content-Type": "application/json"})
    req.method = method
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _until(port: int, path: str, check: Any, timeout_s: float = 20) -> None:
    """Poll ``path`` (from a thread: the server answers on this loop) until ``check(status, doc)`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check(*await asyncio.to_thread(_http_or_down, port, path)):
        assert asyncio.get_running_loop().time() < deadline, f"{path} never satisfied the check"
        await asyncio.sleep(0.1)


def _http_or_down(port: int, path: str) -> tuple[int, Any]:
    try:
        return _http(port, "GET", path)
    except OSError:
        return 0, None


async def test_streams_are_added_listed_and_removed_at_run_time_through_api_and_cli(tmp_path: Path, ns: str) -> None:
    video = write_video(tmp_path / "door.mp4", 20)
    service = IngestService(_settings(ns, api_file_roots=[str(tmp_path)]), with_stages=False)
    running = asyncio.create_task(service.run())
    await wait_until(lambda: service.port != 0, timeout_s=20)
    port, cli = service.port, CliRunner()
    api = ["--api", f"http://127.0.0.1:{port}"]
    try:
        await _until(port, "/healthz", lambda status, _: status == 200)
        assert (await asyncio.to_thread(_http, port, "GET", "/readyz"))[1]["ready"] is True

        added = await asyncio.to_thread(
            cli.invoke, ingest, ["add", "lavfi:testsrc2=size=320x240:rate=30", "--id", "cam", "--fps", "5", *api]
        )
        assert added.exit_code == 0, added.output
        assert json.loads(added.output)["policy"] == "latest"
        status, doc = await asyncio.to_thread(_http, port, "POST", "/v1/streams", {"url": str(video), "id": "door"})
        assert status == 201 and doc["policy"] == "lossless" and doc["live"] is False
        assert (await asyncio.to_thread(_http, port, "POST", "/v1/streams", {"url": str(video), "id": "door"}))[
            0
        ] == 409
        assert (await asyncio.to_thread(_http, port, "POST", "/v1/streams", {"url": "gopher://x"}))[0] == 422
        assert (await asyncio.to_thread(_http, port, "GET", "/v1/streams/nope"))[0] == 404

        await _until(port, "/v1/streams/door", lambda _, doc: doc["state"] == "finished")
        listed = await asyncio.to_thread(cli.invoke, ingest, ["list", *api])
        assert listed.exit_code == 0 and "door" in listed.output and "cam" in listed.output, listed.output
        metrics = (await asyncio.to_thread(_http, port, "GET", "/metrics"))[1].decode()
        assert 'visionpipe_ingest_frames_total{outcome="published",stream="door"} 20.0' in metrics
        assert 'visionpipe_ingest_frames_total{outcome="sampled_out",stream="cam"}' in metrics

        removed = await asyncio.to_thread(cli.invoke, ingest, ["remove", "cam", *api])
        assert removed.exit_code == 0 and json.loads(removed.output)["state"] == "removed", removed.output
        ids = [s["id"] for s in (await asyncio.to_thread(_http, port, "GET", "/v1/streams"))[1]["streams"]]
        assert ids == ["door"]
        schema = (await asyncio.to_thread(_http, port, "GET", "/openapi.json"))[1]
        assert {"/v1/streams", "/v1/streams/{stream_id}"} <= set(schema["paths"])
        gone = await asyncio.to_thread(cli.invoke, ingest, ["remove", "cam", *api])
        assert gone.exit_code != 0 and "404" in gone.output
        await _the_gateways_client_speaks_the_same_api(f"http://127.0.0.1:{port}", str(video))
    finally:
        service.stopping.set()
        await asyncio.wait_for(running, timeout=30)


async def _the_gateways_client_speaks_the_same_api(api: str, video: str) -> None:
    """The gateway mounts the same router over RemoteStreams: the registry's answers and refusals come through."""
    from visionpipe.services.gateway.app import create_app
    from visionpipe.services.gateway.service import Gateway
    from visionpipe.services.ingest.api import streams_router
    from visionpipe.services.ingest.remote import RemoteStreams
    from visionpipe.services.ingest.schema import StreamExists, UnknownStream

    remote = RemoteStreams(api)
    assert [s.id for s in await remote.list()] == ["door"]
    assert (await remote.get("door")).state == "finished"
    with pytest.raises(StreamExists):
        await remote.add(StreamSource(url=video, id="door"))
    with pytest.raises(UnknownStream):
        await remote.remove("nope")
    app = create_app(Gateway(load_settings()), [streams_router(remote)], manage=False)
    assert {"/v1/streams", "/v1/streams/{stream_id}", "/v1/detect"} <= set(app.openapi()["paths"])
