"""The pipeline's shape: one hop per stage, streams in order, groups from one setting."""

from __future__ import annotations

import itertools

import pytest

from visionpipe import topology
from visionpipe.settings import load_settings


def test_each_stage_reads_what_the_one_before_writes() -> None:
    hops = topology.HOPS
    assert [h.stage for h in hops] == list(topology.STAGES)
    for before, after in itertools.pairwise(hops):
        assert before.sink == after.source
    assert hops[0].source == "frames" and hops[-1].sink == "results"
    assert topology.previous("decode") == topology.INGRESS and topology.previous("classifier") == "detector"
    assert topology.upstream("classifier") == ("decode", "detector")


def test_groups_and_names_come_from_the_settings() -> None:
    settings = load_settings(streams={"prefix": "p"})
    assert topology.group("detector", settings) == "detector"
    assert topology.input_stream("detector", settings) == "p.tensors"
    assert topology.output_stream("detector", settings) == "p.crops"
    assert topology.stream_names(settings) == ["p.frames", "p.tensors", "p.crops", "p.results", "p.dead"]
    assert topology.group("detector", load_settings(service={"group": "blue"})) == "blue"


def test_an_unknown_stage_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="unknown stage 'resize'"):
        topology.hop("resize")
