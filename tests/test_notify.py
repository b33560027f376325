"""Notifications: signed JSON webhooks to a real receiver, Slack payloads (Slack itself
cannot run here: httpx.MockTransport stands in for it), retries, and failures that are
recorded and never raised."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities import notify
from activities.notifiers.common import Settings
from activities.notify import notify_all, send_notifications
from activities.signing import EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature
from rollout.models import Notification, NotifyResult
from rollout.plan import Notifier, SlackNotifier, WebhookNotifier
from worker.example_target import create_app, running

SECRET = "notify-secret-" + uuid.uuid4().hex
SECRET_ENV = "ROLLOUT_TEST_NOTIFY_SECRET"
SLACK_URL = "https://slack.test/services/T0001/B0001/" + uuid.uuid4().hex  # the path is the secret


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings, "backoff_seconds", 0.01)
    monkeypatch.setattr(Settings, "request_timeout", 1.0)
    monkeypatch.setenv(SECRET_ENV, SECRET)


@dataclass
class Inbox:
    """A real receiver: answers with the scripted statuses, then 200."""

    script: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        status = self.script.pop(0) if self.script else 200
        return JSONResponse({"status": status}, status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/notify", self.handle, methods=["POST"])])


def notification(notifiers: list[Notifier], **overrides: Any) -> Notification:
    base: dict[str, Any] = {
        "rollout_id": "rollout-support-agent",
        "plan_name": "support-agent",
        "seq": 7,
        "event": "hold",
        "summary": "error_rate 0.05 > 0.02 for 3 evaluations: held at pilot",
        "stage": "pilot",
        "status": "held",
        "plan_hash": "ab" * 32,
        "occurred_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        "details": {"threshold": "error_rate", "value": 0.05},
        "notifiers": notifiers,
    }
    base.update(overrides)
    return Notification(**base)


def page(notifiers: list[Notifier], **overrides: Any) -> Notification:
    fields: dict[str, Any] = {
        "event": "escalation_page",
        "page": True,
        "summary": "Hold at pilot not acknowledged within 5m; paging incident_response",
        "recipients": ["carol@example.com"],
        "ack_command": "rollout ack rollout-support-agent --escalation --as carol@example.com",
        "details": {"level": 1, "role": "incident_response"},
    }
    return notification(notifiers, **{**fields, **overrides})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_webhook_gets_signed_json_without_notifiers() -> None:
    inbox = Inbox()
    async with running(inbox.app()) as base:
        url = f"{base}/notify"
        n = notification([WebhookNotifier(kind="webhook", url=url, secret_env=SECRET_ENV)])
        result = await ActivityEnvironment().run(send_notifications, n)
    assert result == NotifyResult(delivered=[url], failed={})
    [(headers, body)] = inbox.received
    verify_signature(body, headers[SIGNATURE_HEADER.lower()], SECRET)
    assert headers[IDEMPOTENCY_HEADER.lower()] == "rollout-support-agent:7:hold"
    assert headers[EVENT_HEADER.lower()] == "notification"
    doc = json.loads(body)
    assert "notifiers" not in doc
    assert doc["event"] == "hold" and doc["summary"].startswith("error_rate")
    assert doc["details"] == {"threshold": "error_rate", "value": 0.05}
    assert doc["occurred_at"] == "2030-01-02T03:04:05Z"
    assert SECRET not in body.decode() and SECRET_ENV not in body.decode()


async def test_unsigned_webhook_when_no_secret_env() -> None:
    inbox = Inbox()
    async with running(inbox.app()) as base:
        await notify_all(notification([WebhookNotifier(kind="webhook", url=f"{base}/notify")]))
    [(headers, _)] = inbox.received
    assert SIGNATURE_HEADER.lower() not in headers


async def test_escalation_page_to_slack_names_who_and_how_to_acknowledge() -> None:
    posted: list[httpx.Request] = []

    def slack(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(200, text="ok")

    n = page([SlackNotifier(kind="slack", url=SLACK_URL)])
    result = await notify_all(n, mounts={"https://slack.test": httpx.MockTransport(slack)})
    assert result.failed == {}
    [label] = result.delivered
    assert label == "https://slack.test/services/***"  # the secret path is never recorded
    [request] = posted
    assert str(request.url) == SLACK_URL
    payload = json.loads(request.content)
    text = payload["text"]
    assert "*PAGE*" in text and "carol@example.com" in text
    assert "`rollout ack rollout-support-agent --escalation --as carol@example.com`" in text
    assert "Stage: pilot" in text and "Status: held" in text
    assert payload["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": text}}


async def test_page_without_ack_command_gets_one_per_recipient() -> None:
    n = page([], ack_command=None, recipients=["carol@example.com", "alice@example.com"])
    text = notify.summary_text(n)
    assert "rollout ack rollout-support-agent --escalation --as carol@example.com" in text
    assert "rollout ack rollout-support-agent --escalation --as alice@example.com" in text
    assert notify.notification_body(n)["ack_command"].endswith("--as carol@example.com")
    assert notify.summary_text(notification([])).count("rollout ack") == 0


async def test_slack_text_escapes_markup() -> None:
    text = notify.summary_text(notification([], summary="p99 <5s & rising > limit"))
    assert "p99 &lt;5s &amp; rising &gt; limit" in text


async def test_transient_failures_are_retried_until_delivered() -> None:
    inbox = Inbox(script=[503, 500])
    async with running(inbox.app()) as base:
        n = notification([WebhookNotifier(kind="webhook", url=f"{base}/notify", secret_env=SECRET_ENV)])
        result = await ActivityEnvironment().run(send_notifications, n)
    assert result.delivered == [f"{base}/notify"] and result.failed == {}
    assert len(inbox.received) == 3
    keys = {headers[IDEMPOTENCY_HEADER.lower()] for headers, _ in inbox.received}
    assert keys == {"rollout-support-agent:7:hold"}  # the receiver can de-duplicate


async def test_failures_are_returned_never_raised() -> None:
    always_down = Inbox(script=[500, 500, 500, 500])
    refuses = Inbox(script=[404])
    fine = Inbox()
    async with running(always_down.app()) as down, running(refuses.app()) as gone, running(fine.app()) as ok:
        dead = f"http://127.0.0.1:{_free_port()}/notify"
        n = notification(
            [
                WebhookNotifier(kind="webhook", url=f"{down}/notify"),
                WebhookNotifier(kind="webhook", url=f"{gone}/notify"),
                WebhookNotifier(kind="webhook", url=dead),
                WebhookNotifier(kind="webhook", url=f"{ok}/notify?token=abc"),
                WebhookNotifier(kind="webhook", url=f"{ok}/notify", secret_env="ROLLOUT_TEST_UNSET_SECRET"),
            ]
        )
        result = await ActivityEnvironment().run(send_notifications, n)
    assert result.delivered == [f"{ok}/notify"]  # query string (a token?) not recorded
    assert result.failed == {
        f"{down}/notify": "HTTP 500: {\"status\":500} (attempt 3 of 3)",
        f"{gone}/notify": "HTTP 404: {\"status\":404}",
        dead: "unreachable: ConnectError (attempt 3 of 3)",
        f"{ok}/notify#2": "environment variable ROLLOUT_TEST_UNSET_SECRET is not set on the worker",
    }
    assert len(always_down.received) == 3 and len(refuses.received) == 1
    assert len(fine.received) == 1


async def test_example_target_receives_notifications() -> None:
    app = create_app(SECRET)
    async with running(app) as base:
        n = page([WebhookNotifier(kind="webhook", url=f"{base}/notify", secret_env=SECRET_ENV)])
        result = await notify_all(n)
        unsigned = await notify_all(page([WebhookNotifier(kind="webhook", url=f"{base}/notify")]))
    assert result.failed == {}
    assert next(iter(unsigned.failed.values())).startswith("HTTP 401")
    [received] = app.state.example.notifications
    assert received["recipients"] == ["carol@example.com"] and received["page"] is True


# ---- through a real Temporal server -------------------------------------------------------


@workflow.defn(name="NotifyProbe")
class NotifyProbe:
    """Test-only workflow: notifies like the rollout does (a few retries)."""

    @workflow.run
    async def run(self, n: Notification) -> NotifyResult:
        result: NotifyResult = await workflow.execute_activity(
            "send_notifications",
            n,
            result_type=NotifyResult,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return result


async def test_failed_notification_completes_the_activity(dev_env: WorkflowEnvironment) -> None:
    queue = f"notify-probe-{uuid.uuid4().hex[:8]}"
    inbox = Inbox(script=[500] * 10)
    async with running(inbox.app()) as base:
        n = notification([WebhookNotifier(kind="webhook", url=f"{base}/notify", secret_env=SECRET_ENV)])
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[NotifyProbe],
            activities=[send_notifications],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            handle = await dev_env.client.start_workflow(
                NotifyProbe.run, n, id=f"notify-probe-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
            result = await handle.result()
    assert result.delivered == [] and list(result.failed) == [f"{base}/notify"]
    assert len(inbox.received) == 3  # retried inside one activity attempt, then recorded
    history = await handle.fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert SECRET.encode() not in raw


async def test_deliveries_and_notifications_build_no_tls_context_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle costs ~28 ms of CPU: under a breach storm, one per request was the
    largest cost of a breach (bench/README.md). The process builds one and every client reuses it."""
    import ssl

    from activities import outbound
    from activities.targets.webhook import WebhookTarget
    from rollout.models import TargetChange
    from rollout.plan import WebhookTarget as WebhookTargetConfig

    built: list[int] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    outbound.tls.cache_clear()
    inbox = Inbox()
    exposure = Inbox()
    async with running(inbox.app()) as base, running(
        Starlette(routes=[Route("/exposure", exposure.handle, methods=["POST"])])
    ) as target_base:
        target = WebhookTarget(WebhookTargetConfig(kind="webhook", url=f"{target_base}/exposure"))
        for i in range(5):
            result = await notify_all(notification([WebhookNotifier(kind="webhook", url=f"{base}/notify")], seq=i))
            assert result.delivered == [f"{base}/notify"]
            change = TargetChange(rollout_id="r", plan_name="p", seq=i, idempotency_key=f"r:{i}", kind="hold",
                                  stage="pilot", percent=5, plan_hash="ab" * 32, reason="bench",
                                  decided_at=datetime(2030, 1, 2, tzinfo=UTC),
                                  target={"kind": "webhook", "url": f"{target_base}/exposure"})
            assert (await target.apply(change)).applied
    assert len(inbox.received) == 5 and len(exposure.received) == 5
    assert len(built) == 1  # the first client built the process's context; nine more reused it
    outbound.tls.cache_clear()


async def test_a_batch_sends_every_notification_and_reports_each_in_order() -> None:
    """The notifications of one decision (a breach: breach, hold, page) go out in one activity;
    a receiver's failure is that notification's alone."""
    from activities.notify import send_notification_batch
    from rollout.models import NotificationBatch

    good, bad = Inbox(), Inbox(script=[500] * 10)
    async with running(good.app()) as ok_base, running(bad.app()) as bad_base:
        ok = WebhookNotifier(kind="webhook", url=f"{ok_base}/notify", secret_env=SECRET_ENV)
        failing = WebhookNotifier(kind="webhook", url=f"{bad_base}/notify", secret_env=SECRET_ENV)
        batch = NotificationBatch(notifications=[
            notification([ok], event="breach", seq=7),
            notification([ok], event="hold", seq=8),
            page([ok, failing], seq=9),
        ])
        res = await ActivityEnvironment().run(send_notification_batch, batch)
    assert [r.delivered for r in res.results] == [[ok.url], [ok.url], [ok.url]]
    assert [list(r.failed) for r in res.results] == [[], [], [failing.url]]
    assert sorted(h[IDEMPOTENCY_HEADER.lower()] for h, _ in good.received) == [
        "rollout-support-agent:7:breach", "rollout-support-agent:8:hold", "rollout-support-agent:9:escalation_page"]
