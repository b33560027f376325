"""Data of the rollout state machine: its state, the events it takes, the commands it gives.

All pydantic, all serialisable: continue-as-new carries `State` as it is, a test can
print a whole run, and `rollout simulate` drives the same machine from recorded
metrics. Every input is bounded here, where it enters the machine: free-form fields
are truncated with a visible mark, so no sender can push a payload or a history past
Temporal's limits.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rollout.models import AuditEvent, Notification, TargetChange
from rollout.plan import Plan, Threshold

# ---- bounds -----------------------------------------------------------------------------

MAX_TEXT = 2_000  # reasons, comments, items
MAX_IDENT = 256  # actors, roles, stage and threshold names
MAX_DETAIL = 4_096  # free-form evidence (alert labels, annotations), as JSON
MAX_REFUSED = 100
MAX_OPEN_BREACHES = 50
MAX_PAGES = 50
MAX_SAMPLES = 20
MAX_FAILING_KEPT = 50
MAX_SERIES_KEPT = 200
TRUNC = "…[truncated {n} chars]"


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a mark saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNC.format(n=len(text) - limit)


def bound_json(value: Any, limit: int = MAX_DETAIL) -> Any:
    """A JSON-able value no larger than `limit` characters once serialised.

    Small values pass unchanged; a large one becomes its serialisation, clipped.
    """
    try:
        text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= limit:
        return value
    return {"truncated": clip(text, limit)}


def _text(limit: int) -> Any:
    def f(v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("must be a string")
        return clip(v, limit)

    return BeforeValidator(f)


Ident = Annotated[str, _text(MAX_IDENT)]
OptIdent = Annotated[str | None, _text(MAX_IDENT)]
Text = Annotated[str | None, _text(MAX_TEXT)]
Detail = Annotated[Any, BeforeValidator(bound_json)]

Action = Literal["hold", "narrow", "rollback"]
Status = Literal[
    "awaiting_approval", "soaking", "held", "awaiting_handoff", "rolled_back", "completed", "aborted"
]
Phase = Literal["awaiting_approval", "soaking", "awaiting_handoff"]
Via = Literal["update", "signal"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- events -------------------------------------------------------------------------------


class _Human(_M):
    actor: Ident = ""
    via: Via = "update"


class Approve(_Human):
    kind: Literal["approve"] = "approve"
    stage: OptIdent = None
    role: OptIdent = None
    comment: Text = None
    amendment: OptIdent = None  # the pending amendment's plan hash: an approval of it
    signature: Annotated[str | None, _text(512)] = None
    signed_at: datetime | None = None


class Reject(_Human):
    kind: Literal["reject"] = "reject"
    stage: OptIdent = None
    role: OptIdent = None
    reason: Text = None


class Hold(_Human):
    kind: Literal["hold"] = "hold"
    reason: Text = None


class Resume(_Human):
    kind: Literal["resume"] = "resume"
    reason: Text = None


class Rollback(_Human):
    kind: Literal["rollback"] = "rollback"
    reason: Text = None


class Acknowledge(_Human):
    kind: Literal["acknowledge"] = "acknowledge"
    item: Text = None
    stage: OptIdent = None
    escalation: bool = False
    comment: Text = None
    signature: Annotated[str | None, _text(512)] = None
    signed_at: datetime | None = None


class Amend(_Human):
    kind: Literal["amend"] = "amend"
    plan: dict[str, Any] | None = None
    reason: Text = None


class Abort(_Human):
    kind: Literal["abort"] = "abort"
    reason: Text = None


class Malformed(_Human):
    """A signal whose payload did not validate: refused with reason `malformed: ...`."""

    kind: Literal["malformed"] = "malformed"
    action: Ident
    problem: Text = None
    excerpt: Detail = None


class BreachReported(_M):
    """`report_breach` from a monitor that applied its own `for`."""

    kind: Literal["breach"] = "breach"
    source: Ident = "unknown"
    threshold: OptIdent = None
    stage: OptIdent = None  # the stage the alert was written for, if it says
    value: float | None = None
    observed_at: datetime | None = None
    action: OptIdent = None
    detail: Detail = None


class Resolved(_M):
    """`report_resolved`: a monitor saw the breach clear. Recorded; never resumes."""

    kind: Literal["resolved"] = "resolved"
    source: Ident = "unknown"
    threshold: OptIdent = None
    observed_at: datetime | None = None
    detail: Detail = None


class Evaluation(_M):
    threshold: Ident
    at: datetime  # the scheduled time of the evaluation
    value: float | None = None  # None: no data
    error: Text = None


class Evaluations(_M):
    """The monitor's report: every scheduled evaluation of `stage` up to `through`
    (slots not in `results` were missed and count as no data for coverage)."""

    kind: Literal["evaluations"] = "evaluations"
    stage: Ident
    anchor: datetime
    through: datetime
    results: list[Evaluation] = Field(default_factory=list)


class TargetAcked(_M):
    kind: Literal["target_acked"] = "target_acked"
    seq: int
    detail: Text = None


class TargetFailed(_M):
    """A delivery failed: `permanent` for a 4xx other than 408/429 (undeliverable at once)."""

    kind: Literal["target_failed"] = "target_failed"
    seq: int
    error: Text = None
    permanent: bool = False


class NotifyFailed(_M):
    kind: Literal["notify_failed"] = "notify_failed"
    event: Ident
    failed: Detail = None


class AuditAnchored(_M):
    """The audit store wrote a batch: its chain head (kept in status.audit_head)."""

    kind: Literal["audit_anchored"] = "audit_anchored"
    head: dict[str, Any]


class DeadlineReached(_M):
    """A timer fell due. `at` is the time it was set for: the deadline rules are judged at
    `at`, not at the (later, and on a replay possibly different) time it is handled, so
    the decision depends only on the state and the timer. None: judged at `now`."""

    kind: Literal["deadline"] = "deadline"
    at: datetime | None = None


Event = Annotated[
    Approve
    | Reject
    | Hold
    | Resume
    | Rollback
    | Acknowledge
    | Amend
    | Abort
    | Malformed
    | BreachReported
    | Resolved
    | Evaluations
    | TargetAcked
    | TargetFailed
    | NotifyFailed
    | AuditAnchored
    | DeadlineReached,
    Field(discriminator="kind"),
]
HUMAN_EVENTS = (Approve, Reject, Hold, Resume, Rollback, Acknowledge, Amend, Abort, Malformed)


# ---- commands -----------------------------------------------------------------------------


class ApplyExposure(_M):
    kind: Literal["apply_exposure"] = "apply_exposure"
    change: TargetChange


class Notify(_M):
    kind: Literal["notify"] = "notify"
    notification: Notification


class Audit(_M):
    kind: Literal["audit"] = "audit"
    event: AuditEvent


class WatchSpec(_M):
    """What the monitor evaluates: the thresholds of `stage`, every `interval_seconds`
    from `anchor` (evaluation k at anchor + k*interval, k >= next_index)."""

    stage: str
    prometheus_url: str
    interval_seconds: float
    thresholds: list[Threshold]
    anchor: datetime
    next_index: int = 1
    latched: list[str] = Field(default_factory=list)  # breached, not passed since: no need to report at once
    flush_at: datetime | None = None  # report no later than this (the window's end)
    flush_every_seconds: float = 3600.0  # report buffered evaluations at least this often

    def same_watch(self, other: WatchSpec | None) -> bool:
        """Same stage, schedule and thresholds: a running monitor need not restart."""
        if other is None:
            return False
        keys = ("stage", "prometheus_url", "interval_seconds", "thresholds", "anchor", "flush_at")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


class Watch(_M):
    kind: Literal["watch"] = "watch"
    spec: WatchSpec | None


class Refuse(_M):
    kind: Literal["refuse"] = "refuse"
    reason: str


class Close(_M):
    kind: Literal["close"] = "close"
    status: str
    reason: str


Command = Annotated[
    ApplyExposure | Notify | Audit | Watch | Refuse | Close, Field(discriminator="kind")
]


# ---- state ----------------------------------------------------------------------------------


class Approval(_M):
    role: str
    actor: str
    at: datetime
    comment: str | None = None
    signed: bool = False


class HandoffAck(_M):
    item: str
    actor: str
    at: datetime
    comment: str | None = None


class Exposure(_M):
    """A scope: the stage whose scope it is (None: nothing), percent, segments, authority."""

    stage: int | None = None
    percent: float = 0.0
    segments: list[str] | None = None
    authority: dict[str, str] = Field(default_factory=dict)
    narrowed: bool = False
    frozen: bool = False


class Track(_M):
    """One threshold's running judgement: consecutive failing evaluations and the latch."""

    counter: int = 0
    latched: bool = False  # breached; breaches again only after a pass (or a reset)
    no_data_in_run: bool = False
    recent: list[tuple[datetime, float | None]] = Field(default_factory=list)


class WindowStat(_M):
    evaluations: int = 0
    with_data: int = 0
    failing: int = 0
    no_data: int = 0
    min: float | None = None
    max: float | None = None
    last: float | None = None
    failing_values: list[tuple[datetime, float | None]] = Field(default_factory=list)
    series: list[tuple[datetime, float | None]] = Field(default_factory=list)


class Tally(_M):
    """Counts over the rollout's life, per STAGE/THRESHOLD (for simulate and review)."""

    evaluations: int = 0
    failing: int = 0
    no_data: int = 0
    breaches: int = 0


class Breach(_M):
    id: int
    at: datetime
    source: str
    stage: str | None
    threshold: str | None
    value: float | None = None
    observed_at: datetime
    action: Action
    applied: bool
    note: str = ""
    repeats: int = 0
    last_seen_at: datetime | None = None
    resolved_at: datetime | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    bundle: dict[str, Any] = Field(default_factory=dict)  # plan hash, scope, overrides, escalation, containment


class Containment(_M):
    kind: Literal["hold", "narrow", "rollback", "reject", "target"]
    reason: str
    actor: str
    at: datetime
    since: datetime  # first containment since the last resume (the max_hold clock)
    interrupted: Phase
    thresholds: list[str] = Field(default_factory=list)


class PageRecord(_M):
    level: int
    roles: list[str]
    recipients: list[str]
    at: datetime
    due_at: datetime
    late_by_seconds: float = 0.0


class Escalation(_M):
    id: int
    reason: str
    started_at: datetime
    level: int = 0
    pages: list[PageRecord] = Field(default_factory=list)
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    next_page_at: datetime | None = None


class PendingAmendment(_M):
    plan: Plan
    plan_hash: str
    proposed_by: str
    proposed_at: datetime
    reason: str | None = None
    approvals: dict[str, Approval] = Field(default_factory=dict)


class Refusal(_M):
    at: datetime
    action: str
    actor: str | None
    reason: str
    via: str = "signal"


class TargetPending(_M):
    seq: int
    kind: str
    stage: str | None
    since: datetime
    attempts: int = 0
    last_error: str | None = None
    undeliverable: bool = False
    retry_at: datetime | None = None


class State(_M):
    plan: Plan
    plan_hash: str
    workflow_id: str
    first_run_id: str
    started_by: str
    started_at: datetime
    status: Status = "awaiting_approval"
    stage_index: int = 0
    final_reason: str | None = None
    # approvals: stage name -> role -> approval, and the entry number they belong to
    entry: int = 0
    approvals: dict[str, dict[str, Approval]] = Field(default_factory=dict)
    approvals_entry: dict[str, int] = Field(default_factory=dict)
    awaiting_since: datetime | None = None
    remind_at: datetime | None = None
    entered: list[int] = Field(default_factory=list)  # stages entered and not rolled back from
    handoff_acks: dict[str, dict[str, HandoffAck]] = Field(default_factory=dict)
    # scope: in force (acknowledged by the target) and decided (the last change queued)
    exposure: Exposure = Field(default_factory=Exposure)
    exposure_since: datetime | None = None  # when the exposed stage was entered or resumed
    exposure_at: datetime | None = None  # when the scope in force came in force (evaluations count from here)
    decided: Exposure = Field(default_factory=Exposure)
    changes: list[TargetChange] = Field(default_factory=list)  # undelivered, in decision order
    target_pending: TargetPending | None = None
    window_after_seq: int | None = None  # the window starts when this change is acknowledged
    window_started_at: datetime | None = None
    window_ends_at: datetime | None = None
    window_due: bool = False  # the window's time is up; judged once evaluations reach its end
    clean: bool = False  # the exposed stage soaked a full clean window since entry or resume
    coverage: dict[str, float] = Field(default_factory=dict)  # of the last judged window
    # monitoring
    watch: WatchSpec | None = None
    evaluated_through: datetime | None = None
    tracks: dict[str, Track] = Field(default_factory=dict)
    stats: dict[str, WindowStat] = Field(default_factory=dict)
    tallies: dict[str, Tally] = Field(default_factory=dict)
    # containment and escalation
    containment: Containment | None = None
    last_resume_at: datetime | None = None
    breaches: list[Breach] = Field(default_factory=list)
    breach_count: int = 0
    escalation: Escalation | None = None
    escalation_count: int = 0
    pending_amendment: PendingAmendment | None = None
    refused: list[Refusal] = Field(default_factory=list)
    decision_seq: int = 0
    audit_seq: int = 0
    audit_head: dict[str, Any] | None = None
    runs: int = 1  # runs of this rollout id's current execution chain (continue-as-new)


def finite(value: float | None) -> float | None:
    """A float fit for JSON and comparison, or None (NaN and infinities are no data)."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


# ---- payloads from outside -> events ------------------------------------------------------

HUMAN_KINDS: dict[str, type[_Human]] = {
    "approve": Approve, "reject": Reject, "hold": Hold, "resume": Resume, "rollback": Rollback,
    "acknowledge": Acknowledge, "amend": Amend, "abort": Abort,
}


def _when(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, str):
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def event_from_payload(kind: str, data: Any, via: Via) -> Event:
    """A message's payload as a machine event; one that does not validate becomes
    `Malformed` (refused with reason `malformed: ...`, never dropped)."""
    excerpt = bound_json(data, 512)
    if not isinstance(data, dict):
        return Malformed(action=kind, via=via, problem=f"the payload must be a JSON object, got {type(data).__name__}",
                         excerpt=excerpt, actor="")
    actor: str = data["actor"] if isinstance(data.get("actor"), str) else ""
    try:
        if kind in HUMAN_KINDS:
            cls = HUMAN_KINDS[kind]
            fields = {k: v for k, v in data.items() if k in cls.model_fields and k not in ("kind", "via")}
            return cls.model_validate({**fields, "via": via})  # type: ignore[return-value]
        if kind == "report_breach":
            if not isinstance(data.get("source"), str) or not data.get("source"):
                raise ValueError("`source` is required (who reports the breach?)")
            known = {"source", "threshold", "value", "observed_at", "action", "detail", "stage"}
            extra = {k: v for k, v in data.items() if k not in known}
            detail: dict[str, Any] = {"detail": data.get("detail"), **extra}
            if data.get("value") is not None and _number(data.get("value")) is None:
                detail["value_raw"] = data.get("value")
            if data.get("observed_at") is not None and _when(data.get("observed_at")) is None:
                detail["observed_at_raw"] = data.get("observed_at")
            return BreachReported(
                source=data["source"],
                threshold=data["threshold"] if isinstance(data.get("threshold"), str) and data["threshold"] else None,
                stage=data["stage"] if isinstance(data.get("stage"), str) and data["stage"] else None,
                value=_number(data.get("value")), observed_at=_when(data.get("observed_at")),
                action=data["action"] if isinstance(data.get("action"), str) else None,
                detail={k: v for k, v in detail.items() if v is not None},
            )
        if kind == "report_resolved":
            if not isinstance(data.get("source"), str) or not data.get("source"):
                raise ValueError("`source` is required (who saw the breach clear?)")
            return Resolved(
                source=data["source"],
                threshold=data["threshold"] if isinstance(data.get("threshold"), str) else None,
                observed_at=_when(data.get("observed_at")), detail=data.get("detail"),
            )
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        problem = str(exc).splitlines()
        return Malformed(action=kind, via=via, actor=clip(actor, MAX_IDENT),
                         problem=clip("; ".join(problem[:4]), 500), excerpt=excerpt)
    return Malformed(action=kind, via=via, actor=clip(actor, MAX_IDENT), problem=f"unknown message {kind!r}",
                     excerpt=excerpt)
