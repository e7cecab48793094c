"""``visionpipe run`` in-process on the memory broker: one results line per input, errors with reasons, a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.services.helpers import MAX_DETECTIONS, bad_images, env_for, fast_overrides, good_images
from visionpipe.samples import shipped_samples
from visionpipe.services.commands.run import run, walk
from visionpipe.services.decode.backends import dali_available
from visionpipe.topology import STAGES

PNG_MAGIC = b"\x89PNG"


def _inputs(folder: Path) -> tuple[list[Path], list[Path]]:
    folder.mkdir()
    good = []
    for i, data in enumerate(good_images()):
        suffix = "png" if data.startswith(PNG_MAGIC) else "jpg"
        p = folder / f"good{i}.{suffix}"
        p.write_bytes(data)
        good.append(p)
    bad = []
    for name, data in bad_images().items():
        p = folder / f"bad-{name.replace(' ', '-')}.jpg"
        p.write_bytes(data)
        bad.append(p)
    (folder / ".hidden").write_bytes(b"skipped by the directory walk")
    return good, bad


def test_walk_sorts_and_skips_hidden(tmp_path: Path) -> None:
    good, bad = _inputs(tmp_path / "in")
    assert list(walk([tmp_path / "in"])) == sorted(good + bad)


def test_samples_ship_with_the_package_and_their_notices() -> None:
    samples = shipped_samples()
    sizes = {p.name for p in samples}
    assert any("1920x1080" in n for n in sizes) and any(n.endswith(".png") for n in sizes)
    assert sum(1 for n in sizes if "640x480" in n) >= 2
    assert sum(p.stat().st_size for p in samples) < 1_000_000
    notice = (samples[0].parent / "NOTICE.txt").read_text()
    assert [n for n in sizes if f"\n{n}  " not in notice] == [], "every shipped image needs its licence statement"
    assert notice.count("CC0") + notice.count("public domain") >= 4  # the four photographs


def test_run_cli_writes_one_line_per_input(tmp_path: Path, ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = _inputs(tmp_path / "in")
    missing = tmp_path / "no-such-file.jpg"
    for key, value in env_for(fast_overrides(ns, f"memory://{ns}")).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(run, [str(tmp_path / "in"), str(missing), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {Path(rec["path"]).name: rec for rec in lines}
    assert len(lines) == len(good) + len(bad) + 1
    for p in good:
        rec = by_path[p.name]
        assert rec["ok"], rec
        assert rec["weights"] == {"detector": "random", "classifier": "random"}
        assert 0 < len(rec["objects"]) <= MAX_DETECTIONS
        assert all(len(o["top_k"]) == 3 and o["label_name"] for o in rec["objects"])
        assert rec["latency_ms"]["total"] >= rec["latency_ms"]["detector"] > 0
    for p in bad:
        rec = by_path[p.name]
        assert not rec["ok"] and rec["stage"] == "decode" and rec["error"], rec
    assert not by_path[missing.name]["ok"] and "cannot read" in by_path[missing.name]["error"]
    # The summary: throughput, the split, the bad inputs, and the random weights said plainly.
    for words in ("images/s", "p50", "broker hop", "decode", "detector", "classifier", "bad inputs", "RANDOM"):
        assert words in result.output, words


def test_readme_run_command_prints_real_labels_offline(
    bundled_models: Path, tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run`'s `visionpipe run` with the defaults: the bundled models, real objects and labels, nothing random."""
    monkeypatch.setenv("VISIONPIPE_MODELS__CACHE_DIR", str(bundled_models))
    monkeypatch.setenv("VISIONPIPE_SERVICE__DEVICE", "cpu")
    monkeypatch.setenv("VISIONPIPE_EXECUTOR__WARMUP_REPEATS", "1")
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(run, ["--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "RANDOM" not in result.output and "nanodet_g" in result.output and "efficientnet_lite0" in result.output
    found = {Path(r["path"]).name: r["objects"] for r in map(json.loads, out.read_text().splitlines())}
    assert found["astronaut-512x512.jpg"][0]["label_name"] == "person"
    cat = found["chelsea-451x300.jpg"][0]
    assert cat["label_name"] == "cat" and cat["top_k"][0]["name"] in ("Egyptian cat", "tabby", "tiger cat")
    assert set(cat) >= {"box", "score", "label", "label_name", "top_k"}  # the result fields clients read


def test_run_without_the_bundled_weights_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONPIPE_MODELS__CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VISIONPIPE_SERVICE__DEVICE", "cpu")
    result = CliRunner().invoke(run, ["--out", str(tmp_path / "r.jsonl"), "--quiet"])
    assert result.exit_code == 1 and "cannot start" in result.output
    assert "visionpipe models fetch" in result.output and "Traceback" not in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["nvjpeg", "dali"])
def test_run_on_gpu_decodes_with_the_gpu_path(
    backend: str, tmp_path: Path, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "dali" and not dali_available():
        pytest.skip("nvidia-dali-cuda120 is not installed")
    overrides = fast_overrides(ns, f"memory://{ns}")
    overrides["decode"]["backend"] = backend
    overrides["service"]["device"] = "cuda"
    for key, value in env_for(overrides).items():
        monkeypatch.setenv(key, value)
    out, summary = tmp_path / "results.jsonl", tmp_path / "summary.json"
    result = CliRunner().invoke(run, ["--out", str(out), "--summary-json", str(summary), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads(summary.read_text())
    assert doc["decoder"] == backend and doc["device"] == "cuda"
    assert doc["ok"] == len(shipped_samples()) and doc["bad"] == 0


def test_run_with_a_deadline_no_stage_can_meet_answers_each_image_deadline_exceeded(
    tmp_path: Path, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = _inputs(tmp_path / "in")
    for key, value in env_for(fast_overrides(ns, f"memory://{ns}")).items():
        monkeypatch.setenv(key, value)
    out, summary = tmp_path / "results.jsonl", tmp_path / "summary.json"
    args = [*map(str, good), "--out", str(out), "--summary-json", str(summary), "--quiet", "--deadline-ms", "1"]
    result = CliRunner().invoke(run, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(good)
    for rec in lines:  # answered early by the stage that knew, not a dead letter
        assert rec["ok"] is False and rec["deadline_exceeded"] is True and rec["stage"] in STAGES, rec
        assert rec["error"].startswith("deadline_exceeded: "), rec
    doc = json.loads(summary.read_text())
    assert doc["deadline"] == {"ms": 1.0, "exceeded": len(good), "late": 0}
    assert "deadline_exceeded" in result.output.replace("\n", "")
