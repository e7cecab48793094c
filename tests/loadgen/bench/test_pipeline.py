"""``visionpipe bench pipeline``'s arithmetic: the ceiling, the ratios within a round, the goals, the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from visionpipe.loadgen.bench import pipeline_report
from visionpipe.loadgen.bench.pipeline import cases, summarise, write_photo_set


def _round(plain: dict[str, float], one_thread: float, embedded: float, services: float) -> dict[str, dict[str, Any]]:
    w = "photos"
    out = {
        f"{w}: plain script{v}": {"images_per_s": x, "cpu_ms_per_image": 60.0, "load1_before": 1.0}
        for v, x in plain.items()
    }
    out[f"{w}: plain script, resize, 1 thread"] = {
        "images_per_s": one_thread,
        "cpu_ms_per_image": 1e3 / one_thread,
        "load1_before": 1.0,
        "ms_per_image": {"decode": 5.0, "detector": 50.0},
    }
    out[f"{w}: visionpipe run"] = {"images_per_s": embedded, "cpu_ms_per_image": 70.0, "load1_before": 1.0}
    out[f"{w}: services over redis"] = {"images_per_s": services, "cpu_ms_per_image": 80.0, "load1_before": 1.0}
    return out


def test_the_ceiling_and_the_goals_come_from_each_round_alone() -> None:
    rounds = [
        _round({", resize": 13.0, ", roi_align": 10.0}, 8.0, 15.5, 12.0),  # ceiling 16: 0.97x it, 1.19x plain
        _round({", resize": 6.0, ", roi_align": 5.0}, 3.1, 5.5, 5.0),  # a busy round: ceiling 6.2, 1.03x plain
    ]
    summary = summarise(rounds, ["photos"])["workloads"]["photos"]
    first, second = summary["rounds"]
    assert first["ceiling"] == 16.0 and first["best_plain"] == 13.0 and first["best_plain_variant"] == "resize"
    assert first["embedded_over_ceiling"] == round(15.5 / 16.0, 3) and first["services_over_plain"] == round(12 / 13, 3)
    assert first["embedded_cpu_efficiency"] == round(125.0 / 70.0, 3)  # single-thread CPU ms per image over embedded's
    goals = summary["goals"]
    assert goals["embedded ≥ 0.95× ceiling, every round"]["met"] is False  # 5.5 / 6.2 in the second round
    assert goals["embedded ≥ 1.0× best plain, every round"]["met"] is False  # 5.5 / 6.0
    median = goals["embedded ≥ 1.05× best plain, median of the rounds whose ceiling allows it"]
    assert median["rounds"] == [first["embedded_over_plain"]] and median["met"] is True  # the second's ceiling: 1.03x
    assert goals["services over Redis ≥ 0.9× best plain, every round"]["met"] is False  # 12/13 yes, 5/6 no
    assert second["ceiling_over_plain"] < pipeline_report.EMBEDDED_OF_PLAIN_MEDIAN


def test_the_report_has_a_row_per_round_and_the_goals(tmp_path: Path) -> None:
    rounds = [_round({", resize": 13.0}, 8.0, 15.5, 12.0) for _ in range(3)]
    doc = {
        "when": "now",
        "cpus": 2,
        "command": "visionpipe bench pipeline",
        "inputs": {"photos": "3 photos"},
        "summary": summarise(rounds, ["photos"]),
    }
    text = pipeline_report.markdown(doc)
    assert text.count("| 1 | 1.0 | 13.00 (resize) | 16.00 | 15.50 |") == 1 and "| 3 |" in text
    assert "embedded ≥ 0.95× ceiling" in text and "| yes |" in text


def test_the_workloads_and_their_cases(tmp_path: Path) -> None:
    photos = write_photo_set(tmp_path / "p", 2)
    crowded = write_photo_set(tmp_path / "c", 2, grid=3)
    for p in photos + crowded:
        with Image.open(p) as img:
            assert img.size == (640, 480)
    chosen = cases(photos, {"photos": (photos, []), "crowded": (crowded, ["--score-threshold", "0.3"])})
    assert chosen["crowded: services over redis"].env == {"VISIONPIPE_DETECTOR__SCORE_THRESHOLD": "0.3"}
    assert chosen["crowded: visionpipe run"].args[-2:] == ["--score-threshold", "0.3"]
    assert sum(n.startswith("photos: plain script") for n in chosen) == 4
