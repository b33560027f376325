"""PagerDuty Events API v2 (https://developer.pagerduty.com/docs/events-api-v2/overview).

- `escalation_page` -> `trigger`, `dedup_key` = the escalation's id, so every page of one
  escalation (re-pages, the next level, the whole chain) lands on one incident;
- `escalation_acknowledged` -> `acknowledge` of that incident;
- `resumed` -> `resolve` (a resume acknowledges and ends the escalation);
- anything else is not for PagerDuty (skipped).

The routing key comes from the worker's environment (`routing_key_env`), never the plan.
429 and 5xx answers are retried, honouring Retry-After.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import httpx

from activities.notifiers.common import SKIPPED, ack_commands, escalation_id, inbox_link, post_with_retries
from activities.outbound import USER_AGENT, dumps
from rollout.models import Notification
from rollout.plan import PagerDutyNotifier

EventAction = Literal["trigger", "acknowledge", "resolve"]
SUMMARY_LIMIT = 1024  # Events API v2: payload.summary is at most 1024 characters

_ACTIONS: dict[str, EventAction] = {
    "escalation_page": "trigger",
    "escalation_acknowledged": "acknowledge",
    "resumed": "resolve",
}


def event_action(n: Notification) -> EventAction | None:
    return _ACTIONS.get(n.event)


def dedup_key(n: Notification) -> str:
    """Stable per rollout and escalation (at most 255 characters, as the API requires)."""
    return escalation_id(n)[:255]


def event_body(notifier: PagerDutyNotifier, n: Notification, routing_key: str) -> dict[str, Any] | None:
    """The Events API v2 request body for `n`, or None when `n` is not for PagerDuty."""
    action = event_action(n)
    if action is None:
        return None
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key(n)}
    if action != "trigger":
        return body
    details: dict[str, Any] = {
        "rollout": n.rollout_id,
        "status": n.status,
        "paged": n.recipients,
        "acknowledge_with": ack_commands(n),
        "plan_hash": n.plan_hash,
        "sequence": n.seq,
    }
    details.update({k: v for k, v in n.details.items() if k not in details})
    summary = f"{n.plan_name}: {n.summary}"
    body["payload"] = {
        "summary": summary if len(summary) <= SUMMARY_LIMIT else summary[: SUMMARY_LIMIT - 1] + "…",
        "source": n.rollout_id,
        "severity": notifier.severity,
        "timestamp": n.occurred_at.isoformat(),
        "component": n.plan_name,
        "group": n.stage or "",
        "class": n.event,
        "custom_details": details,
    }
    body["client"] = "Staged rollout controller"
    body["client_url"] = inbox_link()
    body["links"] = [{"href": inbox_link(), "text": "Approval inbox"}]
    return body


async def send(client: httpx.AsyncClient, notifier: PagerDutyNotifier, n: Notification) -> str | None:
    if event_action(n) is None:
        return SKIPPED
    routing_key = os.environ.get(notifier.routing_key_env)
    if not routing_key:
        return f"environment variable {notifier.routing_key_env} is not set on the worker"
    body = event_body(notifier, n, routing_key)
    assert body is not None
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    return await post_with_retries(client, notifier.url, dumps(body), headers)
