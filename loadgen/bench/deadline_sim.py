"""The three-stage pipeline on a virtual clock: decode → detector → classifier, each the real scheduler and policy.

Each stage is a :class:`~visionpipe.executor.scheduler.Scheduler` with its own policy, latency model (seeded as
an executor's warm-up seeds it) and :class:`~visionpipe.executor.sim_device.SimDevice` with its own cost; the
detector's fan-out (crops per image) comes with each request, and the classifier runs one item per crop. Every
broker hop (ingress → decode → detector → classifier → results) takes a draw from a lognormal fitted to the
measured Redis hop. Events are arrivals, stage entries, batch completions, policy wake-ups and the stages'
announcements (every ``heartbeat_s``, what each stage expects, as ``visionpipe.stage_state`` publishes it live);
a stage and the front door see each other only through those announcements, as stale as they are live.

A mode says how the pipeline uses a request's deadline (:class:`Mode`): not at all (Triton-style, each stage's
max queue delay), a static split with or without dropping at a stage's share (Nexus-style), or propagated
budgets with early answers and front-door admission (``visionpipe.budget``, what the stages do live). Every
request ends as one of :data:`OUTCOMES`, and the device time each stage spent on each request is kept, so the
time spent on requests that missed anyway can be counted.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from visionpipe.budget import StageFigures, admit, stage_deadline_ns
from visionpipe.executor.expectation import alone_s
from visionpipe.executor.policy import BatchPolicy
from visionpipe.executor.scheduler import Batch, Request, Scheduler
from visionpipe.executor.sim_device import CostModel, SimBatch, SimDevice
from visionpipe.loadgen.bench.simulate import warmed_model
from visionpipe.topology import CLASSIFIER, STAGES

NS = 1_000_000_000
# How a request ended, as its client saw it.
ON_TIME, EARLY, LATE_RESULT, LATE_ANSWER, REJECTED, UNANSWERED = range(6)
OUTCOMES = ("on_time", "early", "late_result", "late_answer", "rejected", "unanswered")
# Runs stop this long after the last arrival; what has no answer by then is unanswered (a collapsed queue).
DRAIN_S = 20.0
# Classifier items per message as the stage announces it: an EWMA over about the last twenty messages.
PER_MESSAGE_WEIGHT = 0.05


@dataclass(frozen=True)
class StageCost:
    cost: CostModel
    max_batch: int
    slo_ms: float  # the executor's SLO: the policy's margin, and the deadline of requests without one


@dataclass(frozen=True)
class PipelineCost:
    name: str
    stages: dict[str, StageCost]
    hop_median_ms: float
    hop_sigma: float  # of the hop's log

    @property
    def hop_mean_s(self) -> float:
        return self.hop_median_ms * math.exp(self.hop_sigma**2 / 2) / 1e3


@dataclass(frozen=True)
class Mode:
    """How the pipeline treats deadlines. ``policies``: per stage, a factory of its batching policy."""

    name: str
    policies: dict[str, Callable[[], BatchPolicy]]
    split: str | None = None  # None: deadlines unseen by the stages; "static" or "propagate"
    drop: bool = False  # take a request out once its stage deadline cannot be met, and answer at once
    admission: bool = False  # refuse at the front door what the pipeline expects to miss (429)
    watermark: int = 2_000  # refuse at the front door while this many admitted requests are unanswered
    judge_at_end: bool = False  # a result past its deadline is answered deadline_exceeded, never silently late
    static_shares: dict[str, float] | None = None
    params: dict[str, object] = field(default_factory=dict)


@dataclass
class Load:
    name: str
    arrivals_ns: np.ndarray
    fanout: np.ndarray  # crops per image
    deadline_ms: float | np.ndarray  # one for all, or one per request
    duration_s: float
    offered_fraction: float = 0.0  # of capacity (Poisson points), for the report


@dataclass
class Outcome:
    """Per request: how it ended, when its answer reached the client, device seconds spent on it."""

    code: np.ndarray
    answer_ns: np.ndarray
    device_s: np.ndarray
    busy_s: float


class _Stage:
    def __init__(self, name: str, spec: StageCost, policy: BatchPolicy, seed: int) -> None:
        self.name, self.spec = name, spec
        model = warmed_model(spec.cost, True, (1, spec.max_batch), 64, seed)
        self.sched = Scheduler(policy, model, max_batch=spec.max_batch, overlap=True, slo_ns=int(spec.slo_ms * 1e6))
        self.device = SimDevice(spec.cost, max_batch=spec.max_batch, overlap=True, seed=seed)
        self.wake_gen = 0
        self.per_message = 1.0


class PipelineSim:
    def __init__(self, cost: PipelineCost, mode: Mode, load: Load, *, heartbeat_s: float = 0.25, seed: int = 0):
        self.cost, self.mode, self.load = cost, mode, load
        self.heartbeat_ns = int(heartbeat_s * NS)
        self.rng = np.random.default_rng(seed + 1)
        self.stages = [_Stage(s, cost.stages[s], mode.policies[s](), seed + i) for i, s in enumerate(STAGES)]
        for i, st in enumerate(self.stages):
            st.sched.on_expire = self._expirer(i)
        n = len(load.arrivals_ns)
        self.deadline = load.arrivals_ns + (np.asarray(load.deadline_ms) * 1e6).astype(np.int64)
        self.code = np.full(n, UNANSWERED, dtype=np.int8)
        self.answer = np.full(n, -1, dtype=np.int64)
        self.device_s = np.zeros(n)
        self.items_left = np.zeros(n, dtype=np.int64)
        self.taken = np.zeros(n, dtype=bool)  # answered, or on its way to be: nothing more is done for it
        self.open = 0  # admitted, not yet answered
        self.figures: dict[str, StageFigures] = {}
        self.now = 0
        self._events: list[tuple[int, int, int, int, object]] = []
        self._seq = 0

    # events: (time, seq, kind, stage or request, data)
    def _push(self, t: int, kind: int, a: int, data: object = None) -> None:
        heapq.heappush(self._events, (t, self._seq, kind, a, data))
        self._seq += 1

    def _hop(self) -> int:
        return int(self.cost.hop_median_ms * math.exp(self.cost.hop_sigma * self.rng.standard_normal()) * 1e6)

    def run(self) -> Outcome:
        arrivals = self.load.arrivals_ns
        for r, t in enumerate(arrivals.tolist()):
            self._push(t, _ARRIVE, r)
        end = (int(arrivals.max()) if len(arrivals) else 0) + int(DRAIN_S * NS)
        self._push(0, _BEAT, 0)
        handlers = (self._arrive, self._enter, self._done, self._wake, self._beat, self._answer)
        while self._events:
            t, _, kind, a, data = heapq.heappop(self._events)
            if t > end:
                break
            self.now = t
            handlers[kind](a, data)
        busy = sum(st.device.busy_s for st in self.stages)
        return Outcome(self.code, self.answer, self.device_s, busy)

    def _arrive(self, r: int, _: object) -> None:
        mode, t = self.mode, self.now
        refused = self.open >= mode.watermark
        if not refused and mode.admission:
            refused = admit((int(self.deadline[r]) - t) / NS, self.figures) is not None
        if refused:
            self.code[r], self.answer[r] = REJECTED, t
            return
        self.open += 1
        self._push(t + self._hop(), _ENTER, 0, r)

    def _enter(self, i: int, data: object) -> None:
        r, st, t = int(data), self.stages[i], self.now  # type: ignore[call-overload]
        if self.taken[r]:
            return
        items = int(self.load.fanout[r]) if st.name == CLASSIFIER else 1
        if st.name == CLASSIFIER:
            st.per_message += PER_MESSAGE_WEIGHT * (items - st.per_message)
        soft, hard = self._deadlines(i, r)
        fastest = int(alone_s(st.sched.model, 1, True) * NS)
        if hard is not None and t + fastest > hard:  # as the stage's admission does (services/runtime/budgets.py)
            self._expire(i, r, t + fastest - hard)
            return
        if items == 0:  # no crop: the classifier has nothing to run, the message passes straight on
            self._leave(i, r)
            return
        self.items_left[r] = items
        for _ in range(items):
            st.sched.add(t, r, soft, hard)
        self._poke(i)

    def _deadlines(self, i: int, r: int) -> tuple[int | None, int | None]:
        """(batch against, expire at) on the stage's clock: what the mode makes of the request's deadline."""
        mode, st = self.mode, self.stages[i]
        if mode.split is None:
            return None, None
        due = stage_deadline_ns(
            int(self.deadline[r]),
            int(self.load.arrivals_ns[r]),
            st.name,
            self.figures,
            mode.split,
            static_shares=mode.static_shares,
        )
        soft = min(due, self.now + st.sched.slo_ns)
        return soft, due if mode.drop else None

    def _poke(self, i: int) -> None:
        st, t = self.stages[i], self.now
        while True:
            decision = st.sched.next_action(t)
            if decision.dispatch <= 0:
                break
            batch = st.sched.take(t, decision.dispatch)
            sb = st.device.schedule(batch.size, t)
            self._push(sb.download_end, _DONE, i, (batch, sb))
        if decision.wake_at_ns is not None:
            st.wake_gen += 1
            self._push(max(decision.wake_at_ns, t + 1), _WAKE, i, st.wake_gen)

    def _wake(self, i: int, gen: object) -> None:
        if gen == self.stages[i].wake_gen:
            self._poke(i)

    def _done(self, i: int, data: object) -> None:
        assert isinstance(data, tuple)
        batch, sb = data
        assert isinstance(batch, Batch) and isinstance(sb, SimBatch)
        st = self.stages[i]
        st.sched.complete(batch, self.now, sb.timings())
        share = (sb.compute_end - sb.compute_start) / NS / batch.size
        for req in batch.requests:
            r = req.payload
            self.device_s[r] += share
            if self.taken[r]:  # another item of its message was taken out: this one was computed for nothing
                continue
            self.items_left[r] -= 1
            if self.items_left[r] == 0:
                self._leave(i, r)
        self._poke(i)

    def _leave(self, i: int, r: int) -> None:
        if i + 1 < len(self.stages):
            self._push(self.now + self._hop(), _ENTER, i + 1, r)
        else:
            self.taken[r] = True
            self._push(self.now + self._hop(), _ANSWER, r, True)

    def _expirer(self, i: int) -> Callable[[Request, int], None]:
        def expired(req: Request, late_ns: int) -> None:
            self._expire(i, int(req.payload), late_ns)

        return expired

    def _expire(self, i: int, r: int, late_ns: int) -> None:
        if not self.taken[r]:  # the first item of a message to expire answers for all of them
            self.taken[r] = True
            self._push(self.now + self._hop(), _ANSWER, r, False)

    def _answer(self, r: int, result: object) -> None:
        t, late = self.now, self.now > self.deadline[r]
        self.open -= 1
        self.answer[r] = t
        if result:
            self.code[r] = LATE_RESULT if late else ON_TIME
        else:
            self.code[r] = LATE_ANSWER if late else EARLY
        if result and late and self.mode.judge_at_end:
            self.code[r] = LATE_ANSWER  # the front door answers deadline_exceeded: late, not silent

    def _beat(self, _: int, __: object) -> None:
        hop = self.cost.hop_mean_s
        for st in self.stages:
            e = st.sched.expectation(self.now, items=st.per_message if st.name == CLASSIFIER else 1.0)
            self.figures[st.name] = StageFigures(hop + e.total_s, hop + e.minimum_s, e.batch_s, hop)
        if self._events:
            self._push(self.now + self.heartbeat_ns, _BEAT, 0)


_ARRIVE, _ENTER, _DONE, _WAKE, _BEAT, _ANSWER = range(6)


def simulate_pipeline(cost: PipelineCost, mode: Mode, load: Load, *, seed: int = 0) -> Outcome:
    return PipelineSim(cost, mode, load, seed=seed).run()
