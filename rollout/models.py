"""Messages exchanged between the workflow, its activities and the CLI.

These are the activity interfaces: the workflow decides, activities make it so.
Every model here crosses the Temporal boundary through the pydantic data converter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from rollout.plan import Notifier, Threshold

# ---- exposure target ----------------------------------------------------------------

ChangeKind = Literal["promote", "hold", "narrow", "rollback", "resume", "abort"]


class TargetChange(BaseModel):
    """One decided change of scope and authority, delivered once per idempotency key."""

    rollout_id: str  # workflow id
    plan_name: str
    seq: int  # decision sequence within the rollout
    idempotency_key: str  # "<workflow id>:<decision sequence>"
    kind: ChangeKind
    stage: str | None  # the stage whose scope this is (None: nothing exposed)
    percent: float
    segments: list[str] | None = None  # None: all segments
    authority: dict[str, str] = Field(default_factory=dict)
    frozen: bool = False  # hold: the target must stay at this scope
    plan_hash: str
    reason: str
    decided_at: datetime
    target: dict[str, Any]  # the plan's `target` block (secrets only by env var name)


class TargetResult(BaseModel):
    applied: bool = True
    detail: str = ""


# ---- notifications --------------------------------------------------------------------

EventKind = Literal[
    "started",
    "stage_entered",
    "approval_reminder",
    "hold",
    "narrow",
    "rollback",
    "breach",
    "escalation_page",
    "escalation_acknowledged",
    "resumed",
    "rejected",
    "handoff_complete",
    "amended",
    "completed",
    "aborted",
    "target_undeliverable",
]


class Notification(BaseModel):
    rollout_id: str
    plan_name: str
    seq: int
    event: EventKind
    summary: str  # one readable line
    stage: str | None = None
    status: str
    plan_hash: str
    occurred_at: datetime
    page: bool = False  # an escalation page (needs acknowledgement)
    recipients: list[str] = Field(default_factory=list)  # identities paged or reminded
    ack_command: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    notifiers: list[Notifier] = Field(default_factory=list)


class NotifyResult(BaseModel):
    delivered: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)  # url -> error


class NotificationBatch(BaseModel):
    """The notifications one decision made (a breach: breach, hold and the page), sent by one
    activity rather than one each: fewer activities and workflow tasks per breach."""

    notifications: list[Notification]


class NotifyBatchResult(BaseModel):
    results: list[NotifyResult]  # in the batch's order


# ---- metric monitor -------------------------------------------------------------------


class Sample(BaseModel):
    at: datetime
    value: float | None = None  # None: no data
    error: str | None = None


class BreachEvidence(BaseModel):
    source: str  # "prometheus", "alertmanager", or what the signal said
    threshold: str | None
    query: str | None = None
    value: float | None = None
    max: float | None = None
    min: float | None = None
    for_: int | None = None
    no_data: bool = False
    samples: list[Sample] = Field(default_factory=list)
    observed_at: datetime
    action: Literal["hold", "narrow", "rollback"]  # containment this breach asks for
    detail: dict[str, Any] = Field(default_factory=dict)


class MonitorRequest(BaseModel):
    rollout_id: str
    stage: str  # exposure stage whose thresholds are evaluated
    prometheus_url: str
    interval_seconds: float
    thresholds: list[Threshold]
    started_at: datetime  # window start (coverage counts from here)
    window_ends_at: datetime | None = None  # None: evaluate until cancelled or breach
    counters: dict[str, int] = Field(default_factory=dict)  # consecutive failing evaluations
    data_counts: dict[str, int] = Field(default_factory=dict)  # evaluations with data so far


class MonitorResult(BaseModel):
    kind: Literal["breach", "window_end"]
    breach: BreachEvidence | None = None
    counters: dict[str, int] = Field(default_factory=dict)
    data_counts: dict[str, int] = Field(default_factory=dict)
    expected_evaluations: int = 0
    coverage: dict[str, float] = Field(default_factory=dict)  # threshold -> fraction with data


# ---- audit ----------------------------------------------------------------------------


class AuditEvent(BaseModel):
    rollout_id: str  # workflow id
    seq: int  # per rollout, from 1, gap-free
    at: datetime  # workflow time
    actor: str | None = None
    role: str | None = None
    action: str
    stage: str | None = None
    plan_hash: str
    reason: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class AuditBatch(BaseModel):
    events: list[AuditEvent]


class AuditHead(BaseModel):
    """The head of a rollout's audit chain after a batch: kept in the workflow's history
    and `status.audit_head`, signed by the worker's Ed25519 key when it has one."""

    seq: int
    hash: str
    signature: str | None = None  # base64 Ed25519 signature over the head message
    key_id: str | None = None  # identifies the signing key (e.g. a fingerprint of its public half)
