"""Readable renderings of the `status` query for people (the CLI, `watch`, the demo)."""

from __future__ import annotations

from typing import Any


def _scope(exp: dict[str, Any]) -> str:
    pct = exp.get("percent", 0)
    segs = exp.get("segments")
    where = f" of {', '.join(segs)}" if segs else ""
    frozen = " (frozen)" if exp.get("frozen") else ""
    return f"{pct:g}%{where}{frozen}"


def status_line(st: dict[str, Any]) -> str:
    """One line per state change, for `rollout watch`."""
    parts = [f"{st['name']}", f"stage {st['stage']}", st["status"], f"exposure {_scope(st['exposure'])}"]
    if st.get("window_ends_at"):
        parts.append(f"window ends {st['window_ends_at']}")
    missing = st.get("approvals", {}).get("missing") or []
    if st["status"] == "awaiting_approval" and missing:
        parts.append(f"awaiting {', '.join(missing)}")
    if st["status"] == "awaiting_handoff" and st.get("pending_handoff"):
        parts.append("handoff: " + "; ".join(f"{h['item']} -> {h['to']}" for h in st["pending_handoff"]))
    if st.get("hold"):
        parts.append(f"reason: {st['hold']['reason']}")
    esc = st.get("escalation")
    if esc and not esc.get("acknowledged_by"):
        parts.append(f"PAGED level {esc['level']}")
    if st.get("target_pending"):
        tp = st["target_pending"]
        parts.append(f"target pending: {tp['kind']}" + (f" ({tp['last_error']})" if tp.get("last_error") else ""))
    return " | ".join(parts)


def render_status(st: dict[str, Any]) -> str:
    lines = [
        f"Rollout {st['workflow_id']}  ({st['name']}, plan {st['plan_hash'][:12]})",
        f"  status:     {st['status']}",
        f"  stage:      {st['stage']} ({st.get('tier', '')})   stages: {' -> '.join(st.get('stages', []))}",
        f"  exposure:   {_scope(st['exposure'])} from {st['exposure_stage'] or 'nothing (fallback path)'}",
    ]
    auth = st["exposure"].get("authority") or {}
    if auth:
        lines.append("  authority:  " + ", ".join(f"{v}={lvl}" for v, lvl in sorted(auth.items())))
    if st.get("window_ends_at"):
        lines.append(f"  window:     {st.get('window_started_at')} -> {st['window_ends_at']}")
    ap = st.get("approvals") or {}
    given = ap.get("given") or {}
    lines.append(
        f"  approvals:  {ap.get('stage')}: "
        + (", ".join(f"{r} by {g['actor']}" for r, g in given.items()) or "none yet")
        + (f"; missing {', '.join(ap.get('missing') or [])}" if ap.get("missing") else "")
    )
    for h in st.get("pending_handoff") or []:
        lines.append(f"  handoff:    open: {h['item']} -> {h['to']} ({', '.join(h['identities'])})")
    if st.get("hold"):
        h = st["hold"]
        lines.append(f"  hold:       {h['kind']} since {h['since']} by {h['actor']}: {h['reason']}")
    for b in st.get("open_breaches") or []:
        ev = b["evidence"]
        lines.append(
            f"  breach:     #{b['id']} {b['threshold']} from {ev['source']} value={ev.get('value')} -> {b['action']}"
        )
    esc = st.get("escalation")
    if esc:
        state = f"acknowledged by {esc['acknowledged_by']}" if esc.get("acknowledged_by") else (
            f"OPEN, next page {esc.get('next_page_at')}"
        )
        lines.append(f"  escalation: level {esc['level']}, {state}: {esc['reason']}")
        for p in esc.get("pages", [])[-3:]:
            late = f" (fired {p['delay_seconds']:.0f}s late)" if p.get("delay_seconds") else ""
            lines.append(f"              paged {', '.join(p['recipients'])} at {p['at']}{late}")
    if st.get("pending_amendment"):
        pa = st["pending_amendment"]
        lines.append(f"  amendment:  {pa['plan_hash'][:12]} by {pa['proposed_by']}; missing {', '.join(pa['missing'])}")
    if st.get("target_pending"):
        tp = st["target_pending"]
        lines.append(f"  target:     pending {tp['kind']} since {tp['since']} ({tp.get('last_error') or 'in flight'})")
    for r in (st.get("refused") or [])[-3:]:
        lines.append(f"  refused:    {r['action']} by {r['actor']}: {r['reason']}")
    if st.get("final_reason"):
        lines.append(f"  result:     {st['final_reason']}")
    return "\n".join(lines)
