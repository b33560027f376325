"""The exposure-target interface shared by every target kind.

A target makes one decided change (`TargetChange`: scope and authority for a stage)
real in some system. Contract for every implementation:

- `apply` is idempotent per `change.idempotency_key` (`<workflow id>:<decision
  sequence>`): applying the same change twice leaves the system as applying it once;
- a transient failure (5xx, timeout, connection refused) raises `TargetUnavailable`
  (or any ordinary exception), which Temporal retries with backoff;
- a refusal by the target raises `rejected(...)` (ApplicationError type
  `TargetRejected`, non-retryable): the workflow holds and pages;
- a configuration problem (bad target block, missing env var) raises
  `misconfigured(...)` (type `TargetMisconfigured`, non-retryable);
- secrets are read from the environment here only, never returned or put in messages.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from rollout.models import TargetChange, TargetResult

REJECTED = "TargetRejected"
MISCONFIGURED = "TargetMisconfigured"

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class TargetUnavailable(Exception):
    """A transient failure: the target could not be reached or answered 5xx. Retried."""


def rejected(message: str) -> ApplicationError:
    return ApplicationError(message, type=REJECTED, non_retryable=True)


def misconfigured(message: str) -> ApplicationError:
    return ApplicationError(message, type=MISCONFIGURED, non_retryable=True)


def read_secret(env_name: str, what: str = "secret") -> str:
    """The value of env var `env_name`; a missing or empty one is TargetMisconfigured."""
    value = os.environ.get(env_name)
    if not value:
        raise misconfigured(f"environment variable {env_name} (the target's {what}) is not set on the worker")
    return value


def parse_config(model: type[ConfigT], target: dict[str, Any]) -> ConfigT:
    try:
        return model.model_validate(target)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'target'}: {err['msg']}" for err in exc.errors()
        )
        raise misconfigured(f"invalid {model.__name__} block: {problems}") from None


def current_run_id() -> str | None:
    """The workflow run id when called inside an activity, else None."""
    try:
        return activity.info().workflow_run_id
    except RuntimeError:
        return None


def exposure_body(change: TargetChange) -> dict[str, Any]:
    """The JSON document describing a change, as webhook receivers and logs see it.

    Deterministic for a given change (retries send the same bytes); no secrets.
    """
    return {
        "rollout": change.rollout_id,
        "run_id": current_run_id(),
        "plan": change.plan_name,
        "seq": change.seq,
        "idempotency_key": change.idempotency_key,
        "kind": change.kind,
        "stage": change.stage,
        "scope": {"percent": change.percent, "segments": change.segments},
        "authority": dict(sorted(change.authority.items())),
        "frozen": change.frozen,
        "plan_hash": change.plan_hash,
        "reason": change.reason,
        "decided_at": change.decided_at.isoformat(),
    }


class Target(ABC):
    """One exposure target kind. Subclasses set `kind` and implement `apply`."""

    kind: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_block(cls, target: dict[str, Any]) -> Self:
        """Build the target from the plan's `target` block (raises TargetMisconfigured)."""

    @abstractmethod
    async def apply(self, change: TargetChange) -> TargetResult:
        """Make `change` real at the target, exactly once per idempotency key."""
