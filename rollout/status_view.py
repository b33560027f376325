"""Readable renderings of the `status` query for people (the CLI, `watch`, the demo).

Pure: the current time and the zone to show times in are arguments. Without `now`,
times are printed as RFC 3339 UTC; with it, in local time with a relative part.

Wording rules: the headline always says which stage's scope is in force when it is
not `stage`'s ("held while awaiting approval of limited-25; pilot's scope in force"),
and a closed rollout (completed, aborted) never shows an open escalation.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from rollout import timefmt

STATUSES = (
    "awaiting_approval", "soaking", "held", "awaiting_handoff", "rolled_back", "completed", "aborted",
)  # RolloutStatus values, in the order a rollout meets them
CLOSED = ("completed", "aborted")

_PHASE = {
    "awaiting_approval": "awaiting approval of {stage}",
    "soaking": "soaking {stage}",
    "awaiting_handoff": "awaiting handoff of {stage}",
}


def _scope(exp: dict[str, Any]) -> str:
    pct = exp.get("percent", 0) or 0
    segs = exp.get("segments")
    where = f" of {', '.join(segs)}" if segs else ""
    notes = [n for n, on in (("frozen", exp.get("frozen")), ("narrowed", exp.get("narrowed"))) if on]
    return f"{pct:g}%{where}" + (f" ({', '.join(notes)})" if notes else "")


def _when(value: Any, now: datetime | None, zone: tzinfo | None) -> str:
    if now is None:
        t = timefmt.parse(value)
        return timefmt.rfc3339(t) if t is not None else ("-" if value in (None, "") else str(value))
    return timefmt.human(value, now, zone)


def is_closed(st: dict[str, Any]) -> bool:
    return st.get("status") in CLOSED


def open_escalation(st: dict[str, Any]) -> dict[str, Any] | None:
    """The escalation still waiting for an acknowledgement; never one of a closed rollout."""
    esc = st.get("escalation")
    if not esc or esc.get("acknowledged_by") or is_closed(st):
        return None
    return dict(esc)


def awaited_stage(st: dict[str, Any]) -> str | None:
    """The stage whose entry approvals are awaited (also while a hold interrupted that wait)."""
    ap = st.get("approvals") or {}
    hold = st.get("hold") or {}
    if st.get("status") == "awaiting_approval" or (
        st.get("status") == "held" and hold.get("interrupted") == "awaiting_approval"
    ):
        return str(ap.get("stage") or st.get("stage"))
    return None


def phase(st: dict[str, Any]) -> str:
    """What the rollout is doing, and whose scope is in force when that is another stage's.

    `held while awaiting approval of limited-25; pilot's scope in force`,
    `soaking pilot`, `awaiting approval of pilot; nothing exposed yet`,
    `rolled back to pilot; nothing in force (fallback path)`.
    """
    status = str(st.get("status"))
    stage = str(st.get("stage"))
    hold = st.get("hold") or {}
    if status in _PHASE:
        text = _PHASE[status].format(stage=stage)
    elif status == "held":
        interrupted = hold.get("interrupted")
        kind = hold.get("kind")
        verb = "narrowed" if kind == "narrow" else ("rejected" if kind == "reject" else "held")
        text = f"{verb} while " + _PHASE.get(str(interrupted), "at {stage}").format(stage=stage)
        if text.endswith(f"while at {stage}"):
            text = f"{verb} at {stage}"
    elif status == "rolled_back":
        text = f"rolled back to {stage}"
    else:
        text = f"{status} at {stage}"
    exposed = st.get("exposure_stage")
    exposure = st.get("exposure") or {}
    if exposed is None or (not (exposure.get("percent") or 0) and status in CLOSED):
        text += "; nothing in force" + (" (fallback path)" if status == "rolled_back" else "")
    elif exposure.get("narrowed"):
        text += f"; {exposed} narrowed to the previous stage's scope"
    elif exposed != stage:
        text += f"; {exposed}'s scope in force"
    return text


def status_line(st: dict[str, Any], now: datetime | None = None, zone: tzinfo | None = None) -> str:
    """One line per state change, for `rollout watch` piped and the demo."""
    parts = [f"{st['name']}", phase(st), f"exposure {_scope(st.get('exposure') or {})}"]
    if st.get("window_ends_at") and st.get("status") == "soaking":
        parts.append(f"window ends {_when(st['window_ends_at'], now, zone)}")
    missing = (st.get("approvals") or {}).get("missing") or []
    if awaited_stage(st) and missing:
        parts.append(f"awaiting {', '.join(missing)}")
    if st.get("status") == "awaiting_handoff" and st.get("pending_handoff"):
        parts.append("handoff: " + "; ".join(f"{h['item']} -> {h['to']}" for h in st["pending_handoff"]))
    if st.get("hold") and not is_closed(st):
        parts.append(f"reason: {st['hold']['reason']}")
    esc = open_escalation(st)
    if esc:
        parts.append(f"PAGED level {esc['level']}")
    if st.get("target_pending") and not is_closed(st):
        tp = st["target_pending"]
        parts.append(f"target pending: {tp['kind']}" + (f" ({tp['last_error']})" if tp.get("last_error") else ""))
    return " | ".join(parts)


def render_status(st: dict[str, Any], now: datetime | None = None, zone: tzinfo | None = None) -> str:
    def when(v: Any) -> str:
        return _when(v, now, zone)

    exposure = st.get("exposure") or {}
    lines = [
        f"Rollout {st['workflow_id']}  ({st['name']}, plan {st['plan_hash'][:12]})",
        f"  status:     {st['status']}: {phase(st)}",
        f"  stage:      {st['stage']} ({st.get('tier', '')})   stages: {' -> '.join(st.get('stages', []))}",
        f"  exposure:   {_scope(exposure)} from {st.get('exposure_stage') or 'nothing (fallback path)'}",
    ]
    auth = exposure.get("authority") or {}
    if auth:
        lines.append("  authority:  " + ", ".join(f"{v}={lvl}" for v, lvl in sorted(auth.items())))
    if st.get("window_ends_at"):
        lines.append(f"  window:     {when(st.get('window_started_at'))} -> {when(st['window_ends_at'])}")
    ap = st.get("approvals") or {}
    given = ap.get("given") or {}
    awaited = awaited_stage(st)
    if awaited or given:
        since = f" (awaited since {when(ap['awaiting_since'])})" if awaited and ap.get("awaiting_since") else ""
        lines.append(
            f"  approvals:  {ap.get('stage')}{since}: "
            + (", ".join(f"{r} by {g['actor']}" for r, g in given.items()) or "none yet")
            + (f"; missing {', '.join(ap.get('missing') or [])}" if awaited and ap.get("missing") else "")
        )
    for h in st.get("pending_handoff") or []:
        lines.append(f"  handoff:    open: {h['item']} -> {h['to']} ({', '.join(h['identities'])})")
    if st.get("hold") and not is_closed(st):
        h = st["hold"]
        lines.append(f"  hold:       {h['kind']} since {when(h['since'])} by {h['actor']}: {h['reason']}")
    for b in st.get("open_breaches") or []:
        ev = b.get("evidence") or {}
        lines.append(
            f"  breach:     #{b['id']} {b['threshold']} from {ev.get('source')} value={ev.get('value')} -> {b['action']}"
        )
    esc = st.get("escalation")
    if esc:
        if esc.get("acknowledged_by"):
            state = f"acknowledged by {esc['acknowledged_by']}"
        elif is_closed(st):
            state = f"closed with the rollout ({st['status']}), never acknowledged"
        else:
            state = f"OPEN, next page {when(esc.get('next_page_at'))}"
        lines.append(f"  escalation: level {esc['level']}, {state}: {esc['reason']}")
        for p in (esc.get("pages") or [])[-3:]:
            late = f" (fired {p['delay_seconds']:.0f}s late)" if p.get("delay_seconds") else ""
            lines.append(f"              paged {', '.join(p['recipients'])} at {when(p['at'])}{late}")
    if st.get("pending_amendment"):
        pa = st["pending_amendment"]
        lines.append(f"  amendment:  {pa['plan_hash'][:12]} by {pa['proposed_by']}; missing {', '.join(pa['missing'])}")
    if st.get("target_pending"):
        tp = st["target_pending"]
        lines.append(
            f"  target:     pending {tp['kind']} since {when(tp['since'])} ({tp.get('last_error') or 'in flight'})"
        )
    for r in (st.get("refused") or [])[-3:]:
        lines.append(f"  refused:    {r['action']} by {r['actor']} at {when(r.get('at'))}: {r['reason']}")
    if st.get("started_at"):
        lines.append(f"  started:    {when(st['started_at'])}")
    if st.get("final_reason"):
        lines.append(f"  result:     {st['final_reason']}")
    return "\n".join(lines)
