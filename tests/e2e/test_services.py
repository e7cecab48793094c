"""The three stages as separate processes (``visionpipe serve STAGE --drain``) over real brokers.

Frames are queued first, then the stages start together and exit on their
own once everything upstream is done: one result per valid input, one
dead-letter entry per bad one, nothing left in any stream.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services.helpers import MAX_DETECTIONS, bad_images, env_for, fast_overrides, good_images
from visionpipe import topology
from visionpipe.broker import Broker, DeadLetter, connect
from visionpipe.envelope import Envelope, Event
from visionpipe.ingress import Frame, ensure_pipeline_streams, submit_images
from visionpipe.settings import Settings, load_settings
from visionpipe.topology import STAGES

# Three interpreters importing torch, loading models and warming up on 2 shared cores, then draining.
STAGES_TIMEOUT_S = 100
READ_TIMEOUT_S = 10.0
VISIONPIPE = str(Path(sys.executable).parent / "visionpipe")  # the console script the package installs


async def _queue(settings: Settings) -> tuple[list[str], dict[str, str]]:
    broker = await connect(settings=settings)
    try:
        await ensure_pipeline_streams(broker, settings)
        good = await submit_images(broker, settings, [Frame(img, source="good") for img in good_images()])
        bad_inputs = bad_images()
        bad_ids = await submit_images(broker, settings, [Frame(img, source=k) for k, img in bad_inputs.items()])
        return good, dict(zip(bad_ids, bad_inputs, strict=True))
    finally:
        await broker.close()


async def _read_all(broker: Broker, stream: str, want: int) -> list[bytes]:
    await broker.ensure(stream, "e2e-reader")
    out: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + READ_TIMEOUT_S
    while len(out) < want and asyncio.get_running_loop().time() < deadline:
        got = await broker.consume(stream, "e2e-reader", "reader", 100, 0.5)
        out += [d.data for d in got]
        await broker.ack(stream, "e2e-reader", got)
    return out


async def _collect(settings: Settings, n_good: int, n_bad: int) -> tuple[list[Envelope], list[DeadLetter], int]:
    broker = await connect(settings=settings)
    try:
        results = [Envelope.decode(m) for m in await _read_all(broker, settings.streams.name("results"), n_good)]
        dead = [DeadLetter.decode(m) for m in await _read_all(broker, settings.streams.name("dead_letter"), n_bad)]
        backlog = 0
        for stage in STAGES:
            backlog += (await broker.backlog(topology.input_stream(stage, settings), stage)).total
        return results, dead, backlog
    finally:
        await broker.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "kafka"])
def test_stages_as_services_drain_one_result_per_input(
    backend: str, request: pytest.FixtureRequest, ns: str, weight_files: tuple[Path, Path], tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{backend}_server").url
    det_file, cls_file = weight_files
    overrides = fast_overrides(ns, url, detector_weights=str(det_file), classifier_weights=str(cls_file))
    settings = load_settings(**overrides)
    good_ids, bad = asyncio.run(_queue(settings))

    env = {**os.environ, **env_for(overrides)}
    procs = {}
    for stage in STAGES:
        log = (tmp_path / f"{stage}.log").open("wb")
        argv = [VISIONPIPE, "serve", stage, "--drain", "--broker", url, "--device", "cpu"]
        procs[stage] = subprocess.Popen([*argv, "--port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
    try:
        for stage, proc in procs.items():
            rc = proc.wait(timeout=STAGES_TIMEOUT_S)
            assert rc == 0, f"{stage} exited {rc}:\n{(tmp_path / f'{stage}.log').read_text()[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    results, dead, backlog = asyncio.run(_collect(settings, len(good_ids), len(bad)))
    assert sorted(r.request_id for r in results) == sorted(good_ids)
    for r in results:
        assert r.payload["weights"] == {"detector": str(det_file), "classifier": str(cls_file)}
        assert 0 < len(r.payload["objects"]) <= MAX_DETECTIONS
        for obj in r.payload["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= r.payload["width"] and 0 <= y1 <= y2 <= r.payload["height"]
            assert len(obj["top_k"]) == 3
        for stage in STAGES:
            assert all(r.ts(stage, e) is not None for e in Event if e != Event.ENQUEUED)
    assert sorted(d.request_id or "" for d in dead) == sorted(bad)
    for d in dead:
        assert bad[d.request_id or ""] in d.reason and d.stage == "decode"
    assert backlog == 0
