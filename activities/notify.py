"""Notifications: every stage change, hold, breach, escalation page and completion goes
to each `notify` entry of the plan.

Kinds (docs/targets.md):
- `webhook`: the notification as JSON (without the notifier list), with the same
  headers as exposure webhooks (`Idempotency-Key`, `X-Rollout-Event: notification`,
  and `X-Rollout-Signature` when `secret_env` is set);
- `slack`: an incoming-webhook payload `{"text": ..., "blocks": [...]}` with a
  readable summary; a page names who is paged and the command that acknowledges it.

A failed notification never fails the rollout: each receiver is tried a few times with
backoff inside the activity, and the activity returns which receivers got it and which
did not (recorded by the workflow). It never raises for a receiver's failure. Receiver
URLs are recorded redacted (no credentials or query; Slack's secret path masked).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from temporalio import activity

from activities.outbound import build_headers, classify, dumps, redact_url, snippet
from rollout.models import Notification, NotifyResult
from rollout.plan import Notifier

ATTEMPTS = 3  # per receiver, inside one activity attempt
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt
TIMEOUT_SECONDS = 5.0  # per HTTP request

_ICONS = {
    "started": ":rocket:",
    "stage_entered": ":arrow_up:",
    "approval_reminder": ":hourglass:",
    "hold": ":double_vertical_bar:",
    "narrow": ":arrow_down_small:",
    "rollback": ":rewind:",
    "breach": ":warning:",
    "escalation_page": ":rotating_light:",
    "resumed": ":arrow_forward:",
    "rejected": ":no_entry:",
    "handoff_complete": ":handshake:",
    "amended": ":memo:",
    "completed": ":white_check_mark:",
    "aborted": ":octagonal_sign:",
    "target_undeliverable": ":satellite_antenna:",
}


class _NotDelivered(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def idempotency_key(n: Notification) -> str:
    return f"{n.rollout_id}:{n.seq}:{n.event}"


def ack_commands(n: Notification) -> list[str]:
    """The command(s) that acknowledge a page: the given one, or one per paged identity."""
    if n.ack_command:
        return [n.ack_command]
    if not n.page:
        return []
    if not n.recipients:
        return [f"rollout ack {n.rollout_id} --escalation"]
    return [f"rollout ack {n.rollout_id} --escalation --as {who}" for who in n.recipients]


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


def _request(notifier: Notifier, n: Notification) -> tuple[bytes, dict[str, str]]:
    if notifier.kind == "slack":
        body = dumps(slack_payload(n))
        return body, {"Content-Type": "application/json"}
    secret: str | None = None
    if notifier.secret_env:
        secret = os.environ.get(notifier.secret_env)
        if not secret:
            raise _NotDelivered(f"environment variable {notifier.secret_env} is not set on the worker", False)
    body = dumps(notification_body(n))
    return body, build_headers(body, secret=secret, idempotency_key=idempotency_key(n), event="notification")


async def _post_once(client: httpx.AsyncClient, notifier: Notifier, body: bytes, headers: dict[str, str]) -> None:
    try:
        response = await client.post(notifier.url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise _NotDelivered(f"no answer within {TIMEOUT_SECONDS:g}s", True) from None
    except httpx.TransportError as exc:
        raise _NotDelivered(f"unreachable: {type(exc).__name__}", True) from None
    verdict = classify(response.status_code)
    if verdict != "applied":
        raise _NotDelivered(f"HTTP {response.status_code}: {snippet(response.text, 120)}", verdict == "retry")


async def deliver(client: httpx.AsyncClient, notifier: Notifier, n: Notification) -> str | None:
    """Send to one receiver with retries; return None when delivered, else the last error."""
    try:
        body, headers = _request(notifier, n)
    except _NotDelivered as exc:
        return str(exc)
    delay = BACKOFF_SECONDS
    error = "not attempted"
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await _post_once(client, notifier, body, headers)
            return None
        except _NotDelivered as exc:
            error = f"{exc} (attempt {attempt} of {ATTEMPTS})"
            if not exc.retryable:
                return str(exc)
        if attempt < ATTEMPTS:
            await asyncio.sleep(delay)
            delay *= 2
    return error


def _labels(notifiers: list[Notifier]) -> list[str]:
    labels: list[str] = []
    for notifier in notifiers:
        label = redact_url(notifier.url)
        base, i = label, 2
        while label in labels:
            label, i = f"{base}#{i}", i + 1
        labels.append(label)
    return labels


async def notify_all(
    n: Notification, mounts: dict[str, httpx.AsyncBaseTransport] | None = None
) -> NotifyResult:
    """Send `n` to every notifier concurrently; `mounts` routes URL prefixes to other
    transports (a proxy, or a stand-in for a third-party service that cannot run here)."""
    result = NotifyResult()
    if not n.notifiers:
        return result
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False, mounts=mounts) as client:
        errors = await asyncio.gather(*(deliver(client, notifier, n) for notifier in n.notifiers))
    for label, error in zip(_labels(n.notifiers), errors, strict=True):
        if error is None:
            result.delivered.append(label)
        else:
            result.failed[label] = error
            if activity.in_activity():
                activity.logger.warning("notification %s to %s not delivered: %s", n.event, label, error)
    return result


@activity.defn(name="send_notifications")
async def send_notifications(n: Notification) -> NotifyResult:
    """Send `n` to every notifier; report deliveries and failures, never raise for them."""
    return await notify_all(n)
