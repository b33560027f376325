"""The Prometheus threshold monitor: one long-running, heartbeating activity.

While a scope is in force the workflow runs `monitor_thresholds` for the exposure
stage. Polling happens here, so it writes nothing to workflow history; only a
breach (the Nth consecutive failing evaluation of a `for: N` threshold) or the
window's end (with its data coverage) returns to the workflow.

Evaluation k runs at `started_at + k * interval` (k = 1, 2, ...), so a window has
`floor((window_ends_at - started_at) / interval)` scheduled evaluations. Slots
that passed while no worker ran the activity are skipped and count as no data
for coverage (never as failures). Progress (counters, data counts, last index,
recent samples) is heartbeated after every evaluation and at least every few
seconds in between; a retried activity resumes from the last heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio import activity

from activities.prometheus import PrometheusClient, QueryResult
from rollout import thresholds as th
from rollout.models import BreachEvidence, MonitorRequest, MonitorResult, Sample
from rollout.plan import Threshold

MAX_SAMPLES = 50
MIN_SAMPLES = 5
HEARTBEAT_EVERY = 5.0  # seconds, at most, between heartbeats while waiting


class MonitorProgress(BaseModel):
    """What a retried attempt needs to carry on: the heartbeat details."""

    rollout_id: str
    stage: str
    started_at: datetime
    last_index: int = 0  # last evaluation index run (0: none yet)
    counters: dict[str, int] = Field(default_factory=dict)
    data_counts: dict[str, int] = Field(default_factory=dict)
    no_data_in_run: dict[str, int] = Field(default_factory=dict)  # no-data evaluations counted in the run
    samples: dict[str, list[Sample]] = Field(default_factory=dict)
    evaluations: int = 0  # evaluations run by this monitor (all attempts)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _keep(t: Threshold) -> int:
    return min(MAX_SAMPLES, max(t.for_, MIN_SAMPLES))


def initial_progress(req: MonitorRequest, heartbeat_details: Sequence[Any] = ()) -> MonitorProgress:
    """Progress from the last heartbeat of an earlier attempt, else from the request."""
    started = _utc(req.started_at)
    names = [t.name for t in req.thresholds]
    for raw in reversed(list(heartbeat_details)):
        try:
            prog = MonitorProgress.model_validate(raw)
        except ValidationError:
            continue
        if prog.rollout_id == req.rollout_id and prog.stage == req.stage and _utc(prog.started_at) == started:
            prog.started_at = started
            for n in names:
                prog.counters.setdefault(n, 0)
                prog.data_counts.setdefault(n, 0)
                prog.no_data_in_run.setdefault(n, 0)
                prog.samples.setdefault(n, [])
            return prog
    return MonitorProgress(
        rollout_id=req.rollout_id,
        stage=req.stage,
        started_at=started,
        counters={n: max(0, req.counters.get(n, 0)) for n in names},
        data_counts={n: max(0, req.data_counts.get(n, 0)) for n in names},
        no_data_in_run={n: 0 for n in names},
        samples={n: [] for n in names},
    )


def _query_timeout(interval: float) -> float:
    return max(0.5, min(10.0, interval * 0.8))


def apply_evaluation(
    t: Threshold, prog: MonitorProgress, at: datetime, result: QueryResult
) -> tuple[th.Outcome, Sample]:
    """Fold one query result into the progress of threshold `t`."""
    value = None if result.error else th.worst_value(t, result.values)
    outcome = th.classify(t, value)
    error = result.error
    if outcome == "no_data" and error is None:
        error = "no series" if not result.values else "no finite value (NaN or Inf)"
    sample = Sample(at=at, value=value, error=error if outcome == "no_data" else None)
    before = prog.counters.get(t.name, 0)
    prog.counters[t.name] = th.next_counter(t, before, outcome)
    if outcome != "no_data":
        prog.data_counts[t.name] = prog.data_counts.get(t.name, 0) + 1
    if prog.counters[t.name] == 0:
        prog.no_data_in_run[t.name] = 0
    elif outcome == "no_data" and prog.counters[t.name] > before:
        prog.no_data_in_run[t.name] = prog.no_data_in_run.get(t.name, 0) + 1
    kept = [*prog.samples.get(t.name, []), sample]
    prog.samples[t.name] = kept[-_keep(t) :]
    return outcome, sample


def breach_evidence(
    req: MonitorRequest, t: Threshold, prog: MonitorProgress, sample: Sample, index: int
) -> BreachEvidence:
    run_no_data = prog.no_data_in_run.get(t.name, 0)
    no_data = run_no_data > 0
    action = th.effective_action(t, no_data)
    count = prog.counters.get(t.name, 0)
    if sample.value is None:
        reason = f"no data ({sample.error}); on_no_data: {t.on_no_data}"
    else:
        bounds = []
        if t.max is not None and sample.value > t.max:
            bounds.append(f"above max {t.max:g}")
        if t.min is not None and sample.value < t.min:
            bounds.append(f"below min {t.min:g}")
        reason = f"value {sample.value:g} " + " and ".join(bounds)
    return BreachEvidence(
        source="prometheus",
        threshold=t.name,
        query=t.query,
        value=sample.value,
        max=t.max,
        min=t.min,
        for_=t.for_,
        no_data=no_data,
        samples=list(prog.samples.get(t.name, [])),
        observed_at=sample.at,
        action=action,
        detail={
            "reason": f"{t.name}: {reason}, {count} consecutive failing evaluation(s) (for: {t.for_})",
            "rollout_id": req.rollout_id,
            "stage": req.stage,
            "prometheus_url": req.prometheus_url,
            "interval_seconds": req.interval_seconds,
            "evaluation_index": index,
            "consecutive_failures": count,
            "no_data_evaluations": run_no_data,
            "on_no_data": t.on_no_data,
            "threshold_action": t.action,
        },
    )


def _coverage(req: MonitorRequest, prog: MonitorProgress, expected: int) -> dict[str, float]:
    return {t.name: th.coverage(prog.data_counts.get(t.name, 0), expected) for t in req.thresholds}


class _Monitor:
    def __init__(self, req: MonitorRequest, prog: MonitorProgress) -> None:
        if req.interval_seconds <= 0:
            raise ValueError("interval_seconds must be greater than zero")
        self.req = req
        self.prog = prog
        self.interval = float(req.interval_seconds)
        self.started = prog.started_at
        self.ends = _utc(req.window_ends_at) if req.window_ends_at is not None else None
        self.last_index_end = (
            th.expected_evaluations(self.started, self.ends, self.interval) if self.ends is not None else None
        )
        hb = min(HEARTBEAT_EVERY, self.interval)
        info_timeout = activity.info().heartbeat_timeout
        if info_timeout is not None and info_timeout.total_seconds() > 0:
            hb = min(hb, info_timeout.total_seconds() / 3)
        self.heartbeat_every = max(0.05, hb)

    def heartbeat(self) -> None:
        activity.heartbeat(self.prog.model_dump(mode="json"))

    def due(self, k: int) -> datetime:
        return self.started + timedelta(seconds=k * self.interval)

    async def sleep_until(self, when: datetime) -> None:
        while True:
            remaining = (when - _now()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, self.heartbeat_every))
            self.heartbeat()

    def window_end_result(self) -> MonitorResult:
        assert self.ends is not None and self.last_index_end is not None
        expected = self.last_index_end
        return MonitorResult(
            kind="window_end",
            counters=dict(self.prog.counters),
            data_counts=dict(self.prog.data_counts),
            expected_evaluations=expected,
            coverage=_coverage(self.req, self.prog, expected),
        )

    async def run(self, client: PrometheusClient) -> MonitorResult:
        self.heartbeat()
        while True:
            k = self.prog.last_index + 1
            now = _now()
            current = th.evaluation_index(self.started, now, self.interval)
            if current > k:
                k = current  # slots missed while nobody ran them: no data, never failures
            if self.last_index_end is not None and k > self.last_index_end:
                assert self.ends is not None
                await self.sleep_until(self.ends)
                return self.window_end_result()
            await self.sleep_until(self.due(k))
            result = await self.evaluate(client, k)
            if result is not None:
                return result

    async def evaluate(self, client: PrometheusClient, k: int) -> MonitorResult | None:
        at = _now()
        results = await asyncio.gather(*(client.query(t.query, at) for t in self.req.thresholds))
        breaches: list[tuple[Threshold, Sample]] = []
        for t, res in zip(self.req.thresholds, results, strict=True):
            _outcome, sample = apply_evaluation(t, self.prog, at, res)
            if th.is_breach(t, self.prog.counters[t.name]):
                breaches.append((t, sample))
        self.prog.last_index = k
        self.prog.evaluations += 1
        self.heartbeat()
        if not breaches:
            return None
        evidences = [breach_evidence(self.req, t, self.prog, s, k) for t, s in breaches]
        # the strictest containment wins; ties go to plan order
        chosen = evidences[0]
        for ev in evidences[1:]:
            if th.ACTION_ORDER.index(ev.action) > th.ACTION_ORDER.index(chosen.action):
                chosen = ev
        others = [ev.threshold for ev in evidences if ev is not chosen]
        if others:
            chosen.detail["also_breached"] = others
        activity.logger.info(
            "threshold breach on %s stage %s: %s", self.req.rollout_id, self.req.stage, chosen.detail["reason"]
        )
        expected = th.evaluation_index(self.started, at, self.interval)
        return MonitorResult(
            kind="breach",
            breach=chosen,
            counters=dict(self.prog.counters),
            data_counts=dict(self.prog.data_counts),
            expected_evaluations=expected,
            coverage=_coverage(self.req, self.prog, expected),
        )


@activity.defn(name="monitor_thresholds")
async def monitor_thresholds(req: MonitorRequest) -> MonitorResult:
    """Evaluate the stage's thresholds until a breach or the window's end (or cancellation)."""
    prog = initial_progress(req, activity.info().heartbeat_details)
    if not req.thresholds:
        # nothing to evaluate: wait for the window's end (or cancellation) quietly
        mon = _Monitor(req, prog)
        if mon.ends is None:
            while True:
                await asyncio.sleep(mon.heartbeat_every)
                mon.heartbeat()
        await mon.sleep_until(mon.ends)
        return mon.window_end_result()
    mon = _Monitor(req, prog)
    t0 = time.monotonic()
    async with PrometheusClient(req.prometheus_url, timeout=_query_timeout(mon.interval)) as client:
        try:
            return await mon.run(client)
        except asyncio.CancelledError:
            activity.logger.info(
                "monitor for %s stage %s cancelled after %.1fs (%d evaluations)",
                req.rollout_id,
                req.stage,
                time.monotonic() - t0,
                prog.evaluations,
            )
            raise
