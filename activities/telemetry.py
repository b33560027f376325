"""In-process counters for what activities do, served by the worker at `/metrics`.

A tiny registry `activities/` may import (the worker's metrics server lives in
worker/metrics.py, above this layer). `observe_activity` is called once per activity
attempt by the worker's activity interceptor, with the activity's arguments and its
result or exception; it never raises.

- `rollout_decision_to_target_seconds{change}`: from the workflow's decision
  (`TargetChange.decided_at`) to the target's acknowledgement, per change kind;
- `rollout_target_changes_total{change}`, `rollout_target_failures_total{target, reason}`
  (reason `rejected`, `misconfigured`, `unavailable`);
- from the audit rows stored (each decision once per process, whatever the retries):
  `rollout_breaches_total{action, applied}`, `rollout_containments_total{action}`,
  `rollout_pages_total`, `rollout_audit_rows_total`, and `rollout_audit_lag_seconds`
  (from the decision to its row in the store); `rollout_audit_failures_total{type}`;
- `rollout_notifications_total{event, outcome}` per notifier delivery.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from rollout.models import (
    AuditBatch,
    Notification,
    NotificationBatch,
    NotifyResult,
    TargetChange,
    TargetResult,
)

log = logging.getLogger("rollout.telemetry")

REGISTRY = CollectorRegistry(auto_describe=True)

CONTAINMENTS = ("hold", "narrow", "rollback")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

DECISION_TO_TARGET = Histogram(
    "rollout_decision_to_target_seconds",
    "Time from a decided change of exposure to the target's acknowledgement",
    ["change"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
TARGET_CHANGES = Counter(
    "rollout_target_changes", "Changes of exposure acknowledged by the target", ["change"], registry=REGISTRY
)
TARGET_FAILURES = Counter(
    "rollout_target_failures",
    "Failed attempts to apply a change at the target (rejected, misconfigured, unavailable)",
    ["target", "reason"], registry=REGISTRY,
)
BREACHES = Counter(
    "rollout_breaches", "Breaches recorded, by the containment they asked for and whether it applied",
    ["action", "applied"], registry=REGISTRY,
)
CONTAINMENTS_TOTAL = Counter(
    "rollout_containments", "Containments decided (breach-driven or manual), by action", ["action"], registry=REGISTRY
)
PAGES = Counter("rollout_pages", "Escalation pages decided", registry=REGISTRY)
AUDIT_ROWS = Counter("rollout_audit_rows", "Audit rows newly written to the store", registry=REGISTRY)
AUDIT_LAG = Histogram(
    "rollout_audit_lag_seconds", "Time from a decision to its row in the audit store",
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
AUDIT_FAILURES = Counter(
    "rollout_audit_failures", "Failed attempts to write audit rows, by error type", ["type"], registry=REGISTRY
)
NOTIFICATIONS = Counter(
    "rollout_notifications", "Notifier deliveries, by event and outcome", ["event", "outcome"], registry=REGISTRY
)

for _c in ("promote", "hold", "narrow", "rollback", "resume", "abort"):
    DECISION_TO_TARGET.labels(_c)
    TARGET_CHANGES.labels(_c)
for _a in CONTAINMENTS:
    CONTAINMENTS_TOTAL.labels(_a)
    for _applied in ("true", "false"):
        BREACHES.labels(_a, _applied)


def _now() -> datetime:
    return datetime.now(UTC)


def _failure_reason(exc: BaseException) -> str:
    kind = getattr(exc, "type", None)
    if kind == "TargetRejected":
        return "rejected"
    if kind == "TargetMisconfigured":
        return "misconfigured"
    return "unavailable"


def _target_applied(change: TargetChange, result: Any) -> None:
    if isinstance(result, TargetResult) and not result.applied:
        return
    TARGET_CHANGES.labels(change.kind).inc()
    decided = change.decided_at if change.decided_at.tzinfo else change.decided_at.replace(tzinfo=UTC)
    DECISION_TO_TARGET.labels(change.kind).observe(max(0.0, (_now() - decided).total_seconds()))


_COUNTED: OrderedDict[str, int] = OrderedDict()  # rollout id -> highest audit seq counted here
_COUNTED_MAX = 10_000


def _audit_written(batch: AuditBatch) -> None:
    """Count the rows of a stored batch this process has not counted yet (a retried
    batch counts once), with their lag from decision to store."""
    now = _now()
    fresh = []
    for ev in sorted(batch.events, key=lambda e: e.seq):
        if ev.seq > _COUNTED.get(ev.rollout_id, 0):
            fresh.append(ev)
            _COUNTED[ev.rollout_id] = ev.seq
            _COUNTED.move_to_end(ev.rollout_id)
    while len(_COUNTED) > _COUNTED_MAX:
        _COUNTED.popitem(last=False)
    AUDIT_ROWS.inc(len(fresh))
    for ev in fresh:
        at = ev.at if ev.at.tzinfo else ev.at.replace(tzinfo=UTC)
        AUDIT_LAG.observe(max(0.0, (now - at).total_seconds()))
        if ev.action == "breach":
            breach = ev.payload.get("breach") if isinstance(ev.payload.get("breach"), dict) else ev.payload
            action = breach.get("action") if isinstance(breach, dict) else None
            applied = breach.get("applied") if isinstance(breach, dict) else None
            BREACHES.labels(
                action if action in CONTAINMENTS else "unknown",
                "unknown" if applied is None else str(bool(applied)).lower(),
            ).inc()
        elif ev.action.removeprefix("contained_") in CONTAINMENTS:  # `contained_hold` (or `hold`)
            CONTAINMENTS_TOTAL.labels(ev.action.removeprefix("contained_")).inc()
        elif ev.action == "escalation_page":
            PAGES.inc()


def _notified(n: Notification, result: Any) -> None:
    if not isinstance(result, NotifyResult):
        return
    if result.delivered:
        NOTIFICATIONS.labels(n.event, "delivered").inc(len(result.delivered))
    if result.failed:
        NOTIFICATIONS.labels(n.event, "failed").inc(len(result.failed))


def observe_activity(activity_type: str, args: tuple[Any, ...] | list[Any], result: Any,
                     error: BaseException | None = None) -> None:
    """Count one activity attempt (called by the worker's interceptor; never raises)."""
    try:
        arg = args[0] if args else None
        if activity_type == "apply_exposure" and isinstance(arg, TargetChange):
            if error is None:
                _target_applied(arg, result)
            else:
                kind = arg.target.get("kind") if isinstance(arg.target, dict) else None
                TARGET_FAILURES.labels(kind if isinstance(kind, str) else "unknown", _failure_reason(error)).inc()
        elif activity_type == "record_audit" and isinstance(arg, AuditBatch):
            if error is None:
                _audit_written(arg)
            elif error is not None:
                AUDIT_FAILURES.labels(str(getattr(error, "type", None) or type(error).__name__)).inc()
        elif activity_type == "send_notifications" and isinstance(arg, Notification) and error is None:
            _notified(arg, result)
        elif activity_type == "send_notification_batch" and isinstance(arg, NotificationBatch) and error is None:
            for n, r in zip(arg.notifications, result.results, strict=False):
                _notified(n, r)
    except Exception:  # telemetry never breaks an activity
        log.exception("telemetry failed for activity %s", activity_type)
