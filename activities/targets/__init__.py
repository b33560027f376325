"""Exposure targets: the systems the controller actuates, one class per plan `target.kind`.

The workflow calls the activity `apply_exposure(change)`; it picks the class for
`change.target["kind"]` and applies the change once per idempotency key. See
activities/targets/base.py for the contract and docs/targets.md for each kind.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.targets.base import (
    MISCONFIGURED,
    REJECTED,
    Target,
    TargetUnavailable,
    misconfigured,
    rejected,
)
from activities.targets.file import FileTarget
from activities.targets.log import LogTarget
from activities.targets.unleash import UnleashTarget
from activities.targets.webhook import WebhookTarget
from rollout.models import TargetChange, TargetResult

KINDS: dict[str, type[Target]] = {
    cls.kind: cls for cls in (WebhookTarget, FileTarget, UnleashTarget, LogTarget)
}


def target_for(block: dict[str, Any]) -> Target:
    """The target object for a plan's `target` block (raises TargetMisconfigured)."""
    kind = block.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise misconfigured(f"unknown target kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    return cls.from_block(block)


@activity.defn(name="apply_exposure")
async def apply_exposure(change: TargetChange) -> TargetResult:
    """Apply one decided change of scope and authority at the plan's target."""
    return await target_for(change.target).apply(change)


__all__ = [
    "KINDS",
    "MISCONFIGURED",
    "REJECTED",
    "FileTarget",
    "LogTarget",
    "Target",
    "TargetUnavailable",
    "UnleashTarget",
    "WebhookTarget",
    "apply_exposure",
    "misconfigured",
    "rejected",
    "target_for",
]
