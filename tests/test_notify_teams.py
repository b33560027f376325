"""Microsoft Teams (cannot run here: httpx.MockTransport stands in for the workflow
webhook): the notification as an Adaptive Card, checked against the schema of the card
elements it uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from activities.notifiers.common import Settings
from activities.notify import notify_all
from rollout.models import Notification
from rollout.plan import TeamsNotifier

URL = "https://prod.example.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=SECRETSIG"

# The Adaptive Card schema (adaptive-card.json, version 1.4), for the elements the card
# uses: each type's allowed properties, the required ones and the enumerations.
SCHEMA: dict[str, dict[str, Any]] = {
    "AdaptiveCard": {
        "required": {"type", "version"},
        "allowed": {"type", "version", "body", "actions", "$schema", "fallbackText", "speak", "lang", "msteams"},
    },
    "TextBlock": {
        "required": {"type", "text"},
        "allowed": {"type", "text", "wrap", "weight", "size", "color", "isSubtle", "spacing", "separator",
                    "horizontalAlignment", "maxLines", "fontType", "id", "isVisible", "style"},
        "enums": {
            "weight": {"Default", "Lighter", "Bolder"},
            "size": {"Default", "Small", "Medium", "Large", "ExtraLarge"},
            "color": {"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"},
        },
        "types": {"text": str, "wrap": bool, "isSubtle": bool},
    },
    "FactSet": {"required": {"type", "facts"}, "allowed": {"type", "facts", "spacing", "separator", "id", "isVisible"}},
    "Fact": {"required": {"title", "value"}, "allowed": {"title", "value"}, "types": {"title": str, "value": str}},
    "Action.OpenUrl": {"required": {"type", "url"}, "allowed": {"type", "url", "title", "iconUrl", "id", "style"},
                       "types": {"url": str, "title": str}},
}


def check(element: dict[str, Any], kind: str) -> None:
    rule = SCHEMA[kind]
    keys = set(element)
    assert rule["required"] <= keys, f"{kind} lacks {rule['required'] - keys}"
    assert keys <= rule["allowed"], f"{kind} has properties outside the schema: {keys - rule['allowed']}"
    for prop, allowed in rule.get("enums", {}).items():
        if prop in element:
            assert element[prop] in allowed, f"{kind}.{prop} = {element[prop]!r} not in {allowed}"
    for prop, typ in rule.get("types", {}).items():
        if prop in element:
            assert isinstance(element[prop], typ), f"{kind}.{prop} is not {typ.__name__}"


def check_card(card: dict[str, Any]) -> None:
    assert card["type"] == "AdaptiveCard"
    check(card, "AdaptiveCard")
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    for element in card["body"]:
        check(element, element["type"])
        if element["type"] == "FactSet":
            for fact in element["facts"]:
                check(fact, "Fact")
    for action in card.get("actions", []):
        check(action, action["type"])


def page() -> Notification:
    return Notification(
        rollout_id="rollout-support-agent",
        plan_name="support-agent",
        seq=9,
        event="escalation_page",
        summary="Hold at pilot not acknowledged within 5m",
        stage="pilot",
        status="held",
        plan_hash="cd" * 32,
        occurred_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        page=True,
        recipients=["carol@example.com"],
        ack_command="rollout ack rollout-support-agent --escalation --as carol@example.com",
        details={"escalation_id": "rollout-support-agent:esc:1"},
        notifiers=[TeamsNotifier(kind="teams", url=URL)],
    )


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_PUBLIC_URL", "https://rollouts.example.com")
    monkeypatch.setattr(Settings, "backoff_seconds", 0.01)


async def test_page_is_an_adaptive_card_message_with_the_fields_the_schema_allows() -> None:
    posted: list[httpx.Request] = []

    def teams(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(202)

    result = await notify_all(page(), mounts={"https://prod.example.logic.azure.com": httpx.MockTransport(teams)})
    assert result.failed == {}
    assert result.delivered == ["https://prod.example.logic.azure.com/workflows/abc/triggers/manual/paths/invoke"]
    [request] = posted
    assert str(request.url) == URL
    message = json.loads(request.content)
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    check_card(card)
    title, summary, facts, ack, footer = card["body"]
    assert title["text"] == "PAGE: support-agent: escalation page" and title["color"] == "Attention"
    assert summary["text"] == "Hold at pilot not acknowledged within 5m"
    assert {f["title"]: f["value"] for f in facts["facts"]} == {
        "Rollout": "rollout-support-agent",
        "Stage": "pilot",
        "Status": "held",
        "When": "2030-01-02T03:04:05+00:00",
        "Paged": "carol@example.com",
    }
    assert ack["text"] == "Acknowledge with: rollout ack rollout-support-agent --escalation --as carol@example.com"
    assert footer["isSubtle"] is True and "decision 9" in footer["text"]
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open the approval inbox", "url": "https://rollouts.example.com/inbox"}
    ]


async def test_stage_change_card_has_no_acknowledge_line_and_a_good_colour() -> None:
    from activities.notifiers.teams import card

    n = page().model_copy(update={"event": "stage_entered", "page": False, "recipients": [], "ack_command": None})
    c = card(n)
    check_card(c)
    assert c["body"][0]["color"] == "Good"
    assert not any(b["text"].startswith("Acknowledge") for b in c["body"] if b["type"] == "TextBlock")


async def test_throttled_teams_is_retried() -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(202)]

    def teams(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    result = await notify_all(page(), mounts={"https://prod.example.logic.azure.com": httpx.MockTransport(teams)})
    assert result.failed == {} and answers == []
