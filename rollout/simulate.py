"""`rollout simulate`: what a plan would have done on recorded metrics, pure.

The same state machine the workflow runs (`rollout.machine`) is driven over a past
period, with time taken from the period and the threshold values from series the
caller fetched. Nothing here does I/O: when the simulation needs values it does not
hold, `Simulation.run()` stops and returns a `Need` (which thresholds, from when, at
which step); the caller fetches them, `add`s them and calls `run()` again. So the
evaluation times are exact, never interpolated: an evaluation at `anchor + k *
interval` reads the value Prometheus gives for exactly that time (a range query at
step `interval` starting at that time evaluates the expression at each step, as the
monitor's instant query does). `simulate()` is the all-in-memory form, for series
already at hand.

What the simulated people do:
- approvals: each stage's roles are approved `approve_after` after the stage begins
  awaiting them (the pilot: at `start + approve_after`), each role by the first
  identity listed for it that the machine accepts (never the rollout owner, nobody
  twice in an entry, `distinct_from` respected); only while the stage is awaited and
  not held (no entry follows a containment without a resume);
- handoff items: acknowledged as soon as their stage is entered, by an identity of
  the receiving role;
- targets acknowledge every exposure change at once;
- pages: acknowledged at once by the incident-response owner (acknowledging never
  resumes; without it the whole chain would be paged every `ack_within` for as long
  as the hold lasts);
- nobody resumes a containment: the timeline shows how long it would have stayed
  held, and whether `max_hold` would have turned the hold into a rollback;
- signed approvals (`require_signed_approvals`) are assumed to be validly signed.

Evaluations are timed as the workflow's monitor times them: every interval from the
moment a scope is in force (the watch's anchor), while soaking, awaiting the next
entry and contained. Between decisions they are fed to the machine in batches (one
`Evaluations` report); a batch that would decide something is split so that every
decision is taken at the time of the evaluation that caused it, exactly as if each
evaluation had been reported on its own (the tests compare both).

Times in series are epoch milliseconds (Prometheus' resolution); every result time
is RFC 3339 UTC; the result is a plain JSON-able dict whose serialisation with
sorted keys is the same for the same plan and data, byte for byte.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rollout import machine
from rollout.durations import format_duration, parse_duration
from rollout.machine_model import (
    Acknowledge,
    ApplyExposure,
    Approve,
    Audit,
    Close,
    Command,
    DeadlineReached,
    Evaluation,
    Evaluations,
    Event,
    Refuse,
    State,
    TargetAcked,
    WatchSpec,
)
from rollout.models import AuditEvent
from rollout.plan import Plan, Threshold
from rollout.timefmt import rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
MAX_PERIOD = timedelta(days=365)
MAX_BATCH = 4096  # evaluation times per report at most
FETCH_POINTS = 11_000  # grid points asked for per threshold in one Need at least (one Prometheus query)
SIM_RUN_ID = "simulation"

Series = Mapping[str, Mapping[int, float | None]]  # "STAGE/NAME" -> epoch ms -> value (None: no data)


def to_ms(t: datetime) -> int:
    """Epoch milliseconds (floor)."""
    return (t - EPOCH) // MS


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def series_key(stage: str, threshold: str) -> str:
    return f"{stage}/{threshold}"


@dataclass(frozen=True)
class Need:
    """Values the simulation needs: `thresholds` of `stage` at `start_ms + i * step_ms`
    for every i with the time not after `end_ms`."""

    stage: str
    thresholds: tuple[Threshold, ...]
    start_ms: int
    end_ms: int
    step_ms: int

    def key(self, threshold: Threshold) -> str:
        return series_key(self.stage, threshold.name)

    @property
    def points(self) -> int:
        return (self.end_ms - self.start_ms) // self.step_ms + 1


@dataclass
class Worst:
    """The highest and lowest values a threshold was evaluated at, and when (first seen)."""

    hi: float | None = None
    hi_at_ms: int | None = None
    lo: float | None = None
    lo_at_ms: int | None = None

    def pick(self, t: Threshold) -> tuple[float | None, int | None]:
        """The worst of them, as the monitor picks among series (`thresholds.worst_value`)."""
        if self.hi is None or self.lo is None:
            return None, None
        if t.max is not None and self.hi > t.max:
            return self.hi, self.hi_at_ms
        if t.min is not None and self.lo < t.min:
            return self.lo, self.lo_at_ms
        return (self.hi, self.hi_at_ms) if t.max is not None else (self.lo, self.lo_at_ms)


@dataclass(order=True)
class _Due:
    at: datetime
    order: int
    stage: str = field(compare=False)


class SimulationError(ValueError):
    """A period or plan the simulation cannot run (bad input: exit 2)."""


def check_period(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise SimulationError("times must carry a time zone (RFC 3339, e.g. 2026-11-01T00:00:00Z)")
    if start >= end:
        raise SimulationError(f"--from ({rfc3339(start)}) must be before --to ({rfc3339(end)})")
    if end - start > MAX_PERIOD:
        raise SimulationError(
            f"the period {rfc3339(start)} .. {rfc3339(end)} is {format_duration(end - start)} long; "
            f"at most {format_duration(MAX_PERIOD)} can be simulated"
        )


def _interval_ms(plan: Plan) -> int:
    if plan.metrics is None:
        return 0
    ms = parse_duration(plan.metrics.interval) / MS
    if ms < 1 or ms != int(ms):
        raise SimulationError(
            f"metrics.interval {plan.metrics.interval!r} must be a whole number of milliseconds to simulate"
        )
    return int(ms)


def _quiet(cmds: list[Command]) -> bool:
    """Nothing decided: only the monitor's bookkeeping changed (its next index, latches)."""
    return all(c.kind == "watch" for c in cmds)


class Simulation:
    """One simulated rollout over [start, end]; `run()` until it returns None."""

    def __init__(
        self,
        plan: Plan,
        *,
        start: datetime,
        end: datetime,
        approve_after: timedelta = timedelta(0),
        max_batch: int = MAX_BATCH,
        fetch_points: int = FETCH_POINTS,
    ) -> None:
        check_period(start, end)
        if approve_after < timedelta(0):
            raise SimulationError("--approve-after must not be negative")
        self.plan = plan
        self.plan_hash = plan.plan_hash()
        # signatures cannot be simulated: approvals are assumed validly signed
        self._plan = plan.model_copy(update={"require_signed_approvals": False}) if plan.require_signed_approvals else plan
        # whole milliseconds (Prometheus' resolution), so that evaluation times are on its grid
        self.start = from_ms(to_ms(start))
        self.end = from_ms(to_ms(end))
        self.approve_after = approve_after // MS * MS
        self.max_batch = max(1, max_batch)
        self.fetch_points = max(1, fetch_points)
        self.step_ms = _interval_ms(plan)
        self.series: dict[str, dict[int, float | None]] = {}
        self.events: list[AuditEvent] = []
        self.worst: dict[str, Worst] = {}
        self.decisions = 0  # calls of machine.decide whose result was kept
        self.refused: list[str] = []  # simulated actions the machine refused (should stay empty)
        self._thresholds = {
            series_key(st.name, t.name): t for st in plan.stages for t in st.thresholds
        }
        self._approvals: list[_Due] = []
        self._order = 0
        self._done = False
        self._deadline_guard: tuple[datetime, int] | None = None
        state, cmds = machine.start(
            self._plan,
            workflow_id=f"rollout-{plan.name}",
            first_run_id=SIM_RUN_ID,
            started_by=plan.owners.rollout,
            now=self.start,
        )
        self.state: State = state
        self.now = self.start
        self._commit(state, cmds)

    # ---- data

    def add(self, key: str, values: Mapping[int, float | None]) -> None:
        """Values of threshold `key` ("STAGE/NAME") at epoch-ms times (None: no data)."""
        self.series.setdefault(key, {}).update(values)

    # ---- the loop

    def run(self) -> Need | None:
        """Advance until the end of the period (None) or until values are needed (a Need)."""
        while not self._done:
            s = self.state
            if s.status in machine.FINAL:
                self._done = True
                break
            spec = s.watch
            eval_at = self._next_evaluation(spec)
            deadline = self._deadline()
            approval = self._approvals[0].at if self._approvals else None
            candidates = [t for t in (eval_at, deadline, approval) if t is not None and t <= self.end]
            if not candidates:
                self._done = True
                break
            nxt = min(candidates)
            if eval_at is not None and eval_at == nxt:
                assert spec is not None
                limit = min(t for t in (deadline, approval, self.end) if t is not None)
                need = self._evaluate_until(spec, limit)
                if need is not None:
                    return need
            elif deadline is not None and deadline == nxt:
                self._feed(DeadlineReached(), max(deadline, self.now))
            else:
                self._approve_due()
        return None

    def _deadline(self) -> datetime | None:
        d = machine.next_deadline(self.state)
        if d is None:
            return None
        d = max(d, self.now)
        # a deadline the machine keeps giving at the same time after it was fed changes nothing more
        if self._deadline_guard is not None and self._deadline_guard[0] == d and self._deadline_guard[1] >= 3:
            return None
        return d

    def _next_evaluation(self, spec: WatchSpec | None) -> datetime | None:
        if spec is None or not spec.thresholds:
            return None
        return spec.anchor + timedelta(milliseconds=spec.next_index * self.step_ms)

    def _evaluate_until(self, spec: WatchSpec, limit: datetime) -> Need | None:
        """Report the evaluations due up to `limit` (inclusive); a Need if values are missing."""
        anchor_ms = to_ms(spec.anchor)
        first = anchor_ms + spec.next_index * self.step_ms
        last = min(to_ms(limit), first + (self.max_batch - 1) * self.step_ms)
        keys = [(t, series_key(spec.stage, t.name)) for t in spec.thresholds]
        times: list[int] = []
        rows: list[list[float | None]] = []
        for at in range(first, last + 1, self.step_ms):
            row: list[float | None] = []
            for _t, key in keys:
                values = self.series.get(key)
                if values is None or at not in values:
                    break
                row.append(values[at])
            else:
                times.append(at)
                rows.append(row)
                continue
            if not times:
                return self._need(spec, at)
            break
        self._report(spec, times, rows, keys)
        return None

    def _need(self, spec: WatchSpec, at: int) -> Need:
        """Values of the watched stage from `at` on: while it soaks, through its window's end
        and the next entry's approvals (the stage stays watched until then, unless a breach
        moves the scope); at least `fetch_points` points; never past the period's end."""
        s = self.state
        horizon = at + (self.fetch_points - 1) * self.step_ms
        if s.status == "soaking" and s.window_ends_at is not None:
            horizon = max(horizon, to_ms(s.window_ends_at + self.approve_after) + self.step_ms)
        end = min(to_ms(self.end), horizon)
        end = at + (end - at) // self.step_ms * self.step_ms
        return Need(spec.stage, tuple(spec.thresholds), at, end, self.step_ms)

    def _evaluations(
        self, spec: WatchSpec, times: list[int], rows: list[list[float | None]], keys: list[tuple[Threshold, str]]
    ) -> Evaluations:
        names = [t.name for t, _ in keys]
        results = []
        for at_ms, row in zip(times, rows, strict=True):
            at = from_ms(at_ms)
            for name, v in zip(names, row, strict=True):
                results.append(Evaluation(threshold=name, at=at, value=v, error=None if v is not None else "no data"))
        return Evaluations(stage=spec.stage, anchor=spec.anchor, through=from_ms(times[-1]), results=results)

    def _report(
        self, spec: WatchSpec, times: list[int], rows: list[list[float | None]], keys: list[tuple[Threshold, str]]
    ) -> None:
        """Feed evaluations as one report when nothing is decided in it; otherwise take the
        quiet part as one report and the deciding evaluation on its own, at its time."""
        base = self.state
        tried: dict[int, tuple[State, list[Command]]] = {}

        def attempt(n: int) -> tuple[State, list[Command]]:
            if n not in tried:
                ev = self._evaluations(spec, times[:n], rows[:n], keys)
                tried[n] = machine.decide(base, ev, from_ms(times[n - 1]))
            return tried[n]

        whole = attempt(len(times))
        if _quiet(whole[1]):
            self._commit_evaluations(whole, spec, times, rows, keys)
            return
        lo, hi = 1, len(times)  # the shortest prefix that decides something
        while lo < hi:
            mid = (lo + hi) // 2
            if _quiet(attempt(mid)[1]):
                lo = mid + 1
            else:
                hi = mid
        if hi > 1:
            self._commit_evaluations(attempt(hi - 1), spec, times[: hi - 1], rows[: hi - 1], keys)
        at = times[hi - 1]
        ev = self._evaluations(spec, [at], [rows[hi - 1]], keys)
        self.now = from_ms(at)
        state, cmds = machine.decide(self.state, ev, self.now)
        self._commit_evaluations((state, cmds), spec, [at], [rows[hi - 1]], keys)

    def _commit_evaluations(
        self,
        decided: tuple[State, list[Command]],
        spec: WatchSpec,
        times: list[int],
        rows: list[list[float | None]],
        keys: list[tuple[Threshold, str]],
    ) -> None:
        for i, (_t, key) in enumerate(keys):
            w = self.worst.setdefault(key, Worst())
            for at, row in zip(times, rows, strict=True):
                v = row[i]
                if v is None or not -math.inf < v < math.inf:
                    continue
                if w.hi is None or v > w.hi:
                    w.hi, w.hi_at_ms = v, at
                if w.lo is None or v < w.lo:
                    w.lo, w.lo_at_ms = v, at
        self.now = max(self.now, from_ms(times[-1]))
        self._commit(*decided)

    def _approve_due(self) -> None:
        due = heapq.heappop(self._approvals)
        self.now = max(self.now, due.at)
        s = self.state
        stage = self._plan.stages[s.stage_index]
        if s.status != "awaiting_approval" or stage.name != due.stage:
            return  # no longer awaited (or held): nothing to approve now
        given = s.approvals.get(stage.name, {})
        for role in stage.approvals.roles:
            if role in self.state.approvals.get(stage.name, given):
                continue
            ev = self._first_accepted(
                [Approve(actor=ident, stage=stage.name, role=role) for ident in self._plan.approvers.get(role, [])]
            )
            if ev is None:
                self.refused.append(f"{stage.name}: no listed identity may approve role {role}")
                continue
            self._feed(ev, self.now)
            if self.state.status != "awaiting_approval" or self.state.stage_index != s.stage_index:
                return  # entered (or otherwise moved on)

    def _first_accepted(self, events: Sequence[Approve | Acknowledge]) -> Approve | Acknowledge | None:
        for ev in events:
            if machine.refusal(self.state, ev, self.now) is None:
                return ev
        return None

    # ---- feeding the machine and carrying out its commands

    def _feed(self, ev: Event, now: datetime) -> None:
        self.now = max(self.now, now)
        if isinstance(ev, DeadlineReached):
            guard = self._deadline_guard
            count = guard[1] + 1 if guard is not None and guard[0] == self.now else 1
            self._deadline_guard = (self.now, count)
        state, cmds = machine.decide(self.state, ev, self.now)
        self._commit(state, cmds)

    def _commit(self, state: State, cmds: list[Command]) -> None:
        self.state = state
        self.decisions += 1
        follow: list[Event] = []
        for c in cmds:
            if isinstance(c, Audit):
                self.events.append(c.event)
                follow.extend(self._react(c.event))
            elif isinstance(c, ApplyExposure):
                follow.append(TargetAcked(seq=c.change.seq))
            elif isinstance(c, Close):
                self._done = True
            elif isinstance(c, Refuse):
                self.refused.append(c.reason)
        for ev in follow:
            self._feed(ev, self.now)

    def _react(self, ev: AuditEvent) -> list[Event]:
        """What the simulated people do when the machine records `ev`."""
        plan = self._plan
        if ev.action == "awaiting_approval" and ev.stage is not None:
            self._order += 1
            heapq.heappush(self._approvals, _Due(ev.at + self.approve_after, self._order, ev.stage))
            return []
        if ev.action == "stage_entered" and ev.stage is not None:
            idx = plan.stage_index(ev.stage)
            assert idx is not None
            out: list[Event] = []
            for h in plan.stages[idx].handoff:
                ack = self._first_accepted(
                    [Acknowledge(actor=i, item=h.item, stage=ev.stage) for i in plan.role_identities(h.to)]
                )
                if ack is None:
                    self.refused.append(f"{ev.stage}: nobody of role {h.to} may acknowledge {h.item!r}")
                else:
                    out.append(ack)
            return out
        if ev.action == "escalation_page":
            return [Acknowledge(actor=plan.owners.incident_response, escalation=True)]
        return []

    # ---- the answer

    def worst_of(self, key: str) -> tuple[float | None, int | None]:
        """The worst value threshold `key` ("STAGE/NAME") was evaluated at, and when (epoch ms)."""
        w = self.worst.get(key)
        return w.pick(self._thresholds[key]) if w is not None else (None, None)

    def result(self) -> dict[str, Any]:
        """The simulation's answer (see the module docstring); call after `run()` returned None."""
        s = self.state
        tallies = s.tallies
        thresholds: dict[str, dict[str, int]] = {}
        for key in self._thresholds:
            tally = tallies.get(key)
            thresholds[key] = {
                "evaluations": tally.evaluations if tally else 0,
                "failing": tally.failing if tally else 0,
                "no_data": tally.no_data if tally else 0,
                "breaches": tally.breaches if tally else 0,
            }
        exposed = s.exposure.stage
        return {
            "plan_hash": self.plan_hash,
            "from": rfc3339(self.start),
            "to": rfc3339(self.end),
            "events": [timeline_event(e) for e in self.events],
            "final": {
                "stage": self.plan.stages[s.stage_index].name,
                "status": s.status,
                "exposure_stage": self.plan.stages[exposed].name if exposed is not None else None,
            },
            "thresholds": thresholds,
        }



# ---- timeline rows ------------------------------------------------------------------------


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def _breach_detail(b: Mapping[str, Any]) -> str:
    parts = []
    for e in (b.get("evidence") or {}).get("breaches") or []:
        name = e.get("threshold") or "?"
        value = e.get("value")
        if value is None:
            what = f"no data (on_no_data: {e.get('on_no_data')})"
        else:
            bounds = []
            if e.get("max") is not None and value > e["max"]:
                bounds.append(f"above max {_num(e['max'])}")
            if e.get("min") is not None and value < e["min"]:
                bounds.append(f"below min {_num(e['min'])}")
            what = f"{_num(value)} " + " and ".join(bounds)
        parts.append(f"{name}: {what.strip()}, {e.get('for')} consecutive failing evaluation(s)")
    text = "; ".join(parts) or "breach"
    note = b.get("note")
    return f"{text} ({note})" if note else text


def _detail(ev: AuditEvent) -> str | None:
    p = ev.payload
    kind = ev.action
    if kind == "started":
        return f"started by {ev.actor}"
    if kind == "awaiting_approval":
        return "awaiting " + (", ".join(p.get("roles") or []) or "no approval")
    if kind == "approved":
        return f"{ev.actor} ({ev.role})"
    if kind == "stage_entered":
        scope = p.get("scope") or {}
        approvals = ", ".join(f"{r}: {a}" for r, a in sorted((p.get("approvals") or {}).items()))
        return f"{_num(scope.get('percent'))}%" + (f", approved by {approvals}" if approvals else "")
    if kind == "scope_applied":
        return f"{p.get('kind')} {_num(p.get('percent'))}%" + (" (frozen)" if p.get("frozen") else "")
    if kind == "window_started":
        return f"window ends {rfc3339_text(p.get('window_ends_at'))}"
    if kind in ("window_clean", "window_insufficient_data"):
        cov = p.get("coverage") or {}
        text = ", ".join(f"{n} {c * 100:.1f}%" for n, c in sorted(cov.items()))
        return ("coverage " + text) if text else None
    if kind == "window_summary":
        return str(p.get("outcome"))
    if kind == "handoff_acknowledged":
        return f"{p.get('item')} ({ev.actor})"
    if kind == "escalation_page":
        return f"paged {', '.join(p.get('recipients') or [])} ({', '.join(p.get('roles') or [])})"
    if kind == "escalation_acknowledged":
        return f"acknowledged by {ev.actor}"
    if kind == "breach":
        return _breach_detail(p.get("breach") or {})
    if kind == "approvals_voided":
        return "voided: " + (", ".join(p.get("stages") or []) or "none")
    return ev.reason


def rfc3339_text(value: Any) -> str:
    """An ISO time from a payload, as RFC 3339 UTC (unchanged when it is not a time)."""
    if isinstance(value, str):
        try:
            return rfc3339(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return value
    return str(value)


def timeline_event(ev: AuditEvent) -> dict[str, Any]:
    """One row of `events`: at, kind, stage, threshold, value, action, detail (null when n/a)."""
    p = ev.payload
    threshold: str | None = None
    value: float | None = None
    action: str | None = None
    if ev.action == "breach":
        b = p.get("breach") or {}
        threshold = b.get("threshold")
        value = b.get("value")
        action = b.get("action") if b.get("applied") else None
    elif ev.action.startswith("contained_"):
        action = ev.action.removeprefix("contained_")
        threshold = ",".join(p.get("thresholds") or []) or None
    return {
        "at": rfc3339(ev.at),
        "kind": ev.action,
        "stage": ev.stage,
        "threshold": threshold,
        "value": value,
        "action": action,
        "detail": _detail(ev),
    }


# ---- all in memory --------------------------------------------------------------------------


def latest_at_or_before(values: Mapping[int, float | None], need: Need) -> dict[int, float | None]:
    """`values` on the need's grid: at each grid time, the value of the latest time at or
    before it within one step (None if there is none)."""
    times = sorted(values)
    out: dict[int, float | None] = {}
    i = 0
    for at in range(need.start_ms, need.end_ms + 1, need.step_ms):
        while i < len(times) and times[i] <= at:
            i += 1
        prev = times[i - 1] if i > 0 else None
        out[at] = values[prev] if prev is not None and at - prev < need.step_ms else None
    return out


def simulate(
    plan: Plan,
    series: Series,
    *,
    start: datetime,
    end: datetime,
    approve_after: timedelta = timedelta(0),
) -> dict[str, Any]:
    """Run the whole simulation on series already fetched ("STAGE/NAME" -> epoch ms -> value).

    An evaluation time present in a series reads its value; a time a series does not
    hold reads the latest value at or before it within one interval (a series fetched
    on another grid), else no data.
    """
    sim = Simulation(plan, start=start, end=end, approve_after=approve_after)
    while (need := sim.run()) is not None:
        for t in need.thresholds:
            key = need.key(t)
            have = series.get(key, {})
            grid = range(need.start_ms, need.end_ms + 1, need.step_ms)
            if all(at in have for at in grid):
                sim.add(key, {at: have[at] for at in grid})
            else:
                sim.add(key, latest_at_or_before(have, need))
    return sim.result()
