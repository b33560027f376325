"""Payloads of the workflow's updates, signals and input (a contract with CLI and tools)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollout.machine_model import State
from rollout.models import AuditEvent, Notification
from rollout.plan import Plan
from workflows.legacy.state import RolloutState


class ActionInput(BaseModel):
    """Payload of every human action: `actor` plus the fields the action needs."""

    model_config = ConfigDict(extra="allow")

    actor: str = ""
    stage: str | None = None
    role: str | None = None
    comment: str | None = None
    reason: str | None = None
    item: str | None = None
    escalation: bool = False
    plan: dict[str, Any] | None = None
    amendment: str | None = None
    signature: str | None = None


class BreachReport(BaseModel):
    """Payload of `report_breach`; fields beyond these are kept as evidence."""

    model_config = ConfigDict(extra="allow")

    source: Any = "unknown"
    threshold: Any = None
    value: Any = None
    observed_at: Any = None  # ISO 8601 (or a datetime); anything else is kept as evidence
    action: Any = None
    detail: Any = None

    def observed(self) -> datetime | None:
        v = self.observed_at
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=UTC)
        if isinstance(v, str):
            try:
                t = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                return None
            return t if t.tzinfo else t.replace(tzinfo=UTC)
        return None


class RolloutInput(BaseModel):
    """The workflow's input: a plan and who starts it; after continue-as-new, what it carries."""

    plan: Plan
    started_by: str | None = None  # must be the plan's rollout owner
    machine: State | None = None  # the state machine's state, carried across continue-as-new
    outbox: list[AuditEvent] = Field(default_factory=list)  # audit rows not yet written
    notifications: list[Notification] = Field(default_factory=list)  # not yet sent
    state: RolloutState | None = None  # a run recorded before the state machine (legacy)
    # continue-as-new once history passes this many events (lower in tests)
    continue_as_new_after: int = 4000
