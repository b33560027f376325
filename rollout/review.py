"""The periodic review of a rollout, from its audit trail alone: how did it go, and
should it stay (keep), change (adjust) or stop?

Pure: the AuditEvent rows of one rollout in, a report out (`build_review`), then
rendered as Markdown, JSON or one self-contained HTML page with inline SVG plots.
No I/O and no clock: `now` (the end of the period of an open rollout) is an argument.
It needs nothing but the rows, so it works for closed rollouts whose Temporal
history is gone.

What it reads (the actions the state machine records, rollout/machine.py):
`started` (with the plan), `awaiting_approval`, `approved`, `stage_entered`,
`contained_hold|narrow|rollback`, `rejected`, `resumed`, `awaiting_handoff`,
`completed`, `aborted` (status and stage over time); `breach` (value, limit,
action, whether it applied); `escalation_page`, `escalation_acknowledged`,
`escalation_replaced` (pages and acknowledgements); `window_started`,
`window_summary` (per window and threshold: evaluations, coverage, the values
down-sampled and every failing one); `handoff_acknowledged`;
`amendment_proposed` (with the new plan), `amendment_approved`,
`amendment_applied`.

The summary follows the rules in RULES, each suggestion listing the seqs of the
rows it rests on; the verdict is the strictest suggestion (stop > adjust > keep).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rollout.durations import parse_duration
from rollout.models import AuditEvent
from rollout.timefmt import parse, rfc3339, span

RESUMED_UNCHANGED_LIMIT = 2  # more resumes than this after breaches of an unchanged threshold: adjust
COVERAGE_MIN = 0.9
SLOW_APPROVAL = timedelta(hours=24)

RULES: dict[str, tuple[str, str]] = {
    "rollback": ("stop", "a rollback (manual, breach-driven or after max_hold) suggests stopping to review the system"),
    "aborted": ("stop", "an aborted rollout: review why before starting it again"),
    "threshold_resumed_unchanged": (
        "adjust",
        f"a threshold that breached and was resumed without change more than {RESUMED_UNCHANGED_LIMIT} times: "
        "adjust the threshold or fix the system",
    ),
    "sla_missed": ("adjust", "an escalation acknowledged later than escalation.ack_within (or never): review the escalation chain"),
    "coverage_short": ("adjust", f"a window where a threshold had data for less than {COVERAGE_MIN:.0%} of its evaluations: fix the metric's data"),
    "slow_approvals": ("adjust", f"a role whose approvals waited more than {span(SLOW_APPROVAL)} on average: review its approvers"),
    "threshold_quiet": ("keep", f"a threshold that never breached, with at least {COVERAGE_MIN:.0%} coverage in every window: keep it"),
    "clean": ("keep", "no rollback, no missed SLA, nothing to adjust: keep the rollout as it is"),
}
VERDICT_ORDER = {"keep": 0, "adjust": 1, "stop": 2}
STATUSES = ("awaiting_approval", "soaking", "held", "awaiting_handoff", "rolled_back", "completed", "aborted")
FINAL = ("completed", "aborted")


def _secs(td: timedelta) -> float:
    return round(td.total_seconds(), 3)


def _at(value: object) -> datetime | None:
    return parse(value)


def _iso(t: datetime | None) -> str | None:
    return rfc3339(t) if t is not None else None


# ---- building -------------------------------------------------------------------------


@dataclass
class _Segment:
    start: datetime
    end: datetime | None
    stage: str | None
    status: str
    seq: int


@dataclass
class _Containment:
    seq: int
    kind: str
    at: datetime
    actor: str | None
    reason: str | None
    stage: str | None
    thresholds: list[str]
    breach_id: int | None
    ended: dict[str, Any] | None = None
    from_stage: str | None = None  # a rollback: the stage whose exposure it ended


@dataclass
class _Escalation:
    id: int
    opened_at: datetime
    reason: str | None
    sla_seconds: float | None
    containment_seq: int | None
    pages: list[dict[str, Any]] = field(default_factory=list)
    ack: dict[str, Any] | None = None
    ended: dict[str, Any] | None = None  # replaced or closed without acknowledgement
    seqs: list[int] = field(default_factory=list)


def _threshold_defs(plan: dict[str, Any] | None) -> dict[tuple[str, str], str]:
    """(stage, threshold) -> canonical JSON of its definition."""
    out: dict[tuple[str, str], str] = {}
    for st in (plan or {}).get("stages", []) or []:
        for t in st.get("thresholds", []) or []:
            out[(str(st.get("name")), str(t.get("name")))] = json.dumps(t, sort_keys=True)
    return out


def plan_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Changes between two plans as (path, old, new); list items with a `name` or `item`
    are matched by it (`stages[pilot].thresholds[error_rate].max`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for k in sorted(set(old) | set(new), key=str):  # key order does not survive every store
            sub = f"{path}.{k}" if path else str(k)
            if k not in new:
                out.append({"path": sub, "old": old[k], "new": None})
            elif k not in old:
                out.append({"path": sub, "old": None, "new": new[k]})
            else:
                out.extend(plan_diff(old[k], new[k], sub))
        return out
    if isinstance(old, list) and isinstance(new, list):
        key = _list_key(old + new)
        if key is not None:
            a = {str(x[key]): x for x in old}
            b = {str(x[key]): x for x in new}
            out = []
            for name in list(a) + [n for n in b if n not in a]:
                out.extend(plan_diff(a.get(name), b.get(name), f"{path}[{name}]"))
            return out
    if old != new:
        return [{"path": path, "old": old, "new": new}]
    return []


def _list_key(items: list[Any]) -> str | None:
    for key in ("name", "item"):
        if items and all(isinstance(x, dict) and key in x for x in items):
            return key
    return None


def build_review(
    events: Iterable[AuditEvent], *, rollout_id: str, now: datetime, since: datetime | None = None
) -> dict[str, Any]:
    """The review of one rollout's trail as JSON-ready data (see the module docstring)."""
    evs = sorted((e for e in events if e.rollout_id == rollout_id), key=lambda e: e.seq)
    b = _Builder(rollout_id, now)
    for ev in evs:
        b.feed(ev)
    return b.finish(since)


class _Builder:
    def __init__(self, rollout_id: str, now: datetime) -> None:
        self.rollout_id = rollout_id
        self.now = now
        self.events: list[AuditEvent] = []
        self.plans: dict[str, dict[str, Any]] = {}  # plan_hash -> plan
        self.plan: dict[str, Any] | None = None
        self.plan_name: str | None = None
        self.segments: list[_Segment] = []
        self.status: str | None = None
        self.stage: str | None = None
        self.awaiting_since: dict[str, datetime] = {}
        self.approvals: list[dict[str, Any]] = []
        self.breaches: list[dict[str, Any]] = []
        self.containments: list[_Containment] = []
        self.open: list[_Containment] = []
        self.escalations: dict[int, _Escalation] = {}
        self.windows: list[dict[str, Any]] = []
        self.running: dict[str, dict[str, Any]] = {}  # stage -> window_started not summarised yet
        self.handoffs: list[dict[str, Any]] = []
        self.entered: list[str] = []
        self.amendments: dict[str, dict[str, Any]] = {}
        self.amendment_order: list[str] = []
        self.resumes: list[dict[str, Any]] = []
        self.final: AuditEvent | None = None
        self.prev: AuditEvent | None = None

    # -- status and stage over time

    def move(self, ev: AuditEvent, status: str | None = None, stage: str | None = None) -> None:
        status = status or self.status or "awaiting_approval"
        stage = stage if stage is not None else self.stage
        if (status, stage) == (self.status, self.stage):
            return
        if self.segments:
            self.segments[-1].end = ev.at
        self.segments.append(_Segment(ev.at, None, stage, status, ev.seq))
        self.status, self.stage = status, stage

    def end_open(self, ev: AuditEvent, how: str) -> None:
        for c in self.open:
            c.ended = {"how": how, "at": _iso(ev.at), "seq": ev.seq, "actor": ev.actor,
                       "after_seconds": _secs(ev.at - c.at)}
        self.open = []

    def sla_seconds(self) -> float | None:
        esc = (self.plan or {}).get("escalation") or {}
        try:
            return parse_duration(str(esc.get("ack_within"))).total_seconds()
        except ValueError:
            return None

    def feed(self, ev: AuditEvent) -> None:
        self.events.append(ev)
        p = ev.payload
        a = ev.action
        if a == "started":
            plan = p.get("plan")
            if isinstance(plan, dict):
                self.plan = plan
                self.plans[ev.plan_hash] = plan
                stages = plan.get("stages") or []
                self.stage = str(stages[0].get("name")) if stages else ev.stage
            self.plan_name = str(p.get("plan_name") or (self.plan or {}).get("name") or "")
            self.move(ev, "awaiting_approval", ev.stage or self.stage)
        elif a == "start_refused":
            self.final = ev
            self.move(ev, "aborted", ev.stage)
        elif a == "awaiting_approval":
            if ev.stage:
                self.awaiting_since[ev.stage] = ev.at
            self.move(ev, "awaiting_approval", ev.stage)
        elif a == "approved":
            since = self.awaiting_since.get(ev.stage or "")
            self.approvals.append({
                "seq": ev.seq, "at": _iso(ev.at), "stage": ev.stage, "role": ev.role, "actor": ev.actor,
                "entry": p.get("entry"), "comment": ev.reason,
                "wait_seconds": _secs(ev.at - since) if since is not None else None,
            })
        elif a == "stage_entered":
            if ev.stage and ev.stage not in self.entered:
                self.entered.append(ev.stage)
            self.move(ev, "soaking", ev.stage)
        elif a.startswith("contained_"):
            self.on_containment(ev, a.removeprefix("contained_"))
        elif a == "rejected":
            c = _Containment(ev.seq, "reject", ev.at, ev.actor, ev.reason, ev.stage, [], None)
            self.containments.append(c)
            self.open.append(c)
            if self.status not in ("held", "rolled_back"):
                self.move(ev, "held", ev.stage)
        elif a == "resumed":
            self.on_resume(ev)
        elif a == "awaiting_handoff":
            self.move(ev, "awaiting_handoff", ev.stage)
        elif a in FINAL:
            self.final = ev
            self.end_open(ev, a)
            for esc in self.escalations.values():
                if esc.ack is None and esc.ended is None:
                    esc.ended = {"how": f"closed: rollout {a}", "at": _iso(ev.at), "seq": ev.seq,
                                 "after_seconds": _secs(ev.at - esc.opened_at)}
                    esc.seqs.append(ev.seq)
            self.move(ev, a, ev.stage)
        elif a == "breach":
            self.on_breach(ev)
        elif a == "escalation_page":
            self.on_page(ev)
        elif a == "escalation_acknowledged":
            self.on_ack(ev)
        elif a == "escalation_replaced":
            raw = p.get("escalation") or {}
            old = self.escalations.get(int(raw.get("id", -1))) if isinstance(raw, dict) else None
            if old is not None and old.ack is None and old.ended is None:
                old.ended = {"how": "replaced by a stricter containment", "at": _iso(ev.at), "seq": ev.seq,
                             "after_seconds": _secs(ev.at - old.opened_at)}
                old.seqs.append(ev.seq)
        elif a == "window_started":
            self.running[ev.stage or ""] = {"seq": ev.seq, "stage": ev.stage,
                                            "started_at": p.get("window_started_at"),
                                            "ends_at": p.get("window_ends_at")}
        elif a == "window_summary":
            self.on_window(ev)
        elif a == "handoff_acknowledged":
            self.handoffs.append({"seq": ev.seq, "at": _iso(ev.at), "stage": ev.stage, "item": p.get("item"),
                                  "actor": ev.actor, "role": ev.role, "comment": ev.reason})
        elif a.startswith("amendment_"):
            self.on_amendment(ev)
        self.prev = ev

    def on_containment(self, ev: AuditEvent, kind: str) -> None:
        p = ev.payload
        frozen = p.get("note") == "frozen while rolled back"
        c = _Containment(ev.seq, kind + (" (frozen while rolled back)" if frozen else ""), ev.at, ev.actor,
                         ev.reason, ev.stage, [str(t) for t in p.get("thresholds") or []],
                         p.get("breach") if isinstance(p.get("breach"), int) else None)
        if kind == "rollback" and not frozen:  # the row names the stage rolled back to; the one left is voided
            prev = self.prev
            left = prev.payload.get("from") if prev is not None and prev.action == "approvals_voided" else None
            c.from_stage = str(left) if left else ev.stage
        if not frozen:
            for o in self.open:
                o.ended = {"how": f"became {kind}", "at": _iso(ev.at), "seq": ev.seq, "actor": ev.actor,
                           "after_seconds": _secs(ev.at - o.at)}
            self.open = []
            self.move(ev, "rolled_back" if kind == "rollback" else "held", ev.stage)
        self.containments.append(c)
        self.open.append(c)

    def on_resume(self, ev: AuditEvent) -> None:
        p = ev.payload
        self.resumes.append({"seq": ev.seq, "at": ev.at, "actor": ev.actor})
        self.end_open(ev, f"resumed by {ev.actor}")
        esc_id = p.get("escalation_id")
        esc = self.escalations.get(esc_id) if isinstance(esc_id, int) else None
        if esc is not None and esc.ack is None and esc.ended is None:
            esc.ack = {"actor": ev.actor, "at": _iso(ev.at), "seq": ev.seq, "via": "resume",
                       "after_seconds": _secs(ev.at - esc.opened_at)}
            esc.seqs.append(ev.seq)
        prev = self.prev
        if prev is not None and prev.action == "awaiting_approval" and prev.at == ev.at:
            return  # resumed to awaiting_approval (recorded just before)
        self.move(ev, "soaking", ev.stage)

    def on_breach(self, ev: AuditEvent) -> None:
        rec = ev.payload.get("breach") or {}
        if not isinstance(rec, dict):
            return
        evidence = rec.get("evidence") or {}
        parts = evidence.get("breaches") if isinstance(evidence.get("breaches"), list) else None
        for part in parts or [evidence]:
            if not isinstance(part, dict):
                continue
            name = part.get("threshold") or rec.get("threshold") or "(unnamed)"
            self.breaches.append({
                "seq": ev.seq, "at": _iso(ev.at), "id": rec.get("id"), "stage": rec.get("stage") or ev.stage,
                "threshold": str(name), "value": part.get("value", rec.get("value")),
                "max": part.get("max"), "min": part.get("min"), "for": part.get("for"),
                "evaluated_at": part.get("evaluated_at") or part.get("observed_at") or rec.get("observed_at"),
                "source": rec.get("source"), "action": rec.get("action"), "applied": bool(rec.get("applied")),
                "note": rec.get("note") or None, "plan_hash": ev.plan_hash,
            })

    def on_page(self, ev: AuditEvent) -> None:
        p = ev.payload
        esc_id = int(p.get("escalation_id") or 0)
        esc = self.escalations.get(esc_id)
        if esc is None:
            esc = self.escalations[esc_id] = _Escalation(
                esc_id, ev.at, str(p.get("reason") or "") or None, self.sla_seconds(),
                self.containments[-1].seq if self.containments else None,
            )
        esc.pages.append({"seq": ev.seq, "at": _iso(ev.at), "level": p.get("level"),
                          "roles": p.get("roles") or [], "recipients": p.get("recipients") or [],
                          "late_by_seconds": p.get("late_by") or 0})
        esc.seqs.append(ev.seq)

    def on_ack(self, ev: AuditEvent) -> None:
        p = ev.payload
        esc_id = int(p.get("escalation_id") or 0)
        esc = self.escalations.get(esc_id)
        if esc is None:  # acknowledged by the actor who contained: no page sent
            esc = self.escalations[esc_id] = _Escalation(
                esc_id, ev.at, self.containments[-1].reason if self.containments else None, self.sla_seconds(),
                self.containments[-1].seq if self.containments else None,
            )
        if esc.ack is None:
            esc.ack = {"actor": ev.actor, "at": _iso(ev.at), "seq": ev.seq,
                       "via": "auto (the actor who contained)" if p.get("auto") else "acknowledge",
                       "after_seconds": _secs(ev.at - esc.opened_at)}
            esc.seqs.append(ev.seq)

    def on_window(self, ev: AuditEvent) -> None:
        p = ev.payload
        stage = p.get("stage") or ev.stage
        for key, run in list(self.running.items()):
            # the window_started row names the window's own stage (a rollback summarises the
            # window it interrupts after moving the stage back)
            if _at(run["started_at"]) == _at(p.get("started_at")):
                stage = run["stage"] or stage
                del self.running[key]
        ths: dict[str, Any] = {}
        for name, t in (p.get("thresholds") or {}).items():
            if not isinstance(t, dict):
                continue
            ths[name] = {k: t.get(k) for k in ("evaluations", "with_data", "failing", "no_data", "min", "max",
                                                "last", "limit_max", "limit_min", "coverage")}
            ths[name]["samples"] = [s for s in t.get("samples") or [] if isinstance(s, list) and len(s) == 2]
            ths[name]["failing_values"] = [s for s in t.get("failing_values") or [] if isinstance(s, list)]
        self.windows.append({"seq": ev.seq, "stage": stage, "outcome": p.get("outcome"),
                             "started_at": p.get("started_at"), "ended_at": p.get("ended_at"),
                             "expected": p.get("expected"), "thresholds": ths})

    def on_amendment(self, ev: AuditEvent) -> None:
        p = ev.payload
        if ev.action == "amendment_proposed":
            h = str(p.get("plan_hash"))
            if isinstance(p.get("plan"), dict):
                self.plans[h] = p["plan"]
            if p.get("replaces") in self.amendments:
                self.amendments[str(p["replaces"])]["outcome"] = f"replaced at seq {ev.seq}"
            self.amendments[h] = {"plan_hash": h, "proposed_seq": ev.seq, "proposed_at": _iso(ev.at),
                                  "proposed_by": ev.actor, "reason": ev.reason, "approvals": [],
                                  "outcome": "pending", "applied_seq": None, "applied_at": None,
                                  "previous": ev.plan_hash, "window_restarted": None, "diff": [],
                                  "_proposed": ev.at}
            self.amendment_order.append(h)
        elif ev.action == "amendment_approved":
            am = self.amendments.get(str(p.get("amendment")))
            if am is not None:
                am["approvals"].append({"seq": ev.seq, "role": ev.role, "actor": ev.actor,
                                        "wait_seconds": _secs(ev.at - am["_proposed"])})
        elif ev.action == "amendment_applied":
            h = str(p.get("plan_hash"))
            am = self.amendments.get(h)
            previous = str(p.get("previous") or "")
            if am is not None:
                am.update(outcome="applied", applied_seq=ev.seq, applied_at=_iso(ev.at), previous=previous,
                          window_restarted=p.get("window_restarted"), voided=p.get("voided") or [])
                am["diff"] = plan_diff(self.plans.get(previous) or self.plan or {}, self.plans.get(h) or {})
            if h in self.plans:
                self.plan = self.plans[h]

    # -- the report

    def finish(self, since: datetime | None) -> dict[str, Any]:
        first_at = self.events[0].at if self.events else self.now
        end = self.final.at if self.final is not None else max(self.now, self.events[-1].at if self.events else self.now)
        start = max(since, first_at) if since is not None else first_at
        if start > end:
            start = end
        if self.segments:
            self.segments[-1].end = end

        def in_period(at: object) -> bool:
            t = _at(at)
            return t is not None and start <= t <= end

        def clip(a: datetime, b: datetime) -> float:
            lo, hi = max(a, start), min(b, end)
            return max(0.0, _secs(hi - lo))

        by_stage: dict[str, float] = {}
        by_status: dict[str, float] = {}
        timeline = []
        for seg in self.segments:
            seg_end = seg.end or end
            d = clip(seg.start, seg_end)
            if seg_end <= start and seg.start < start:
                continue  # wholly before the period
            if seg.status not in FINAL:
                by_stage[seg.stage or "-"] = by_stage.get(seg.stage or "-", 0.0) + d
                by_status[seg.status] = by_status.get(seg.status, 0.0) + d
            timeline.append({"seq": seg.seq, "from": _iso(max(seg.start, start)), "to": _iso(min(seg_end, end)),
                             "stage": seg.stage, "status": seg.status, "seconds": d})
        stage_order = [str(s.get("name")) for s in (self.plan or {}).get("stages", []) or []]
        stages = [{"stage": n, "seconds": by_stage[n]} for n in stage_order if n in by_stage]
        stages += [{"stage": n, "seconds": v} for n, v in by_stage.items() if n not in stage_order]
        statuses = [{"status": n, "seconds": by_status[n]} for n in STATUSES if n in by_status]

        approvals = [x for x in self.approvals if in_period(x["at"])]
        by_role: dict[str, dict[str, Any]] = {}
        for x in approvals:
            r = by_role.setdefault(str(x["role"]), {"role": x["role"], "count": 0, "waits": [], "seqs": []})
            r["count"] += 1
            r["seqs"].append(x["seq"])
            if x["wait_seconds"] is not None:
                r["waits"].append(x["wait_seconds"])
        for r in by_role.values():
            w = r.pop("waits")
            r["mean_wait_seconds"] = round(sum(w) / len(w), 3) if w else None
            r["max_wait_seconds"] = max(w) if w else None

        breaches = [x for x in self.breaches if in_period(x["at"])]
        by_threshold: dict[str, list[dict[str, Any]]] = {}
        cont_by_breach = {c.breach_id: c for c in self.containments if c.breach_id is not None}
        for x in breaches:
            c = cont_by_breach.get(x["id"]) if x["applied"] else None
            x["containment_seq"] = c.seq if c else None
            x["ended"] = c.ended if c else None
            by_threshold.setdefault(x["threshold"], []).append(x)

        containments = []
        for c in self.containments:
            ended_at = _at(c.ended["at"]) if c.ended else None
            if not in_period(_iso(c.at)) and not (ended_at is not None and ended_at >= start):
                continue
            containments.append({
                "seq": c.seq, "kind": c.kind, "at": _iso(c.at), "actor": c.actor, "reason": c.reason,
                "stage": c.stage, "from_stage": c.from_stage, "thresholds": c.thresholds, "breach": c.breach_id,
                "ended": c.ended or {"how": "still open", "at": None, "seq": None, "actor": None,
                                     "after_seconds": _secs(end - c.at)},
            })

        escalations = []
        for esc in sorted(self.escalations.values(), key=lambda e: e.id):
            closed_at = _at((esc.ack or esc.ended or {}).get("at"))
            if not in_period(_iso(esc.opened_at)) and not (closed_at is not None and closed_at >= start):
                continue
            if esc.ack is not None:
                waited = float(esc.ack["after_seconds"])
            elif esc.ended is not None:
                waited = float(esc.ended["after_seconds"])
            else:
                waited = _secs(end - esc.opened_at)
            missed = esc.sla_seconds is not None and waited > esc.sla_seconds
            escalations.append({
                "id": esc.id, "opened_at": _iso(esc.opened_at), "reason": esc.reason,
                "containment_seq": esc.containment_seq, "sla_seconds": esc.sla_seconds,
                "pages_sent": len(esc.pages), "pages": esc.pages,
                "paged": sorted({str(r) for pg in esc.pages for r in pg["recipients"]}),
                "acknowledged": esc.ack, "ended": esc.ended,
                "time_to_acknowledge_seconds": float(esc.ack["after_seconds"]) if esc.ack else None,
                "sla_met": not missed, "seqs": esc.seqs,
            })

        windows = [w for w in self.windows if in_period(w["ended_at"])]
        running = [w for w in self.running.values() if not self.final]
        for w in windows:
            w_start, w_end = _at(w["started_at"]), _at(w["ended_at"])
            marks_b = []
            for x in self.breaches:
                t = _at(x["evaluated_at"]) or _at(x["at"])
                if t is not None and w_start is not None and w_end is not None and w_start <= t <= w_end \
                        and x["stage"] == w["stage"]:
                    marks_b.append({"threshold": x["threshold"], "at": _iso(t), "value": x["value"],
                                    "seq": x["seq"], "applied": x["applied"]})
            marks_h = [{"kind": c.kind, "at": _iso(c.at), "seq": c.seq} for c in self.containments
                       if w_start is not None and w_end is not None and w_start <= c.at <= w_end]
            w["breaches"] = marks_b
            w["holds"] = marks_h

        handoffs = [h for h in self.handoffs if in_period(h["at"])]
        taken = {(h["stage"], h["item"]) for h in self.handoffs}
        open_items = [
            {"stage": st.get("name"), "item": h.get("item"), "to": h.get("to")}
            for st in (self.plan or {}).get("stages", []) or [] if st.get("name") in self.entered
            for h in st.get("handoff", []) or [] if (st.get("name"), h.get("item")) not in taken
        ]

        amendments = []
        for h in self.amendment_order:
            am = {k: v for k, v in self.amendments[h].items() if not k.startswith("_")}
            if in_period(am["proposed_at"]) or in_period(am["applied_at"]):
                amendments.append(am)

        status = self.status or "unknown"
        review: dict[str, Any] = {
            "rollout_id": self.rollout_id,
            "plan_name": self.plan_name,
            "plan_hash": self.events[-1].plan_hash if self.events else None,
            "status": status,
            "stage": self.stage,
            "closed": self.final is not None,
            "period": {"from": _iso(start), "to": _iso(end), "since": _iso(since), "seconds": _secs(end - start)},
            "rows": {"count": len(self.events), "first_seq": self.events[0].seq if self.events else None,
                     "last_seq": self.events[-1].seq if self.events else None},
            "time_in_stage": stages,
            "time_in_status": statuses,
            "timeline": timeline,
            "approvals": {"by_role": sorted(by_role.values(), key=lambda r: str(r["role"])), "given": approvals},
            "breaches": {"count": len(breaches), "by_threshold": by_threshold},
            "containments": containments,
            "escalations": escalations,
            "windows": windows,
            "running_windows": running,
            "handoff": {"taken": handoffs, "open": open_items},
            "amendments": amendments,
            "rules": {k: {"verdict": v, "rule": text} for k, (v, text) in RULES.items()},
        }
        review["suggestions"] = _suggest(review, self)
        order = [VERDICT_ORDER[s["verdict"]] for s in review["suggestions"]]
        review["verdict"] = {v: k for k, v in VERDICT_ORDER.items()}[max(order)] if order else "keep"
        return review


def _suggest(review: dict[str, Any], b: _Builder) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(rule: str, text: str, seqs: Iterable[int]) -> None:
        out.append({"verdict": RULES[rule][0], "rule": rule, "text": text, "seqs": sorted(set(seqs))})

    rollbacks = [c for c in review["containments"] if c["kind"] == "rollback"]
    if rollbacks:
        what = "; ".join(f"seq {c['seq']} from {c['from_stage'] or c['stage'] or '-'} to {c['stage'] or '-'}: "
                         f"{c['reason']}" for c in rollbacks)
        add("rollback", f"stop and review: rolled back {len(rollbacks)} time{'s' * (len(rollbacks) != 1)} ({what})",
            [c["seq"] for c in rollbacks])
    if review["status"] == "aborted" and b.final is not None:
        add("aborted", f"stop: the rollout was aborted ({b.final.reason or 'no reason given'})", [b.final.seq])

    # thresholds breached and resumed without change
    for name, items in sorted(review["breaches"]["by_threshold"].items()):
        groups: dict[str, list[dict[str, Any]]] = {}
        for x in items:
            if not x["applied"] or not x["ended"] or not str(x["ended"]["how"]).startswith("resumed"):
                continue
            definition = _threshold_defs(b.plans.get(x["plan_hash"])).get((str(x["stage"]), name), "")
            groups.setdefault(definition, []).append(x)
        for group in groups.values():
            if len(group) > RESUMED_UNCHANGED_LIMIT:
                add("threshold_resumed_unchanged",
                    f"adjust threshold {name}: breached and resumed without change {len(group)} times",
                    [x["seq"] for x in group] + [int(x["ended"]["seq"]) for x in group])

    for esc in review["escalations"]:
        if esc["sla_met"] or esc["sla_seconds"] is None:
            continue
        took = esc["time_to_acknowledge_seconds"]
        how = (f"acknowledged after {span(timedelta(seconds=took))}" if took is not None
               else "never acknowledged")
        add("sla_missed",
            f"review the escalation chain: escalation {esc['id']} ({esc['reason'] or '-'}) {how}, "
            f"SLA {span(timedelta(seconds=esc['sla_seconds']))}, {esc['pages_sent']} pages to "
            f"{', '.join(esc['paged']) or 'nobody'}",
            esc["seqs"])

    short = []
    for w in review["windows"]:
        for name, t in w["thresholds"].items():
            if (t.get("coverage") is not None and t["coverage"] < COVERAGE_MIN) or w["outcome"] == "insufficient data":
                if w["outcome"] != "interrupted":
                    short.append((w, name))
    if short:
        add("coverage_short",
            "fix the metrics: " + "; ".join(f"{n} in {w['stage']} window ending {w['ended_at']} "
                                            f"({(w['thresholds'][n].get('coverage') or 0):.0%})" for w, n in short),
            [w["seq"] for w, _ in short])

    for r in review["approvals"]["by_role"]:
        mean = r["mean_wait_seconds"]
        if mean is not None and mean > SLOW_APPROVAL.total_seconds():
            add("slow_approvals", f"review approvers of {r['role']}: approvals waited "
                                  f"{span(timedelta(seconds=mean))} on average", r["seqs"])

    breached = set(review["breaches"]["by_threshold"])
    quiet: dict[str, list[dict[str, Any]]] = {}
    for w in review["windows"]:
        for name, t in w["thresholds"].items():
            quiet.setdefault(name, []).append({"w": w, "t": t})
    for name, ws in sorted(quiet.items()):
        if name in breached:
            continue
        judged = [x for x in ws if x["w"]["outcome"] != "interrupted"]
        if judged and all((x["t"].get("coverage") or 0) >= COVERAGE_MIN for x in judged):
            add("threshold_quiet", f"keep threshold {name}: no breach, coverage at least {COVERAGE_MIN:.0%} "
                                   f"in {len(judged)} judged window{'s' * (len(judged) != 1)}",
                [x["w"]["seq"] for x in judged])

    if not any(s["verdict"] != "keep" for s in out):
        last = [b.final.seq] if b.final is not None else ([b.events[-1].seq] if b.events else [])
        add("clean", "keep: " + RULES["clean"][1].split(": ", 1)[1], last + [w["seq"] for w in review["windows"]])
    return out


# ---- formatting helpers -----------------------------------------------------------------


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return span(timedelta(seconds=seconds))


def _when(iso: object) -> str:
    t = _at(iso)
    return t.strftime("%Y-%m-%d %H:%M UTC") if t is not None else "-"


def _num(v: object) -> str:
    if v is None:
        return "no data"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _limit(x: dict[str, Any]) -> str:
    parts = []
    if x.get("max") is not None:
        parts.append(f"max {_num(x['max'])}")
    if x.get("min") is not None:
        parts.append(f"min {_num(x['min'])}")
    return ", ".join(parts) or "-"


def _cell(v: object) -> str:
    return str(v if v is not None else "-").replace("|", "\\|").replace("\n", " ")


def _seqs(seqs: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seqs)


def _diff_value(v: object) -> str:
    text = json.dumps(v, sort_keys=True, ensure_ascii=False) if not isinstance(v, str) else v
    return text if len(text) <= 120 else text[:117] + "..."


# ---- Markdown -------------------------------------------------------------------------------


def render_markdown(r: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    w(f"# Review: {r['rollout_id']}\n")
    w(f"- **Verdict**: **{r['verdict']}**")
    w(f"- **Status**: {r['status']} (stage {r['stage'] or '-'}){' — closed' if r['closed'] else ''}")
    w(f"- **Period**: {_when(r['period']['from'])} to {_when(r['period']['to'])} ({_dur(r['period']['seconds'])})")
    w(f"- **Rows**: {r['rows']['count']} (seq {r['rows']['first_seq']}..{r['rows']['last_seq']})\n")

    w("## Summary: keep / adjust / stop\n")
    w("| Verdict | Suggestion | Rows (seq) |\n|---|---|---|")
    for s in r["suggestions"]:
        w(f"| {s['verdict']} | {_cell(s['text'])} | {_seqs(s['seqs'])} |")
    w("\nRules: " + "; ".join(f"*{k}* ({v['verdict']}): {v['rule']}" for k, v in r["rules"].items()) + ".\n")

    w("## Time in each stage\n\n| Stage | Time |\n|---|---|")
    for x in r["time_in_stage"]:
        w(f"| {x['stage']} | {_dur(x['seconds'])} |")
    w("\n## Time in each status\n\n| Status | Time |\n|---|---|")
    for x in r["time_in_status"]:
        w(f"| {x['status']} | {_dur(x['seconds'])} |")

    w("\n## Approvals: waiting time by role\n\n| Role | Approvals | Mean wait | Longest wait | Rows |\n|---|---|---|---|---|")
    for x in r["approvals"]["by_role"]:
        w(f"| {x['role']} | {x['count']} | {_dur(x['mean_wait_seconds'])} | {_dur(x['max_wait_seconds'])} | {_seqs(x['seqs'])} |")
    w("\n| Stage | Role | Approver | Waited | At | Seq |\n|---|---|---|---|---|---|")
    for x in r["approvals"]["given"]:
        w(f"| {x['stage']} | {x['role']} | {x['actor']} | {_dur(x['wait_seconds'])} | {_when(x['at'])} | {x['seq']} |")

    w(f"\n## Breaches by threshold ({r['breaches']['count']})\n")
    for name, items in r["breaches"]["by_threshold"].items():
        w(f"### {name}\n\n| At | Stage | Value | Limit | Action | Applied | How it ended | Seq |\n|---|---|---|---|---|---|---|---|")
        for x in items:
            ended = x["ended"]["how"] if x.get("ended") else (x["note"] or "-")
            w(f"| {_when(x['at'])} | {x['stage']} | {_num(x['value'])} | {_limit(x)} | {x['action']} | "
              f"{'yes' if x['applied'] else 'no'} | {_cell(ended)} | {x['seq']} |")
        w("")

    w("## Containments and how they ended\n\n| Kind | At | By | Reason | Ended | After | Seq |\n|---|---|---|---|---|---|---|")
    for c in r["containments"]:
        e = c["ended"]
        ended = e["how"] + (f" (seq {e['seq']})" if e.get("seq") else "")
        w(f"| {c['kind']} | {_when(c['at'])} | {c['actor'] or '-'} | {_cell(c['reason'])} | {_cell(ended)} | "
          f"{_dur(e.get('after_seconds'))} | {c['seq']} |")

    w("\n## Escalations: time to acknowledge against the SLA\n\n"
      "| # | Opened | Reason | Pages sent | Paged | Acknowledged by | Time to acknowledge | SLA | Met | Rows |\n"
      "|---|---|---|---|---|---|---|---|---|---|")
    for e in r["escalations"]:
        ack = e["acknowledged"]
        who = f"{ack['actor']} ({ack['via']})" if ack else (e["ended"]["how"] if e["ended"] else "open")
        w(f"| {e['id']} | {_when(e['opened_at'])} | {_cell(e['reason'])} | {e['pages_sent']} | {', '.join(e['paged']) or '-'} | "
          f"{_cell(who)} | {_dur(e['time_to_acknowledge_seconds'])} | {_dur(e['sla_seconds'])} | "
          f"{'yes' if e['sla_met'] else '**MISSED**'} | {_seqs(e['seqs'])} |")

    w("\n## Coverage of every window\n\n| Stage | Window | Outcome | Threshold | Evaluations | With data | Failing | Coverage | Min | Max | Seq |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|")
    for win in r["windows"]:
        span_text = f"{_when(win['started_at'])} → {_when(win['ended_at'])}"
        if not win["thresholds"]:
            w(f"| {win['stage']} | {span_text} | {win['outcome']} | (none) | - | - | - | - | - | - | {win['seq']} |")
        for name, t in win["thresholds"].items():
            cov = t.get("coverage")
            w(f"| {win['stage']} | {span_text} | {win['outcome']} | {name} | {t.get('evaluations')} | "
              f"{t.get('with_data')} | {t.get('failing')} | {'-' if cov is None else f'{cov:.0%}'} | "
              f"{_num(t.get('min'))} | {_num(t.get('max'))} | {win['seq']} |")
    for run in r["running_windows"]:
        w(f"| {run['stage']} | {_when(run['started_at'])} → (running, ends {_when(run['ends_at'])}) | running | - | - | - | - | - | - | - | {run['seq']} |")

    w("\n## Handoff\n\n| Stage | Item | Taken by | Role | At | Seq |\n|---|---|---|---|---|---|")
    for h in r["handoff"]["taken"]:
        w(f"| {h['stage']} | {_cell(h['item'])} | {h['actor']} | {h['role'] or '-'} | {_when(h['at'])} | {h['seq']} |")
    for h in r["handoff"]["open"]:
        w(f"| {h['stage']} | {_cell(h['item'])} | **not taken** (to {h['to']}) | - | - | - |")

    w("\n## Amendments\n")
    for a in r["amendments"]:
        w(f"### {a['plan_hash'][:12]} — {a['outcome']}\n")
        w(f"- Proposed by {a['proposed_by']} at {_when(a['proposed_at'])} (seq {a['proposed_seq']}): {a['reason'] or '-'}")
        for ap in a["approvals"]:
            w(f"- Approved by {ap['actor']} ({ap['role']}) after {_dur(ap['wait_seconds'])} (seq {ap['seq']})")
        if a["applied_seq"]:
            w(f"- Applied at {_when(a['applied_at'])} (seq {a['applied_seq']}); window restarted: "
              f"{'yes' if a['window_restarted'] else 'no'}")
        if a["diff"]:
            w("\n| Field | Before | After |\n|---|---|---|")
            for d in a["diff"]:
                w(f"| `{d['path']}` | {_cell(_diff_value(d['old']))} | {_cell(_diff_value(d['new']))} |")
        w("")
    if not r["amendments"]:
        w("None.\n")
    return "\n".join(out).rstrip() + "\n"


# ---- HTML --------------------------------------------------------------------------------

STATUS_COLOURS = {
    "awaiting_approval": "#9aa5b1", "soaking": "#2f9e44", "held": "#f08c00", "awaiting_handoff": "#1c7ed6",
    "rolled_back": "#e03131", "completed": "#495057", "aborted": "#212529",
}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1040px;color:#1f2933;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d9e2ec;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f0f4f8}
.verdict{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.keep{background:#2f9e44}.adjust{background:#f08c00}.stop{background:#e03131}
.meta{color:#52606d}.missed{color:#e03131;font-weight:600}.met{color:#2f9e44}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #d9e2ec;border-radius:6px;padding:6px;margin:0;width:490px}
.plot figcaption{font-size:12px;color:#52606d}svg text{font:11px system-ui,sans-serif;fill:#3e4c59}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
code{font-size:12px}
"""


def _e(v: object) -> str:
    return html.escape(str(v if v is not None else "-"))


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Cells are HTML already escaped by the caller."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _timeline_svg(r: dict[str, Any]) -> str:
    segs = r["timeline"]
    t0, t1 = _at(r["period"]["from"]), _at(r["period"]["to"])
    if not segs or t0 is None or t1 is None or t1 <= t0:
        return ""
    stages = [x["stage"] for x in r["time_in_stage"]]
    for s in segs:
        if s["stage"] not in stages:
            stages.append(s["stage"])
    left, width, lane = 130, 830, 26
    height = 30 + lane * len(stages) + 24
    total = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return left + width * (t - t0).total_seconds() / total

    parts = [f'<svg role="img" aria-label="time in stage" width="{left + width + 20}" height="{height}" '
             f'viewBox="0 0 {left + width + 20} {height}">']
    for i, st in enumerate(stages):
        y = 20 + i * lane
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{_e(st)}</text>')
        parts.append(f'<line x1="{left}" y1="{y + lane - 2}" x2="{left + width}" y2="{y + lane - 2}" stroke="#e4e7eb"/>')
    for s in segs:
        a, b = _at(s["from"]), _at(s["to"])
        if a is None or b is None or s["status"] in FINAL:
            continue
        i = stages.index(s["stage"])
        y = 20 + i * lane + 3
        w = max(1.0, x(b) - x(a))
        colour = STATUS_COLOURS.get(s["status"], "#868e96")
        parts.append(f'<rect x="{x(a):.1f}" y="{y}" width="{w:.1f}" height="{lane - 8}" fill="{colour}">'
                     f'<title>{_e(s["stage"])}: {_e(s["status"])} {_e(_dur(s["seconds"]))} (seq {s["seq"]})</title></rect>')
    ticks = 6
    for k in range(ticks + 1):
        t = t0 + timedelta(seconds=total * k / ticks)
        anchor = "start" if k == 0 else ("end" if k == ticks else "middle")
        parts.append(f'<text x="{x(t):.1f}" y="{height - 4}" text-anchor="{anchor}">{_e(t.strftime("%b %d %H:%M"))}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{_e(n)}</span>'
                     for n, c in STATUS_COLOURS.items() if n not in FINAL)
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _threshold_svg(win: dict[str, Any], name: str, t: dict[str, Any]) -> str:
    pts = [(_at(a), v) for a, v in t.get("samples") or []]
    fails = [(_at(a), v) for a, v in t.get("failing_values") or []]
    t0, t1 = _at(win["started_at"]), _at(win["ended_at"])
    if t0 is None or t1 is None or t1 <= t0:
        return ""
    values = [float(v) for _, v in pts + fails if isinstance(v, int | float)]
    limits = [float(v) for v in (t.get("limit_max"), t.get("limit_min")) if isinstance(v, int | float)]
    lo = min(values + limits) if values or limits else 0.0
    hi = max(values + limits) if values or limits else 1.0
    if hi == lo:
        hi, lo = hi + 1.0, lo - 1.0 if lo != 0 else 0.0
    pad = (hi - lo) * 0.08
    padded = lo - pad
    if lo >= 0 > padded:  # values that cannot go below zero: the axis starts at zero
        padded = 0.0
    lo, hi = padded, hi + pad
    W, H, L, T, B = 480, 170, 52, 12, 24
    pw, ph = W - L - 10, H - T - B
    total = (t1 - t0).total_seconds()

    def x(at: datetime) -> float:
        return L + pw * min(max((at - t0).total_seconds() / total, 0.0), 1.0)

    def y(v: float) -> float:
        return T + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg role="img" aria-label="{_e(name)} in window" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
             f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="#f8fafc" stroke="#d9e2ec"/>']
    for k in range(3):
        v = lo + (hi - lo) * k / 2
        parts.append(f'<text x="{L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{_e(f"{v:.3g}")}</text>')
    for lim, label in ((t.get("limit_max"), "max"), (t.get("limit_min"), "min")):
        if isinstance(lim, int | float):
            parts.append(f'<line x1="{L}" y1="{y(float(lim)):.1f}" x2="{L + pw}" y2="{y(float(lim)):.1f}" '
                         f'stroke="#e03131" stroke-dasharray="5 3"><title>{label} {lim}</title></line>')
            parts.append(f'<text x="{L + 4}" y="{y(float(lim)) - 3:.1f}" '
                         f'style="fill:#e03131">{label} {_e(_num(lim))}</text>')
    for h in win.get("holds") or []:
        at = _at(h["at"])
        if at is not None:
            parts.append(f'<line x1="{x(at):.1f}" y1="{T}" x2="{x(at):.1f}" y2="{T + ph}" stroke="#f08c00" '
                         f'stroke-width="2"><title>{_e(h["kind"])} (seq {h["seq"]})</title></line>')
            parts.append(f'<text x="{x(at) - 3:.1f}" y="{T + 11}" text-anchor="end" style="fill:#f08c00">{_e(h["kind"].split()[0])}</text>')
    line: list[str] = []
    paths: list[str] = []
    for at, v in pts:
        if at is None or not isinstance(v, int | float):
            if len(line) > 1:
                paths.append(" ".join(line))
            line = []
            continue
        line.append(f"{x(at):.1f},{y(float(v)):.1f}")
    if line:
        paths.append(" ".join(line))
    for p in paths:
        parts.append(f'<polyline fill="none" stroke="#1c7ed6" stroke-width="1.5" points="{p}"/>')
    for at, v in pts:
        if at is not None and isinstance(v, int | float) and len(pts) <= 80:
            parts.append(f'<circle cx="{x(at):.1f}" cy="{y(float(v)):.1f}" r="1.8" fill="#1c7ed6"/>')
    for at, v in fails:
        if at is not None and isinstance(v, int | float):
            parts.append(f'<circle cx="{x(at):.1f}" cy="{y(float(v)):.1f}" r="3.5" fill="#e03131">'
                         f'<title>failing {_e(_num(v))} at {_e(_when(_iso(at)))}</title></circle>')
    for bm in win.get("breaches") or []:
        at = _at(bm["at"])
        if at is None or bm["threshold"] != name:
            continue
        bx = x(at)
        parts.append(f'<path d="M{bx - 6:.1f},{T + ph + 12} L{bx + 6:.1f},{T + ph + 12} L{bx:.1f},{T + ph + 2} Z" '
                     f'fill="#c92a2a"><title>breach (seq {bm["seq"]}) value {_e(_num(bm["value"]))}</title></path>')
        near_end = bx > L + pw - 50
        parts.append(f'<text x="{bx + (-9 if near_end else 9):.1f}" y="{T + ph + 12}" '
                     f'text-anchor="{"end" if near_end else "start"}" style="fill:#c92a2a">breach</text>')
    parts.append(f'<text x="{L}" y="{H - 2}">{_e(t0.strftime("%b %d %H:%M"))}</text>')
    parts.append(f'<text x="{L + pw}" y="{H - 2}" text-anchor="end">{_e(t1.strftime("%b %d %H:%M"))}</text>')
    parts.append("</svg>")
    cov = t.get("coverage")
    caption = (f"{_e(name)} · {_e(win['stage'])} · {_e(_when(win['started_at']))} → {_e(_when(win['ended_at']))} · "
               f"{_e(win['outcome'])} · coverage {'-' if cov is None else f'{cov:.0%}'} · seq {win['seq']}")
    return f'<figure class="plot">{"".join(parts)}<figcaption>{caption}</figcaption></figure>'


def render_html(r: dict[str, Any]) -> str:
    """One self-contained page: inline CSS and SVG, nothing loaded from elsewhere."""
    b: list[str] = []
    a = b.append
    a("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
    a(f"<title>Review: {_e(r['rollout_id'])}</title><style>{CSS}</style></head><body>")
    a(f"<h1>Review: {_e(r['rollout_id'])} <span class=\"verdict {_e(r['verdict'])}\">{_e(r['verdict'])}</span></h1>")
    a(f"<p class=\"meta\">Status <b>{_e(r['status'])}</b> (stage {_e(r['stage'])}){' — closed' if r['closed'] else ''} · "
      f"period {_e(_when(r['period']['from']))} → {_e(_when(r['period']['to']))} ({_e(_dur(r['period']['seconds']))}) · "
      f"{r['rows']['count']} rows, seq {_e(r['rows']['first_seq'])}..{_e(r['rows']['last_seq'])}</p>")

    a("<h2>Keep / adjust / stop</h2>")
    a(_table(["Verdict", "Suggestion", "Rows (seq)"],
             ([f'<span class="verdict {_e(s["verdict"])}">{_e(s["verdict"])}</span>', _e(s["text"]), _e(_seqs(s["seqs"]))]
              for s in r["suggestions"])))

    a("<h2>Time in stage</h2>")
    a(_timeline_svg(r))
    a(_table(["Stage", "Time"], ([_e(x["stage"]), _e(_dur(x["seconds"]))] for x in r["time_in_stage"])))
    a("<h2>Time in status</h2>")
    a(_table(["Status", "Time"], ([_e(x["status"]), _e(_dur(x["seconds"]))] for x in r["time_in_status"])))

    a("<h2>Thresholds over each window</h2><div class=\"plots\">")
    for win in r["windows"]:
        for name, t in win["thresholds"].items():
            a(_threshold_svg(win, name, t))
    a("</div>")

    a("<h2>Approvals: waiting time by role</h2>")
    a(_table(["Role", "Approvals", "Mean wait", "Longest wait", "Rows"],
             ([_e(x["role"]), _e(x["count"]), _e(_dur(x["mean_wait_seconds"])), _e(_dur(x["max_wait_seconds"])),
               _e(_seqs(x["seqs"]))] for x in r["approvals"]["by_role"])))

    a(f"<h2>Breaches by threshold ({r['breaches']['count']})</h2>")
    for name, items in r["breaches"]["by_threshold"].items():
        a(f"<h3>{_e(name)}</h3>")
        a(_table(["At", "Stage", "Value", "Limit", "Action", "Applied", "How it ended", "Seq"],
                 ([_e(_when(x["at"])), _e(x["stage"]), _e(_num(x["value"])), _e(_limit(x)), _e(x["action"]),
                   "yes" if x["applied"] else "no",
                   _e(x["ended"]["how"] if x.get("ended") else (x["note"] or "-")), _e(x["seq"])] for x in items)))

    a("<h2>Containments and how they ended</h2>")
    a(_table(["Kind", "At", "By", "Reason", "Ended", "After", "Seq"],
             ([_e(c["kind"]), _e(_when(c["at"])), _e(c["actor"]), _e(c["reason"]),
               _e(c["ended"]["how"] + (f" (seq {c['ended']['seq']})" if c["ended"].get("seq") else "")),
               _e(_dur(c["ended"].get("after_seconds"))), _e(c["seq"])] for c in r["containments"])))

    a("<h2>Escalations</h2>")
    rows = []
    for e in r["escalations"]:
        ack = e["acknowledged"]
        who = f"{ack['actor']} ({ack['via']})" if ack else (e["ended"]["how"] if e["ended"] else "open")
        met = '<span class="met">met</span>' if e["sla_met"] else '<span class="missed">MISSED</span>'
        rows.append([_e(e["id"]), _e(_when(e["opened_at"])), _e(e["reason"]), _e(e["pages_sent"]),
                     _e(", ".join(e["paged"]) or "-"), _e(who), _e(_dur(e["time_to_acknowledge_seconds"])),
                     _e(_dur(e["sla_seconds"])), met, _e(_seqs(e["seqs"]))])
    a(_table(["#", "Opened", "Reason", "Pages", "Paged", "Acknowledged by", "Time to ack", "SLA", "SLA met", "Rows"], rows))

    a("<h2>Coverage of every window</h2>")
    rows = []
    for win in r["windows"]:
        for name, t in (win["thresholds"] or {"(none)": {}}).items():
            cov = t.get("coverage")
            rows.append([_e(win["stage"]), _e(f"{_when(win['started_at'])} → {_when(win['ended_at'])}"),
                         _e(win["outcome"]), _e(name), _e(t.get("evaluations")), _e(t.get("with_data")),
                         _e(t.get("failing")), _e("-" if cov is None else f"{cov:.0%}"), _e(win["seq"])])
    a(_table(["Stage", "Window", "Outcome", "Threshold", "Evaluations", "With data", "Failing", "Coverage", "Seq"], rows))

    a("<h2>Handoff</h2>")
    rows = [[_e(h["stage"]), _e(h["item"]), _e(h["actor"]), _e(h["role"]), _e(_when(h["at"])), _e(h["seq"])]
            for h in r["handoff"]["taken"]]
    rows += [[_e(h["stage"]), _e(h["item"]), f"<b>not taken</b> (to {_e(h['to'])})", "-", "-", "-"]
             for h in r["handoff"]["open"]]
    a(_table(["Stage", "Item", "Taken by", "Role", "At", "Seq"], rows))

    a("<h2>Amendments</h2>")
    for am in r["amendments"]:
        a(f"<h3>{_e(am['plan_hash'][:12])} — {_e(am['outcome'])}</h3>")
        a(f"<p>Proposed by {_e(am['proposed_by'])} at {_e(_when(am['proposed_at']))} (seq {am['proposed_seq']}): "
          f"{_e(am['reason'])}. Approved by "
          + (", ".join(f"{_e(ap['actor'])} ({_e(ap['role'])}, after {_e(_dur(ap['wait_seconds']))})"
                       for ap in am["approvals"]) or "nobody yet")
          + (f". Applied at {_e(_when(am['applied_at']))} (seq {am['applied_seq']})." if am["applied_seq"] else ".")
          + "</p>")
        a(_table(["Field", "Before", "After"],
                 ([f"<code>{_e(d['path'])}</code>", _e(_diff_value(d["old"])), _e(_diff_value(d["new"]))]
                  for d in am["diff"])))
    if not r["amendments"]:
        a("<p>None.</p>")
    a("</body></html>\n")
    return "".join(b)
