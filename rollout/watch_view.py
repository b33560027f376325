"""What `rollout watch` shows, computed from a `status` answer and the current time.

Pure (no terminal, no clock): `watch_view(st, now, zone)` gives the parts of the live
view (stages as a progress line, window countdown, approvals by role, open breaches,
escalation level and next page, target pending); `change_line(st)` is the one line a
piped `watch` prints per change: it depends on the state only, never on the time, so
an unchanged rollout prints nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Literal

from rollout import timefmt
from rollout.status_view import awaited_stage, is_closed, open_escalation, phase, status_line

StageMark = Literal["done", "current", "exposed", "pending", "failed"]


@dataclass(frozen=True)
class StageCell:
    name: str
    mark: StageMark


@dataclass(frozen=True)
class Window:
    stage: str
    started_at: str
    ends_at: str
    fraction: float  # 0..1 of the window elapsed
    remaining: str  # "in 3h 12m"


@dataclass(frozen=True)
class RoleApproval:
    role: str
    actor: str | None  # None: still missing
    at: str | None


@dataclass
class WatchView:
    title: str
    headline: str
    exposure: str
    closed: bool
    stages: list[StageCell] = field(default_factory=list)
    window: Window | None = None
    approvals_stage: str | None = None
    approvals: list[RoleApproval] = field(default_factory=list)
    handoff: list[str] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)
    escalation: str | None = None
    target: str | None = None
    hold: str | None = None


def _scope(exp: dict[str, Any]) -> str:
    pct = exp.get("percent", 0) or 0
    segs = exp.get("segments")
    return f"{pct:g}%" + (f" of {', '.join(segs)}" if segs else "")


def stage_cells(st: dict[str, Any]) -> list[StageCell]:
    """Each stage of the plan, marked: done (left behind), current, exposed (its scope in
    force while another stage is `stage`), pending; `failed` for the stage of an abort."""
    names: list[str] = list(st.get("stages") or [st.get("stage")])
    stage = st.get("stage")
    exposed = st.get("exposure_stage")
    idx = names.index(stage) if stage in names else 0
    status = st.get("status")
    cells: list[StageCell] = []
    for i, name in enumerate(names):
        mark: StageMark
        if status == "completed":
            mark = "done"
        elif i < idx:
            mark = "exposed" if name == exposed else "done"
        elif i == idx:
            mark = "failed" if status == "aborted" else "current"
        else:
            mark = "pending"
        cells.append(StageCell(name, mark))
    return cells


def watch_view(st: dict[str, Any], now: datetime, zone: tzinfo | None = None) -> WatchView:
    closed = is_closed(st)
    view = WatchView(
        title=f"{st.get('name')} ({st.get('workflow_id')})",
        headline=f"{st.get('status')}: {phase(st)}",
        exposure=_scope(st.get("exposure") or {}),
        closed=closed,
        stages=stage_cells(st),
    )
    start, end = timefmt.parse(st.get("window_started_at")), timefmt.parse(st.get("window_ends_at"))
    if st.get("status") == "soaking" and end is not None:
        total = (end - start).total_seconds() if start is not None else 0.0
        done = (now - start).total_seconds() if start is not None else 0.0
        fraction = min(1.0, max(0.0, done / total)) if total > 0 else 0.0
        view.window = Window(
            stage=str(st.get("exposure_stage") or st.get("stage")),
            started_at=timefmt.human(start, now, zone) if start else "-",
            ends_at=timefmt.local(end, now, zone),
            fraction=fraction,
            remaining=timefmt.relative(end, now),
        )
    awaited = awaited_stage(st)
    ap = st.get("approvals") or {}
    if awaited and not closed:
        view.approvals_stage = awaited
        given = ap.get("given") or {}
        for role, rec in given.items():
            view.approvals.append(RoleApproval(role, rec.get("actor"), timefmt.human(rec.get("at"), now, zone)))
        for role in ap.get("missing") or []:
            if role not in given:
                view.approvals.append(RoleApproval(role, None, None))
    if not closed:
        view.handoff = [f"{h['item']} -> {h['to']}" for h in st.get("pending_handoff") or []]
        for b in st.get("open_breaches") or []:
            ev = b.get("evidence") or {}
            value = ev.get("value")
            seen = f", seen {b['repeats'] + 1} times" if b.get("repeats") else ""
            view.breaches.append(
                f"#{b.get('id')} {b.get('threshold') or '?'} = {value if value is not None else 'no data'} "
                f"from {ev.get('source', '?')} -> {b.get('action')}{seen}"
            )
        hold = st.get("hold")
        if hold:
            view.hold = f"{hold.get('kind')} by {hold.get('actor')} {timefmt.human(hold.get('since'), now, zone)}: {hold.get('reason')}"
    esc = open_escalation(st)
    if esc:
        pages = esc.get("pages") or []
        last = pages[-1] if pages else None
        paged = f"paged {', '.join(last['recipients'])} {timefmt.human(last['at'], now, zone)}" if last else "not paged yet"
        nxt = esc.get("next_page_at")
        view.escalation = (
            f"level {esc.get('level')}: {paged}; next page {timefmt.human(nxt, now, zone) if nxt else '-'}"
            f" unless acknowledged (rollout ack {st.get('name')} --escalation)"
        )
    tp = st.get("target_pending")
    if tp and not closed:
        view.target = (
            f"{tp.get('kind')} to {tp.get('stage') or 'zero'} pending since {timefmt.human(tp.get('since'), now, zone)}"
            f", {tp.get('attempts', 0)} attempts" + (f": {tp['last_error']}" if tp.get("last_error") else "")
        )
    return view


def change_line(st: dict[str, Any]) -> str:
    """The piped form: one line that changes only when the rollout's state does."""
    return status_line(st)
