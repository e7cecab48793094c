"""How the stages of one process share its cores: the plan of instances, and the budget that keeps threads to cores."""

from __future__ import annotations

import os
import threading
import time

import pytest

from visionpipe.services.runtime.cores import CoreBudget, Cores, Demand, cpu_cores, plan


def test_each_stage_gets_its_share_of_the_cores_rounded_up_plus_one() -> None:
    """16 cores, a detector with 2.3x the classifier's work per image: ~11 and ~5 threads' worth, plus one each."""
    demands = [Demand("detector", 0.085, 1, 0), Demand("classifier", 0.037, 1, 0)]
    assert plan(demands, 16) == {"detector": 13, "classifier": 6}


def test_the_plan_follows_the_fan_out() -> None:
    """Thirteen crops an image turn the classifier into the big stage."""
    few = plan([Demand("detector", 0.085, 1, 0), Demand("classifier", 0.033, 1, 0)], 16)
    many = plan([Demand("detector", 0.085, 1, 0), Demand("classifier", 0.033 * 13, 1, 0)], 16)
    assert few["detector"] > few["classifier"] and many["classifier"] > many["detector"]


def test_no_stage_gets_more_instances_than_its_threads_fit_in_the_cores() -> None:
    demands = [Demand("detector", 1.0, 2, 0), Demand("classifier", 0.01, 1, 0), Demand("decode", 0.001, 1, 1)]
    assert plan(demands, 4) == {"detector": 2, "classifier": 2, "decode": 1}
    assert plan([Demand("detector", 1.0, 8, 0)], 4) == {"detector": 1}  # a budget above the cores: one instance


def test_instances_set_by_hand_and_stages_of_unknown_work() -> None:
    demands = [Demand("detector", 0.0, 1, 0), Demand("classifier", 0.5, 1, 3)]
    assert plan(demands, 2) == {"detector": 2, "classifier": 3}


def test_the_budget_never_runs_more_threads_than_cores() -> None:
    budget = CoreBudget(2)
    running, most, lock = [0], [0], threading.Lock()

    def work(threads: int) -> None:
        cores = min(threads, 2)  # a budget above the cores holds every core
        for _ in range(5):
            with budget.held(threads, f"s{threads}"):
                with lock:
                    running[0] += cores
                    most[0] = max(most[0], running[0])
                time.sleep(0.005)
                with lock:
                    running[0] -= cores

    workers = [threading.Thread(target=work, args=(n,)) for n in (1, 1, 1, 2, 5)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert most[0] == 2  # reached, never passed
    assert budget.busy_s["s1"] > 0 and budget.busy_s["s2"] >= 2 * 5 * 0.005


def test_a_stage_is_planned_again_only_when_its_work_moved() -> None:
    cores = Cores(4)
    seen: list[tuple[str, int]] = []
    cores.join(Demand("detector", 0.08, 1, 0, apply=lambda n: seen.append(("detector", n))))
    cores.join(Demand("classifier", 0.03, 1, 0, apply=lambda n: seen.append(("classifier", n))))
    assert seen == [("detector", 4), ("classifier", 3)]  # alone, every core; then the detector's plan stays
    assert cores.plans == {"detector": 4, "classifier": 3}
    seen.clear()
    cores.report("classifier", 0.033)  # +10 %: no new plan
    assert seen == []
    cores.report("classifier", 0.03 * 8)  # eight crops an image
    assert cores.plans == {"detector": 2, "classifier": 4} and seen == [("detector", 2), ("classifier", 4)]
    cores.leave("classifier")
    assert "classifier" not in cores.plans


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_cores_are_what_this_process_may_use() -> None:
    assert 1 <= cpu_cores() <= len(os.sched_getaffinity(0))
