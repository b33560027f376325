"""`watch_thresholds`: evaluates a stage's thresholds on schedule and reports them back.

The monitor keeps no rule. Evaluation k of a `WatchSpec` is the plan's PromQL as an
instant query at `anchor + k * interval` (k >= next_index). Every evaluation made goes
back to the workflow in an `Evaluations` report, where the state machine counts `for`,
coverage and breaches. The activity returns (so the report lands in history) when:

- a threshold not latched fails or has no data (it may breach: reported at once);
- the slot at or after `flush_at` (the window's end) is evaluated;
- buffered evaluations are `flush_every_seconds` old;
- the workflow cancels it (a new scope, continue-as-new): it returns what it has.

Slots that passed while no attempt ran (worker down) are skipped: they were missed and
count as no data for coverage. Progress is heartbeated, so a retried attempt (a worker
killed) resumes with the evaluations already made.

Time is the server's: the attempt's scheduled time plus the time elapsed since, so a
time-skipping test server and the workflow agree on when a slot is due.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio import activity

from activities.prometheus import PrometheusClient
from rollout import thresholds as th
from rollout.machine_model import Evaluation, Evaluations, WatchSpec

HEARTBEAT_EVERY = 5.0
MAX_BUFFER = 500
LATE_TOLERANCE = 1.0  # a slot later than this many intervals is missed, not evaluated late


class _Progress(BaseModel):
    anchor: datetime
    stage: str
    next_index: int
    results: list[Evaluation] = Field(default_factory=list)
    latched: list[str] = Field(default_factory=list)


class _Clock:
    """The server's time: the attempt's scheduled time plus monotonic time since."""

    def __init__(self) -> None:
        info = activity.info()
        sched = info.current_attempt_scheduled_time
        self.base = sched if sched.tzinfo else sched.replace(tzinfo=UTC)
        self.t0 = time.monotonic()

    def now(self) -> datetime:
        return self.base + timedelta(seconds=time.monotonic() - self.t0)


def _resume(spec: WatchSpec, details: Any) -> _Progress:
    for raw in reversed(list(details)):
        try:
            prog = _Progress.model_validate(raw)
        except ValidationError:
            continue
        if prog.anchor == spec.anchor and prog.stage == spec.stage and prog.next_index >= spec.next_index:
            return prog
    return _Progress(anchor=spec.anchor, stage=spec.stage, next_index=spec.next_index, latched=list(spec.latched))


def _report(spec: WatchSpec, prog: _Progress, through: datetime) -> Evaluations:
    return Evaluations(stage=spec.stage, anchor=spec.anchor, through=through, results=prog.results)


@activity.defn(name="watch_thresholds")
async def watch_thresholds(spec: WatchSpec) -> Evaluations:
    clock = _Clock()
    prog = _resume(spec, activity.info().heartbeat_details)
    interval = spec.interval_seconds
    latched = set(prog.latched)
    first_buffered: float | None = time.monotonic() if prog.results else None

    def due(k: int) -> datetime:
        return spec.anchor + timedelta(seconds=k * interval)

    def through() -> datetime:
        return due(prog.next_index - 1)

    timeout = max(0.5, min(10.0, interval * 0.8))
    async with PrometheusClient(spec.prometheus_url, timeout=timeout) as client:
        try:
            while True:
                # skip slots missed while no attempt ran
                lag = (clock.now() - due(prog.next_index)).total_seconds()
                if lag > LATE_TOLERANCE * interval:
                    prog.next_index += int(lag // interval)
                slot = due(prog.next_index)
                while (wait := (slot - clock.now()).total_seconds()) > 0:
                    activity.heartbeat(prog.model_dump(mode="json"))
                    await asyncio.sleep(min(wait, HEARTBEAT_EVERY))
                at = min(slot, datetime.now(UTC))  # never ask Prometheus about its future
                answers = await asyncio.gather(*(client.query(t.query, at) for t in spec.thresholds))
                urgent = False
                for t, res in zip(spec.thresholds, answers, strict=True):
                    value = None if res.error else th.worst_value(t, res.values)
                    prog.results.append(Evaluation(threshold=t.name, at=slot, value=value, error=res.error))
                    outcome = th.classify(t, value)
                    if outcome == "pass":
                        latched.discard(t.name)
                    elif th.counts_as_failure(t, outcome) and t.name not in latched:
                        urgent = True
                prog.next_index += 1
                prog.latched = sorted(latched)
                first_buffered = first_buffered or time.monotonic()
                activity.heartbeat(prog.model_dump(mode="json"))
                if (
                    urgent
                    or (spec.flush_at is not None and slot >= spec.flush_at)
                    or time.monotonic() - first_buffered >= spec.flush_every_seconds
                    or len(prog.results) >= MAX_BUFFER
                ):
                    return _report(spec, prog, through())
        except asyncio.CancelledError:
            return _report(spec, prog, through())  # what was evaluated is not lost
