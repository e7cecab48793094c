"""``visionpipe run`` as a user drives it: one results line per input, what was found, bad files with reasons, exit
codes that say whether anything went through, and one line (no traceback, no model loaded) for what cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.servers import free_port
from tests.services.commands.fresh import in_a_fresh_process
from tests.services.helpers import MAX_DETECTIONS, bad_images, env_for, fast_overrides, good_images
from visionpipe.samples import SAMPLES_DIR, scene_jpeg, shipped_samples
from visionpipe.services.commands.run import EXIT_NO_IMAGES, EXIT_NOTHING_WENT_THROUGH, run, walk
from visionpipe.services.decode.backends import dali_available
from visionpipe.topology import STAGES

PNG_MAGIC = b"\x89PNG"


@pytest.fixture(autouse=True)
def wide_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables printed 200 columns wide (rich reads COLUMNS), so no cell the tests read is folded."""
    monkeypatch.setenv("COLUMNS", "200")


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
    (tmp_path / "in" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # a video in the folder: left out
    for key, value in env_for(fast_overrides(ns, f"memory://{ns}")).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "results.jsonl"
    summary = tmp_path / "summary.json"
    argv = [str(tmp_path / "in"), "--out", str(out), "--quiet", "--summary-json", str(summary)]
    result = CliRunner().invoke(run, argv)
    assert result.exit_code == 0, result.output + repr(result.exception)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {Path(rec["path"]).name: rec for rec in lines}
    assert len(lines) == len(good) + len(bad) and "clip.mp4" not in by_path
    assert "left out 1 video file(s)" in result.output and "visionpipe ingest" in result.output
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
    # The summary: what was found per image, each bad file with its reason, then throughput and the split.
    found = _table_rows(result.output, "found")
    for p in good:
        row = found[p.name]
        assert row[0] == str(len(by_path[p.name]["objects"]))
        assert by_path[p.name]["objects"][0]["label_name"] in row[1]
    bad_rows = _table_rows(result.output, "bad inputs: 4")
    assert set(bad_rows) == {p.name for p in bad}
    assert all(by_path[name]["error"].split(":")[0] in why[0] for name, why in bad_rows.items())
    assert "(3 images: too few for a p99)" in result.output  # the slowest of 3, called what it is
    for words in ("images/s", "p50", "broker hop", "decode", "detector", "classifier", "RANDOM"):
        assert words in result.output, words
    # How the cores were shared: instances x threads per stage, threads that ran, nothing copied between stages.
    assert "cores were shared" in result.output and "instances × threads" in result.output
    doc = json.loads(summary.read_text())
    for stage in ("detector", "classifier"):
        ran = doc["cores"]["stages"][stage]
        assert ran["instances"] >= 1 and ran["threads"] >= 1 and ran["devices"] == ["cpu"] and ran["busy_share"] > 0
    # The memory broker hands envelopes on by reference: only the dead letters were encoded (they leave as bytes).
    dead_letters = sum(p.stat().st_size for p in bad) + len(bad) * 1024
    assert 0 < doc["copied_bytes_per_image"] * doc["ok"] <= dead_letters
    assert 1 <= doc["threads"]["running"] <= doc["threads"]["threads"]


def _table_rows(output: str, title: str) -> dict[str, list[str]]:
    """First cell -> the other cells, of the rich table titled ``title`` (wrapped cells joined back; a wide
    ``COLUMNS`` keeps first cells whole)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows: dict[str, list[str]] = {}
    last = ""
    for line in lines[start + 4 :]:
        if not line.startswith("│"):
            break
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0]:
            last = cells[0]
            rows[last] = cells[1:]
        else:
            rows[last] = [f"{a} {b}".strip() for a, b in zip(rows[last], cells[1:], strict=True)]
    return rows


def test_many_images_are_summed_up_per_label(tmp_path: Path, ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(21):
        (folder / f"{i:02d}.jpg").write_bytes(scene_jpeg(96, 72, seed=i))
    for key, value in env_for(fast_overrides(ns, f"memory://{ns}")).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(run, [str(folder), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    objects = [o["label_name"] for r in map(json.loads, out.read_text().splitlines()) for o in r["objects"]]
    counts = {label: int(cells[0]) for label, cells in _table_rows(result.output, "found in 21 images").items()}
    assert counts == {label: objects.count(label) for label in set(objects)}
    assert "00.jpg" not in result.output  # no line per image
    assert "(21 images: too few for a p99)" in result.output


def test_exit_codes_say_whether_anything_went_through(tmp_path: Path, ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env_for(fast_overrides(ns, f"memory://{ns}")).items():
        monkeypatch.setenv(key, value)
    out = ["--out", str(tmp_path / "r.jsonl"), "--quiet"]
    missing = CliRunner().invoke(run, [str(tmp_path / "nope.jpg"), *out])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(run, [str(tmp_path / "empty"), *out])
    assert empty.exit_code == EXIT_NO_IMAGES and "no images in" in empty.output
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, data in bad_images().items():
        (bad / f"{name.replace(' ', '-')}.jpg").write_bytes(data)
    all_bad = CliRunner().invoke(run, [str(bad), *out])
    assert all_bad.exit_code == EXIT_NOTHING_WENT_THROUGH, all_bad.output
    assert f"no image went through: all {len(bad_images())} were bad" in all_bad.output
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    clip = CliRunner().invoke(run, [str(video), *out])
    assert clip.exit_code == 2 and f"visionpipe ingest {video} --until-done" in clip.output
    helped = CliRunner().invoke(run, ["--help"])
    assert "Exit codes:" in helped.output and "4  no image went through" in helped.output


def test_a_wrong_broker_is_one_line_before_any_model_loads() -> None:
    code, err, torch_loaded = in_a_fresh_process("run", "--broker", "http://x")
    assert code == 1 and not torch_loaded
    assert err.strip().splitlines() == [
        "Error: broker URL 'http://x': unknown scheme 'http'; use memory://, redis://HOST:PORT/DB, "
        "rediss://HOST:PORT/DB or kafka://HOST:PORT[,HOST:PORT]"
    ]
    port = free_port()  # nothing listens there
    code, err, torch_loaded = in_a_fresh_process(
        "run", "--broker", f"redis://127.0.0.1:{port}/0", env={"VISIONPIPE_BROKER__CONNECT_TIMEOUT_S": "1"}
    )
    assert code == 1 and not torch_loaded and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("Error:")]
    assert line.startswith(f"Error: cannot reach the broker at redis://127.0.0.1:{port}/0 (no answer in 1 s; ")
    assert f"redis-cli -h 127.0.0.1 -p {port} ping" in line


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


def test_one_box_gets_one_label_even_below_the_default_threshold(
    bundled_models: Path, tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NanoDet scores Chelsea's box as a cat (0.60) and, the same box, as a dog (0.38): reported once, as a cat."""
    monkeypatch.setenv("VISIONPIPE_MODELS__CACHE_DIR", str(bundled_models))
    monkeypatch.setenv("VISIONPIPE_SERVICE__DEVICE", "cpu")
    monkeypatch.setenv("VISIONPIPE_EXECUTOR__WARMUP_REPEATS", "1")
    out = tmp_path / "results.jsonl"
    cat = str(SAMPLES_DIR / "chelsea-451x300.jpg")
    result = CliRunner().invoke(run, [cat, "--score-threshold", "0.3", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (rec,) = map(json.loads, out.read_text().splitlines())
    assert [o["label_name"] for o in rec["objects"]] == ["cat"]
    assert _table_rows(result.output, "found")["chelsea-451x300.jpg"][1].startswith("cat 60% ·")


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
