"""Microsoft Teams through a workflow webhook ("When a Teams webhook request is received"):
the notification as an Adaptive Card (schema 1.4) in a `message` with one attachment.

Elements used: TextBlock (type, text, wrap, weight, size, color, isSubtle), FactSet (type,
facts: title/value) and Action.OpenUrl (type, title, url), nothing else. Teams answers
202; 429 and 5xx are retried honouring Retry-After.
"""

from __future__ import annotations

from typing import Any

import httpx

from activities.notifiers.common import ack_commands, inbox_link, post_with_retries
from activities.outbound import USER_AGENT, dumps
from rollout.models import Notification
from rollout.plan import TeamsNotifier

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"

_ATTENTION = {"hold", "narrow", "rollback", "breach", "escalation_page", "rejected", "aborted", "target_undeliverable"}
_GOOD = {"stage_entered", "resumed", "completed", "handoff_complete", "escalation_acknowledged"}


def _color(n: Notification) -> str:
    if n.page or n.event in _ATTENTION:
        return "Attention"
    if n.event in _GOOD:
        return "Good"
    return "Default"


def card(n: Notification) -> dict[str, Any]:
    title = f"{'PAGE: ' if n.page else ''}{n.plan_name}: {n.event.replace('_', ' ')}"
    facts = [
        {"title": "Rollout", "value": n.rollout_id},
        {"title": "Stage", "value": n.stage or "-"},
        {"title": "Status", "value": n.status},
        {"title": "When", "value": n.occurred_at.isoformat()},
    ]
    if n.recipients:
        facts.append({"title": "Paged" if n.page else "For", "value": ", ".join(n.recipients)})
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "color": _color(n), "wrap": True},
        {"type": "TextBlock", "text": n.summary, "wrap": True},
        {"type": "FactSet", "facts": facts},
    ]
    commands = ack_commands(n)
    if commands:
        body.append({"type": "TextBlock", "text": "Acknowledge with: " + " or ".join(commands), "wrap": True})
    body.append({"type": "TextBlock", "text": f"plan {n.plan_hash[:12]} · decision {n.seq}", "isSubtle": True, "wrap": True})
    return {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
        "actions": [{"type": "Action.OpenUrl", "title": "Open the approval inbox", "url": inbox_link()}],
    }


def message(n: Notification) -> dict[str, Any]:
    return {"type": "message", "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card(n)}]}


async def send(client: httpx.AsyncClient, notifier: TeamsNotifier, n: Notification) -> str | None:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    return await post_with_retries(client, notifier.url, dumps(message(n)), headers)
