"""The durable state of one rollout, carried across continue-as-new.

Deterministic data only: the workflow mutates it, the `status` query renders it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from rollout.models import AuditEvent, BreachEvidence, TargetChange
from rollout.plan import Plan


class ApprovalRecord(BaseModel):
    role: str
    actor: str
    at: datetime
    comment: str | None = None
    signed: bool = False


class AckRecord(BaseModel):
    item: str
    actor: str
    at: datetime


class BreachRecord(BaseModel):
    id: int
    received_at: datetime
    stage: str | None
    threshold: str | None
    action: str  # containment applied (or asked for, when recorded only)
    applied: bool
    note: str = ""
    evidence: BreachEvidence
    bundle: dict[str, Any] = Field(default_factory=dict)


class HoldInfo(BaseModel):
    kind: str  # hold | narrow | rollback | reject | target
    reason: str
    actor: str
    since: datetime
    interrupted: str  # phase interrupted: awaiting_approval | soaking | awaiting_handoff
    thresholds: list[str] = Field(default_factory=list)  # thresholds contained by this hold


class Page(BaseModel):
    level: int
    roles: list[str]
    recipients: list[str]
    at: datetime
    due_at: datetime
    delay_seconds: float = 0.0


class EscalationState(BaseModel):
    reason: str
    started_at: datetime
    level: int = 0
    pages: list[Page] = Field(default_factory=list)
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    next_page_at: datetime | None = None


class PendingAmendment(BaseModel):
    plan: Plan
    plan_hash: str
    proposed_by: str
    proposed_at: datetime
    reason: str | None = None
    approvals: dict[str, ApprovalRecord] = Field(default_factory=dict)


class Refusal(BaseModel):
    at: datetime
    action: str
    actor: str | None
    reason: str
    via: str = "signal"


class TargetPending(BaseModel):
    seq: int
    kind: str
    stage: str | None
    since: datetime
    attempts: int = 0
    last_error: str | None = None


class RolloutState(BaseModel):
    plan: Plan
    plan_hash: str
    workflow_id: str
    started_at: datetime
    status: str = "awaiting_approval"
    stage_index: int = 0
    # scope decided by the workflow (last queued change) ...
    decided_stage: int | None = None
    decided_percent: float = 0.0
    decided_segments: list[str] | None = None
    decided_authority: dict[str, str] = Field(default_factory=dict)
    # ... and the scope in force (acknowledged by the target)
    exposure_stage: int | None = None
    exposure_percent: float = 0.0
    exposure_segments: list[str] | None = None
    exposure_authority: dict[str, str] = Field(default_factory=dict)
    exposure_frozen: bool = False
    exposure_since: datetime | None = None  # entry or resume time of the exposed stage
    awaiting_window_seq: int | None = None  # the window starts when this change is acknowledged
    window_started_at: datetime | None = None
    window_ends_at: datetime | None = None
    window_coverage: dict[str, float] = Field(default_factory=dict)
    exposure_clean: bool = False  # the exposed stage soaked a full clean window since entry/resume
    entered: list[int] = Field(default_factory=list)
    approvals: dict[str, dict[str, ApprovalRecord]] = Field(default_factory=dict)  # stage -> role -> record
    awaiting_since: datetime | None = None
    remind_at: datetime | None = None
    handoff_acks: dict[str, dict[str, AckRecord]] = Field(default_factory=dict)  # stage -> item -> ack
    breaches: list[BreachRecord] = Field(default_factory=list)  # open breaches (cleared on resume)
    breach_count: int = 0
    hold: HoldInfo | None = None
    last_resume_at: datetime | None = None
    escalation: EscalationState | None = None
    pending_amendment: PendingAmendment | None = None
    pending_changes: list[TargetChange] = Field(default_factory=list)
    target_pending: TargetPending | None = None
    decision_seq: int = 0
    audit_seq: int = 0
    audit_outbox: list[AuditEvent] = Field(default_factory=list)
    refused: list[Refusal] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    final_reason: str | None = None
    runs: int = 1
