"""PagerDuty Events API v2 (PagerDuty cannot run here: httpx.MockTransport stands in for
it): escalation pages trigger one incident per escalation, acknowledgement acknowledges
it, resume resolves it; 429 and 5xx are retried honouring Retry-After."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from activities.notifiers.common import Settings, retry_after_seconds
from activities.notify import notify_all
from rollout.models import Notification
from rollout.plan import PAGERDUTY_EVENTS_URL, PagerDutyNotifier, WebhookNotifier

KEY_ENV = "ROLLOUT_TEST_PD_KEY"
KEY = "R0UTINGKEY0123456789abcdef012345"
PD = PagerDutyNotifier(kind="pagerduty", routing_key_env=KEY_ENV)
ESC = "rollout-support-agent:esc:3"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("ROLLOUT_PUBLIC_URL", "https://rollouts.example.com/")
    monkeypatch.setattr(Settings, "backoff_seconds", 0.01)


class PagerDuty:
    """Scripted answers (status, headers), then 202 as the real API answers."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        status, headers = self.script.pop(0) if self.script else (202, {})
        if status == 202:
            body = {"status": "success", "message": "Event processed", "dedup_key": json.loads(request.content)["dedup_key"]}
            return httpx.Response(202, json=body)
        return httpx.Response(status, json={"status": "throttled" if status == 429 else "error"}, headers=headers)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def mounts(self) -> dict[str, httpx.AsyncBaseTransport]:
        return {"https://events.pagerduty.com": httpx.MockTransport(self)}


def notification(event: str, **overrides: Any) -> Notification:
    base: dict[str, Any] = {
        "rollout_id": "rollout-support-agent",
        "plan_name": "support-agent",
        "seq": 12,
        "event": event,
        "summary": "held at pilot: error_rate 0.05 > 0.02",
        "stage": "pilot",
        "status": "held",
        "plan_hash": "ab" * 32,
        "occurred_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        "details": {"escalation_id": ESC},
        "notifiers": [PD],
    }
    base.update(overrides)
    return Notification(**base)


def escalation_page(**overrides: Any) -> Notification:
    fields: dict[str, Any] = {
        "page": True,
        "recipients": ["carol@example.com"],
        "ack_command": "rollout ack rollout-support-agent --escalation --as carol@example.com",
        "details": {"escalation_id": ESC, "level": 0, "role": "incident_response"},
    }
    return notification("escalation_page", **{**fields, **overrides})


async def test_escalation_page_triggers_with_every_field() -> None:
    pd = PagerDuty()
    result = await notify_all(escalation_page(), mounts=pd.mounts())
    assert result.failed == {}
    assert result.delivered == [f"pagerduty {PAGERDUTY_EVENTS_URL} (${KEY_ENV})"]  # the key itself never recorded
    [request] = pd.requests
    assert request.method == "POST" and str(request.url) == PAGERDUTY_EVENTS_URL
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert set(body) == {"routing_key", "event_action", "dedup_key", "payload", "client", "client_url", "links"}
    assert body["routing_key"] == KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == ESC
    assert body["client"] == "Staged rollout controller"
    assert body["client_url"] == "https://rollouts.example.com/inbox"
    assert body["links"] == [{"href": "https://rollouts.example.com/inbox", "text": "Approval inbox"}]
    payload = body["payload"]
    assert set(payload) == {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
    assert payload["summary"] == "support-agent: held at pilot: error_rate 0.05 > 0.02"
    assert payload["source"] == "rollout-support-agent"
    assert payload["severity"] == "critical"
    assert payload["timestamp"] == "2030-01-02T03:04:05+00:00"
    assert payload["component"] == "support-agent"
    assert payload["group"] == "pilot"
    assert payload["class"] == "escalation_page"
    details = payload["custom_details"]
    assert details["rollout"] == "rollout-support-agent"
    assert details["status"] == "held"
    assert details["paged"] == ["carol@example.com"]
    assert details["acknowledge_with"] == ["rollout ack rollout-support-agent --escalation --as carol@example.com"]
    assert details["plan_hash"] == "ab" * 32 and details["sequence"] == 12
    assert details["escalation_id"] == ESC and details["level"] == 0 and details["role"] == "incident_response"


async def test_every_page_of_one_escalation_shares_a_dedup_key_and_a_new_escalation_gets_its_own() -> None:
    pd = PagerDuty()
    await notify_all(escalation_page(seq=12), mounts=pd.mounts())
    await notify_all(escalation_page(seq=15, details={"escalation_id": ESC, "level": 1}), mounts=pd.mounts())
    await notify_all(escalation_page(seq=30, details={"escalation_id": "rollout-support-agent:esc:4"}), mounts=pd.mounts())
    assert [b["dedup_key"] for b in pd.bodies()] == [ESC, ESC, "rollout-support-agent:esc:4"]


async def test_acknowledging_the_escalation_acknowledges_the_incident() -> None:
    pd = PagerDuty()
    n = notification("escalation_acknowledged", summary="carol acknowledged", status="held")
    result = await notify_all(n, mounts=pd.mounts())
    assert result.failed == {} and len(result.delivered) == 1
    assert pd.bodies() == [{"routing_key": KEY, "event_action": "acknowledge", "dedup_key": ESC}]


async def test_resume_resolves_the_incident() -> None:
    pd = PagerDuty()
    n = notification("resumed", summary="resumed by carol", status="soaking")
    await notify_all(n, mounts=pd.mounts())
    assert pd.bodies() == [{"routing_key": KEY, "event_action": "resolve", "dedup_key": ESC}]


async def test_stage_changes_are_not_sent_to_pagerduty() -> None:
    pd = PagerDuty()
    result = await notify_all(notification("stage_entered", status="soaking"), mounts=pd.mounts())
    assert pd.requests == [] and result.delivered == [] and result.failed == {}


async def test_without_escalation_id_the_key_is_stable_per_rollout() -> None:
    pd = PagerDuty()
    await notify_all(escalation_page(details={}), mounts=pd.mounts())
    await notify_all(notification("resumed", details={}), mounts=pd.mounts())
    assert [b["dedup_key"] for b in pd.bodies()] == ["rollout-support-agent:escalation"] * 2


async def test_429_is_retried_after_the_retry_after_delay() -> None:
    pd = PagerDuty(script=[(429, {"Retry-After": "1"})])
    result = await notify_all(escalation_page(), mounts=pd.mounts())
    assert result.failed == {} and len(pd.requests) == 2
    assert pd.times[1] - pd.times[0] >= 0.95  # waited what PagerDuty asked, not the 0.01s backoff
    assert pd.bodies()[0] == pd.bodies()[1]  # the same event again: the same dedup_key


async def test_5xx_is_retried_then_recorded_as_failed() -> None:
    pd = PagerDuty(script=[(500, {}), (503, {"Retry-After": "0"}), (502, {})])
    result = await notify_all(escalation_page(), mounts=pd.mounts())
    assert result.delivered == [] and len(pd.requests) == 3
    [error] = result.failed.values()
    assert error.startswith("HTTP 502") and error.endswith("(attempt 3 of 3)")


async def test_400_is_not_retried() -> None:
    pd = PagerDuty(script=[(400, {})])
    result = await notify_all(escalation_page(), mounts=pd.mounts())
    assert len(pd.requests) == 1 and next(iter(result.failed.values())).startswith("HTTP 400")


async def test_missing_routing_key_is_a_recorded_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    pd = PagerDuty()
    result = await notify_all(escalation_page(), mounts=pd.mounts())
    assert pd.requests == []
    assert list(result.failed.values()) == [f"environment variable {KEY_ENV} is not set on the worker"]


async def test_long_summary_is_cut_to_the_api_limit() -> None:
    pd = PagerDuty()
    await notify_all(escalation_page(summary="x" * 5000), mounts=pd.mounts())
    assert len(pd.bodies()[0]["payload"]["summary"]) == 1024


async def test_a_slow_pagerduty_delays_no_other_notifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each notifier has its own deadline and they run concurrently."""
    from activities import notify

    monkeypatch.setitem(notify.DEADLINE_SECONDS, "pagerduty", 0.5)
    seen: dict[str, float] = {}

    async def slow(request: httpx.Request) -> httpx.Response:
        import asyncio

        await asyncio.sleep(5)
        return httpx.Response(202, json={})

    async def hook(request: httpx.Request) -> httpx.Response:
        seen["hook"] = time.monotonic()
        return httpx.Response(200)

    n = escalation_page(notifiers=[PD, WebhookNotifier(kind="webhook", url="http://hook.test/n")])
    start = time.monotonic()
    result = await notify_all(
        n,
        mounts={"https://events.pagerduty.com": httpx.MockTransport(slow), "http://hook.test": httpx.MockTransport(hook)},
    )
    elapsed = time.monotonic() - start
    assert result.delivered == ["http://hook.test/n"]
    assert result.failed == {f"pagerduty {PAGERDUTY_EVENTS_URL} (${KEY_ENV})": "gave up after 0.5s (retries included)"}
    assert seen["hook"] - start < 0.3 and elapsed < 1.5


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Tue, 01 Jan 2030 00:00:30 GMT", now) == 30.0
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
