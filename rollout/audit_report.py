"""Rendering the decision trail for auditors: pure functions, events in, text out.

`render_markdown(events, ...)` writes a report a person can read: header (rollout,
plan hashes, status), timeline, approvals by stage and role, breaches with their
evidence bundles, containment, escalation pages and acknowledgements, handoff
acknowledgements, amendments, refused actions, completion or abort.
`render_json(events, ...)` is the same trail as data, one object per event.

Every event appears in the timeline whatever its action; the sections pick events
by action name, so a new kind of decision is never hidden from the auditor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from rollout.models import AuditEvent

FINAL = {"completed", "aborted"}
APPROVAL = {"approve", "approved", "approval", "approval_given", "amendment_approved"}
REJECTION = {"reject", "rejected"}
CONTAINMENT = {"hold", "held", "narrow", "narrowed", "rollback", "rolled_back", "max_hold_rollback"}


def _is_containment(ev: AuditEvent) -> bool:
    return ev.action in CONTAINMENT or ev.action.startswith("contained_")
RESUME = {"resume", "resumed"}
BREACH = {"breach", "breach_recorded", "report_breach"}
EVIDENCE_KEYS = (
    "source",
    "threshold",
    "query",
    "value",
    "max",
    "min",
    "for_",
    "for",
    "no_data",
    "observed_at",
    "action",
)


def _is_refused(ev: AuditEvent) -> bool:
    return ev.action.startswith("refused") or ev.action.endswith("_refused") or bool(ev.payload.get("refused"))


def _refused_action(ev: AuditEvent) -> str:
    action = ev.payload.get("action")
    request = ev.payload.get("request")
    if not isinstance(action, str) and isinstance(request, str):
        action = request
    via = ev.payload.get("via")
    text = action if isinstance(action, str) and action else ev.action
    return f"{text} (via {via})" if isinstance(via, str) and via else text


def _is_escalation(ev: AuditEvent) -> bool:
    a = ev.action
    return (a.startswith("escalation") or a in {"page", "paged", "acknowledged"}) and not _is_refused(ev)


def _escalation_detail(ev: AuditEvent) -> str:
    p = ev.payload
    parts = []
    who = p.get("recipients") or p.get("paged")
    if who:
        parts.append("paged " + (", ".join(map(str, who)) if isinstance(who, list) else str(who)))
    if p.get("roles"):
        parts.append("roles " + ", ".join(map(str, p["roles"])) if isinstance(p["roles"], list) else str(p["roles"]))
    if p.get("level") is not None:
        parts.append(f"level {p['level']}")
    if p.get("delay_seconds"):
        parts.append(f"fired {p['delay_seconds']}s late")
    if p.get("auto"):
        parts.append("acknowledged by the actor who contained")
    reason = p.get("reason") if isinstance(p.get("reason"), str) else ev.reason
    if reason:
        parts.append(reason)
    return "; ".join(parts)


def _is_handoff(ev: AuditEvent) -> bool:
    return ev.action.startswith("handoff") and not _is_refused(ev)


def _is_amendment(ev: AuditEvent) -> bool:
    return ev.action.startswith("amend") and not _is_refused(ev)


def _ts(at: datetime) -> str:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _who(ev: AuditEvent) -> str:
    if ev.actor and ev.role:
        return f"{ev.actor} ({ev.role})"
    return ev.actor or (f"({ev.role})" if ev.role else "controller")


def _comment(ev: AuditEvent) -> str | None:
    for key in ("comment", "reason"):
        v = ev.payload.get(key)
        if isinstance(v, str) and v:
            return v
    return ev.reason


def trail_status(events: Sequence[AuditEvent]) -> str:
    """The rollout's status as far as the trail shows it."""
    for ev in reversed(events):
        if ev.action in FINAL:
            return ev.action
        status = ev.payload.get("status")
        if isinstance(status, str) and status:
            return status
    return "in progress" if events else "no decisions recorded"


def plan_hashes(events: Iterable[AuditEvent]) -> list[str]:
    out: list[str] = []
    for ev in events:
        if ev.plan_hash and ev.plan_hash not in out:
            out.append(ev.plan_hash)
    return out


def render_json(
    events: Sequence[AuditEvent], rollout_id: str, source: str, complete: bool = True
) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "source": source,
        "complete": complete,
        "status": trail_status(events),
        "plan_hashes": plan_hashes(events),
        "events": [ev.model_dump(mode="json") for ev in events],
    }


class _Md:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            self.add("| " + " | ".join(_cell(c) for c in r) + " |")
        self.add("")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _breach_parts(ev: AuditEvent) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(evidence, bundle, record) of a breach event.

    StagedRollout writes `payload.breach` = {evidence, bundle, action, applied, note, ...};
    a flat payload (evidence fields at the top, or under `evidence`) works too."""
    payload = ev.payload
    record = payload.get("breach")
    if isinstance(record, dict):
        evidence = _dict(record.get("evidence"))
        bundle = _dict(record.get("bundle"))
        rest = {k: v for k, v in record.items() if k not in ("evidence", "bundle")}
        return evidence, bundle, rest
    if isinstance(payload.get("evidence"), dict):
        return payload["evidence"], {k: v for k, v in payload.items() if k != "evidence"}, {}
    return payload, {}, {}


def _threshold_spec(evidence: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
    """The plan threshold the breach names, as the bundle recorded it (max/min/for)."""
    name = evidence.get("threshold")
    for t in bundle.get("thresholds") or []:
        if isinstance(t, dict) and t.get("name") == name:
            return t
    return {}


def _render_evidence(md: _Md, ev: AuditEvent) -> None:
    evidence, bundle, record = _breach_parts(ev)
    spec = _threshold_spec(evidence, bundle)
    metric = _dict(bundle.get("metric"))

    def pick(key: str, *alts: str) -> Any:
        for src in (evidence, metric, spec):
            for k in (key, *alts):
                if src.get(k) is not None:
                    return src[k]
        return None

    limit, floor = pick("max"), pick("min")
    bound = " and ".join(
        part for part in ((f"max {limit}" if limit is not None else ""), (f"min {floor}" if floor is not None else "")) if part
    )
    md.add(f"- **Threshold**: {evidence.get('threshold') or '(none named: hold)'}" + (f" ({bound})" if bound else ""))
    query = pick("query")
    if query:
        md.add(f"- **Query**: `{query}`")
    value = "no data" if evidence.get("no_data") else pick("value")
    if value is not None:
        md.add(f"- **Observed value**: {value}")
    consecutive = pick("for_", "for")
    if consecutive is not None:
        md.add(f"- **Consecutive failing evaluations required**: {consecutive}")
    for key, label in (("source", "Source"), ("observed_at", "Observed at"), ("action", "Action asked for")):
        if evidence.get(key) is not None:
            md.add(f"- **{label}**: {evidence[key]}")
    if isinstance(evidence.get("detail"), dict) and evidence["detail"]:
        md.add(f"- **Detail**: `{_compact(evidence['detail'])}`")
    if record:
        applied = record.get("applied")
        taken = record.get("action")
        if applied is False:
            md.add(f"- **Containment**: none (recorded only{': ' + str(record['note']) if record.get('note') else ''})")
        elif taken:
            md.add(f"- **Containment**: {taken}")
    md.add(f"- **Plan hash**: `{bundle.get('plan_hash', ev.plan_hash)}`")
    scope = bundle.get("scope")
    if isinstance(scope, dict) and isinstance(scope.get("in_force"), dict):
        in_force = dict(_dict(scope["in_force"]))
        authority = in_force.pop("authority", None)
        md.add(f"- **Scope in force**: `{_compact(in_force)}`")
        if authority is not None:
            md.add(f"- **Authority in force**: `{_compact(authority)}`")
        if scope.get("decided") is not None:
            md.add(f"- **Scope decided**: `{_compact(scope['decided'])}`")
    elif scope is not None:
        md.add(f"- **Scope**: `{_compact(scope)}`")
    shown = {"metric", "thresholds", "scope", "plan_hash", "samples", "evidence"}
    for key in sorted(bundle):
        if key in shown or (key == "containment" and record):
            continue
        md.add(f"- **{key.replace('_', ' ').capitalize()}**: `{_compact(bundle[key])}`")
    if not bundle:  # flat payload: show whatever else it carries
        for key in sorted(evidence):
            if key not in set(EVIDENCE_KEYS) | {"samples", "detail", "plan_hash"}:
                md.add(f"- **{key.replace('_', ' ').capitalize()}**: `{_compact(evidence[key])}`")
    if spec:
        md.add(f"- **Threshold as planned**: `{_compact(spec)}`")
    samples = evidence.get("samples") or metric.get("samples")
    if isinstance(samples, list) and samples:
        md.add("", "Samples:", "")
        md.table(
            ["at", "value", "error"],
            (
                [x.get("at"), "no data" if x.get("value") is None else x.get("value"), x.get("error")]
                for x in samples
                if isinstance(x, dict)
            ),
        )
    md.add("")


def render_markdown(
    events: Sequence[AuditEvent], rollout_id: str, source: str, complete: bool = True
) -> str:
    md = _Md()
    evs = sorted(events, key=lambda e: e.seq)
    md.add(f"# Audit report: {rollout_id}", "")
    hashes = plan_hashes(evs)
    md.add(f"- **Status**: {trail_status(evs)}")
    md.add(f"- **Source**: {'Temporal history' if source == 'temporal' else 'audit store'}")
    if evs:
        md.add(f"- **Decisions**: {len(evs)} (seq {evs[0].seq}..{evs[-1].seq}), {_ts(evs[0].at)} to {_ts(evs[-1].at)}")
    if not complete:
        md.add("- **Note**: older runs are no longer in Temporal; earlier decisions come from the audit store")
    if len(hashes) == 1:
        md.add(f"- **Plan hash**: `{hashes[0]}`")
    elif hashes:
        md.add("- **Plan hashes** (amended):")
        for h in hashes:
            first = next(e for e in evs if e.plan_hash == h)
            md.add(f"  - `{h}` from seq {first.seq} ({_ts(first.at)})")
    md.add("")

    md.add("## Timeline", "")
    md.table(
        ["seq", "time", "action", "stage", "who", "reason"],
        ([e.seq, _ts(e.at), e.action, e.stage, _who(e), _comment(e)] for e in evs),
    )

    approvals = [e for e in evs if e.action in APPROVAL and not _is_refused(e)]
    rejections = [e for e in evs if e.action in REJECTION and not _is_refused(e)]
    md.add("## Approvals", "")
    if not approvals and not rejections:
        md.add("No approvals recorded.", "")
    stages: list[str] = []
    for e in approvals + rejections:
        if (e.stage or "") not in stages:
            stages.append(e.stage or "")
    for stage in stages:
        md.add(f"### Stage {stage or '(none)'}", "")
        rows = [
            [
                e.role,
                e.actor,
                "rejected" if e.action in REJECTION else ("amendment " + str(e.payload["amendment"])[:12] if e.payload.get("amendment") else "approved"),
                _ts(e.at),
                _comment(e),
                e.seq,
            ]
            for e in sorted(approvals + rejections, key=lambda x: x.seq)
            if (e.stage or "") == stage
        ]
        md.table(["role", "who", "decision", "when", "comment", "seq"], rows)

    breaches = [e for e in evs if e.action in BREACH]
    md.add("## Breaches and evidence", "")
    if not breaches:
        md.add("No breaches recorded.", "")
    for e in breaches:
        md.add(f"### Breach at {_ts(e.at)} (seq {e.seq}, stage {e.stage or '-'})", "")
        _render_evidence(md, e)

    contained = [e for e in evs if (_is_containment(e) or e.action in RESUME) and not _is_refused(e)]
    md.add("## Containment and resumes", "")
    if contained:
        md.table(
            ["seq", "time", "action", "stage", "who", "reason"],
            ([e.seq, _ts(e.at), e.action, e.stage, _who(e), _comment(e)] for e in contained),
        )
    else:
        md.add("None.", "")

    md.add("## Escalation", "")
    esc = [e for e in evs if _is_escalation(e)]
    if esc:
        md.table(
            ["seq", "time", "event", "who", "paged / detail"],
            (
                [
                    e.seq,
                    _ts(e.at),
                    e.action,
                    _who(e),
                    _escalation_detail(e),
                ]
                for e in esc
            ),
        )
    else:
        md.add("No escalation pages.", "")

    md.add("## Handoff", "")
    handoff = [e for e in evs if _is_handoff(e)]
    if handoff:
        md.table(
            ["seq", "time", "stage", "item", "acknowledged by", "event"],
            ([e.seq, _ts(e.at), e.stage, e.payload.get("item"), _who(e), e.action] for e in handoff),
        )
    else:
        md.add("No handoff acknowledgements.", "")

    md.add("## Amendments", "")
    amends = [e for e in evs if _is_amendment(e) or (e.action in APPROVAL and e.payload.get("amendment"))]
    if amends:
        md.table(
            ["seq", "time", "event", "who", "plan hash", "detail"],
            (
                [e.seq, _ts(e.at), e.action, _who(e), e.payload.get("new_plan_hash") or e.payload.get("amendment") or (e.payload.get("plan_hash") if e.action == "amendment_applied" else None) or e.plan_hash, _comment(e)]
                for e in amends
            ),
        )
    else:
        md.add("No amendments.", "")

    refused = [e for e in evs if _is_refused(e)]
    md.add("## Refused actions", "")
    if refused:
        md.table(
            ["seq", "time", "action", "who", "reason"],
            ([e.seq, _ts(e.at), _refused_action(e), _who(e), _comment(e)] for e in refused),
        )
    else:
        md.add("None.", "")

    md.add("## Outcome", "")
    final = [e for e in evs if e.action in FINAL]
    if final:
        last = final[-1]
        md.add(f"**{last.action}** at {_ts(last.at)} by {_who(last)}" + (f": {_comment(last)}" if _comment(last) else ""))
    else:
        md.add(f"Not finished; last recorded status: {trail_status(evs)}.")
    return md.text()
