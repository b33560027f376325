"""Notifications: every stage change, hold, breach, escalation page and completion goes
to each `notify` entry of the plan.

Kinds (docs/targets.md):
- `webhook`: the notification as JSON (without the notifier list), with the same
  headers as exposure webhooks (`Idempotency-Key`, `X-Rollout-Event: notification`,
  and `X-Rollout-Signature` when `secret_env` is set);
- `slack`: an incoming-webhook payload `{"text": ..., "blocks": [...]}` with a
  readable summary; a page names who is paged and the command that acknowledges it;
- `teams`: an Adaptive Card through a Teams workflow webhook (activities/notifiers/teams.py);
- `pagerduty`: Events API v2, escalations only: trigger, acknowledge, resolve
  (activities/notifiers/pagerduty.py);
- `email`: plain text over SMTP to the paged identities and the rollout owner
  (activities/notifiers/mail.py).

A failed notification never fails the rollout: each receiver is tried a few times with
backoff inside the activity (429 and 5xx honour Retry-After), and the activity returns
which receivers got it and which did not (recorded by the workflow in the audit trail).
It never raises for a receiver's failure. Notifiers run concurrently and independently,
each under its own deadline, so a slow or failing one delays neither the others nor the
rollout (the workflow never waits for notifications). Receivers are recorded redacted
(no credentials or query; Slack's secret path masked; environment variable names, never
their values).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from temporalio import activity

from activities.notifiers import mail, pagerduty, teams
from activities.notifiers.common import (
    SKIPPED,
    NotDelivered,
    Settings,
    ack_commands,
    post_with_retries,
)
from activities.outbound import build_headers, dumps, redact_url, tls
from rollout.models import Notification, NotificationBatch, NotifyBatchResult, NotifyResult
from rollout.plan import (
    EmailNotifier,
    Notifier,
    PagerDutyNotifier,
    SlackNotifier,
    TeamsNotifier,
    WebhookNotifier,
)

__all__ = ["ack_commands", "notification_body", "notify_all", "send_notifications", "slack_payload", "summary_text"]

# Each notifier's whole delivery (retries included) must end within this; the activity's
# start-to-close timeout (30s in the workflow) stays above the largest.
DEADLINE_SECONDS: dict[str, float] = {"webhook": 20.0, "slack": 20.0, "teams": 20.0, "pagerduty": 20.0, "email": 25.0}

_ICONS = {
    "started": ":rocket:",
    "stage_entered": ":arrow_up:",
    "approval_reminder": ":hourglass:",
    "hold": ":double_vertical_bar:",
    "narrow": ":arrow_down_small:",
    "rollback": ":rewind:",
    "breach": ":warning:",
    "escalation_page": ":rotating_light:",
    "escalation_acknowledged": ":ok_hand:",
    "resumed": ":arrow_forward:",
    "rejected": ":no_entry:",
    "handoff_complete": ":handshake:",
    "amended": ":memo:",
    "completed": ":white_check_mark:",
    "aborted": ":octagonal_sign:",
    "target_undeliverable": ":satellite_antenna:",
}


def idempotency_key(n: Notification) -> str:
    return f"{n.rollout_id}:{n.seq}:{n.event}"


def notification_body(n: Notification) -> dict[str, Any]:
    """The JSON document webhook notifiers receive: the notification without `notifiers`."""
    body = n.model_dump(mode="json", exclude={"notifiers"})
    body["ack_command"] = n.ack_command or (ack_commands(n)[0] if n.page else None)
    return body


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def summary_text(n: Notification) -> str:
    """The readable Slack message: what happened, where, who must act and how."""
    icon = _ICONS.get(n.event, ":information_source:")
    head = f"{icon} {'*PAGE* ' if n.page else ''}*{_escape(n.plan_name)}*: {_escape(n.summary)}"
    lines = [head]
    where = f"Stage: {_escape(n.stage)} · " if n.stage else ""
    lines.append(f"{where}Status: {_escape(n.status)} · Rollout: `{_escape(n.rollout_id)}`")
    if n.recipients:
        label = "Paged" if n.page else "For"
        lines.append(f"{label}: {_escape(', '.join(n.recipients))}")
    commands = ack_commands(n)
    if commands:
        lines.append("Acknowledge with: " + " or ".join(f"`{_escape(c)}`" for c in commands))
    return "\n".join(lines)


def slack_payload(n: Notification) -> dict[str, Any]:
    text = summary_text(n)
    context = f"{n.event} · {n.occurred_at.isoformat()} · plan {n.plan_hash[:12]}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(context)}]},
        ],
    }


def _webhook_request(notifier: WebhookNotifier | SlackNotifier, n: Notification) -> tuple[bytes, dict[str, str]]:
    if isinstance(notifier, SlackNotifier):
        return dumps(slack_payload(n)), {"Content-Type": "application/json"}
    secret: str | None = None
    if notifier.secret_env:
        secret = os.environ.get(notifier.secret_env)
        if not secret:
            raise NotDelivered(f"environment variable {notifier.secret_env} is not set on the worker", False)
    body = dumps(notification_body(n))
    return body, build_headers(body, secret=secret, idempotency_key=idempotency_key(n), event="notification")


async def _send(client: httpx.AsyncClient, notifier: Notifier, n: Notification) -> str | None:
    """Deliver to one notifier; None when delivered, SKIPPED, or the error."""
    if isinstance(notifier, WebhookNotifier | SlackNotifier):
        try:
            body, headers = _webhook_request(notifier, n)
        except NotDelivered as exc:
            return str(exc)
        return await post_with_retries(client, notifier.url, body, headers)
    if isinstance(notifier, TeamsNotifier):
        return await teams.send(client, notifier, n)
    if isinstance(notifier, PagerDutyNotifier):
        return await pagerduty.send(client, notifier, n)
    return await mail.send(notifier, n)


async def deliver(client: httpx.AsyncClient, notifier: Notifier, n: Notification) -> str | None:
    """One notifier under its own deadline; never raises for the receiver's failure."""
    deadline = DEADLINE_SECONDS[notifier.kind]
    try:
        return await asyncio.wait_for(_send(client, notifier, n), deadline)
    except TimeoutError:
        return f"gave up after {deadline:g}s (retries included)"
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug in one notifier must not cost the others their delivery
        return f"notifier failed: {type(exc).__name__}: {str(exc)[:160]}"


def label(notifier: Notifier) -> str:
    """How a receiver is recorded: never a credential, a secret path or a query."""
    if isinstance(notifier, PagerDutyNotifier):
        return f"pagerduty {redact_url(notifier.url)} (${notifier.routing_key_env})"
    if isinstance(notifier, EmailNotifier):
        return f"email {redact_url(notifier.smtp_url)}"
    return redact_url(notifier.url)


def _labels(notifiers: list[Notifier]) -> list[str]:
    labels: list[str] = []
    for notifier in notifiers:
        name = label(notifier)
        base, i = name, 2
        while name in labels:
            name, i = f"{base}#{i}", i + 1
        labels.append(name)
    return labels


async def notify_all(
    n: Notification, mounts: dict[str, httpx.AsyncBaseTransport] | None = None
) -> NotifyResult:
    """Send `n` to every notifier concurrently; `mounts` routes URL prefixes to other
    transports (a proxy, or a stand-in for a third-party service that cannot run here).
    Notifiers for which the event is not meant (PagerDuty and a stage change) are in
    neither list."""
    result = NotifyResult()
    if not n.notifiers:
        return result
    async with httpx.AsyncClient(timeout=Settings.request_timeout, follow_redirects=False, mounts=mounts,
                                 verify=tls()) as client:
        errors = await asyncio.gather(*(deliver(client, notifier, n) for notifier in n.notifiers))
    for name, error in zip(_labels(n.notifiers), errors, strict=True):
        if error is None:
            result.delivered.append(name)
        elif error != SKIPPED:
            result.failed[name] = error
            if activity.in_activity():
                activity.logger.warning("notification %s to %s not delivered: %s", n.event, name, error)
    return result


@activity.defn(name="send_notifications")
async def send_notifications(n: Notification) -> NotifyResult:
    """Send `n` to every notifier; report deliveries and failures, never raise for them."""
    return await notify_all(n)


@activity.defn(name="send_notification_batch")
async def send_notification_batch(batch: NotificationBatch) -> NotifyBatchResult:
    """Send each notification of the batch to its notifiers, all at once; report each one's
    deliveries and failures, in order, never raise for them."""
    results = await asyncio.gather(*(notify_all(n) for n in batch.notifications))
    return NotifyBatchResult(results=list(results))
