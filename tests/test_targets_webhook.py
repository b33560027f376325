"""The `webhook` exposure target against real HTTP receivers (uvicorn on 127.0.0.1).

Covers: the signed body and headers, the verifier, misconfiguration, the meaning of
status codes, and, through a real Temporal dev server with a retry policy, that a
retried activity applies once (500 then 200, 500 after applying, timeout after
applying, connection refused), that a 4xx fails at once, and that no secret reaches
the workflow history. Also the example target (worker/example_target.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections import Counter
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
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.signing import (
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    compute_signature,
    sign,
    verify_signature,
)
from activities.targets import TargetUnavailable, apply_exposure
from rollout.models import TargetChange, TargetResult
from worker.example_target import create_app, running

SECRET = "s3cret-for-webhook-tests-" + uuid.uuid4().hex
SECRET_ENV = "ROLLOUT_TEST_WEBHOOK_SECRET"


# ---- a real receiver with scripted behaviour ------------------------------------------


@dataclass
class Receiver:
    """Applies each idempotency key once; `script` says how to answer each request."""

    secret: str
    script: list[str] = field(default_factory=list)
    deliveries: list[tuple[str, bytes, str]] = field(default_factory=list)  # key, body, signature
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    effects: Counter[str] = field(default_factory=Counter)  # key -> times the state changed
    bad_signatures: int = 0

    def apply(self, key: str, doc: dict[str, Any]) -> None:
        if key not in self.applied:
            self.applied[key] = doc
            self.effects[key] += 1

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        try:
            verify_signature(body, signature, self.secret)
        except SignatureError as exc:
            self.bad_signatures += 1
            return JSONResponse({"error": str(exc)}, status_code=401)
        key = request.headers[IDEMPOTENCY_HEADER]
        self.deliveries.append((key, body, signature))
        doc = json.loads(body)
        step = self.script.pop(0) if self.script else "ok"
        if step == "500":
            return JSONResponse({"error": "database is down"}, status_code=500)
        if step == "500-after-apply":
            self.apply(key, doc)
            return JSONResponse({"error": "crashed after commit"}, status_code=500)
        if step == "slow-after-apply":
            self.apply(key, doc)
            await asyncio.sleep(1.6)
            return JSONResponse({"applied": True})
        if step.isdigit():
            return JSONResponse({"error": "scope not allowed here"}, status_code=int(step))
        self.apply(key, doc)
        return JSONResponse({"applied": True})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/exposure", self.handle, methods=["POST"])])


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return SECRET_ENV


def change(url: str, seq: int = 1, **target: Any) -> TargetChange:
    rollout_id = f"rollout-hooktest-{uuid.uuid4().hex[:8]}"
    return TargetChange(
        rollout_id=rollout_id,
        plan_name="hooktest",
        seq=seq,
        idempotency_key=f"{rollout_id}:{seq}",
        kind="promote",
        stage="pilot",
        percent=5,
        segments=["internal"],
        authority={"read": "auto", "draft": "auto", "refund": "forbid"},
        plan_hash="ab" * 32,
        reason="entry approved by engineering",
        decided_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        target={"kind": "webhook", "url": url, "secret_env": SECRET_ENV, "timeout": "1s", **target},
    )


# ---- the activity on its own ----------------------------------------------------------


async def test_sends_signed_json_with_idempotency_key(secret_env: str) -> None:
    receiver = Receiver(SECRET)
    async with running(receiver.app()) as base:
        c = change(f"{base}/exposure")
        result = await ActivityEnvironment().run(apply_exposure, c)
    assert result.applied and "200" in result.detail
    [(key, body, signature)] = receiver.deliveries
    assert key == c.idempotency_key
    assert verify_signature(body, signature, SECRET) > 0
    doc = json.loads(body)
    assert doc == {
        "rollout": c.rollout_id,
        "run_id": "test-run",
        "plan": "hooktest",
        "seq": 1,
        "idempotency_key": c.idempotency_key,
        "kind": "promote",
        "stage": "pilot",
        "scope": {"percent": 5, "segments": ["internal"]},
        "authority": {"draft": "auto", "read": "auto", "refund": "forbid"},
        "frozen": False,
        "plan_hash": "ab" * 32,
        "reason": "entry approved by engineering",
        "decided_at": "2030-01-02T03:04:05+00:00",
    }
    assert SECRET not in body.decode() and SECRET not in result.model_dump_json()


async def test_event_header_and_content_type(secret_env: str) -> None:
    seen: list[httpx.Headers] = []

    async def handle(request: Request) -> Response:
        seen.append(httpx.Headers(dict(request.headers)))
        return JSONResponse({})

    async with running(Starlette(routes=[Route("/x", handle, methods=["POST"])])) as base:
        await ActivityEnvironment().run(apply_exposure, change(f"{base}/x"))
    assert seen[0]["content-type"] == "application/json"
    assert seen[0][EVENT_HEADER] == "exposure"
    assert seen[0][SIGNATURE_HEADER].startswith("t=")


def test_verifier_refuses_tampering_replays_and_wrong_keys() -> None:
    body = b'{"rollout":"r","seq":1}'
    header = sign(body, SECRET, timestamp=1_900_000_000)
    assert verify_signature(body, header, SECRET, now=1_900_000_010) == 1_900_000_000
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(body.replace(b"1", b"2"), header, SECRET, now=1_900_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(body, header, "another-secret", now=1_900_000_010)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature(body, header, SECRET, now=1_900_000_000 + 301)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature(body, None, SECRET)
    with pytest.raises(SignatureError, match="no v1"):
        verify_signature(body, "t=1900000000", SECRET, now=1_900_000_000)
    # the timestamp is signed: moving it forward breaks the signature
    forged = f"t=1900000100,v1={compute_signature(body, SECRET, 1_900_000_000)}"
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(body, forged, SECRET, now=1_900_000_100)
    # key rotation: any listed v1 signature may match
    rotated = f"t=1900000000,v1={'0' * 64},v1={compute_signature(body, SECRET, 1_900_000_000)}"
    assert verify_signature(body, rotated, SECRET, now=1_900_000_000)


async def test_missing_secret_env_is_misconfigured_and_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    receiver = Receiver(SECRET)
    async with running(receiver.app()) as base:
        with pytest.raises(ApplicationError) as err:
            await ActivityEnvironment().run(apply_exposure, change(f"{base}/exposure"))
    assert err.value.type == "TargetMisconfigured" and err.value.non_retryable
    assert SECRET_ENV in str(err.value)
    assert receiver.deliveries == []


async def test_unknown_kind_and_bad_block_are_misconfigured() -> None:
    c = change("http://127.0.0.1:9/x")
    bad = c.model_copy(update={"target": {"kind": "carrier-pigeon"}})
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(apply_exposure, bad)
    assert err.value.type == "TargetMisconfigured" and "carrier-pigeon" in str(err.value)
    bad = c.model_copy(update={"target": {"kind": "webhook", "url": "ftp://x"}})
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(apply_exposure, bad)
    assert err.value.type == "TargetMisconfigured" and "url" in str(err.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 302])
async def test_refusals_are_non_retryable_rejections(secret_env: str, status: int) -> None:
    receiver = Receiver(SECRET, script=[str(status)])
    async with running(receiver.app()) as base:
        with pytest.raises(ApplicationError) as err:
            await ActivityEnvironment().run(apply_exposure, change(f"{base}/exposure"))
    assert err.value.type == "TargetRejected" and err.value.non_retryable
    assert str(status) in str(err.value)
    assert SECRET not in str(err.value)
    assert receiver.applied == {}


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_server_errors_are_transient(secret_env: str, status: int) -> None:
    receiver = Receiver(SECRET, script=[str(status)])
    async with running(receiver.app()) as base:
        with pytest.raises(TargetUnavailable, match=str(status)):
            await ActivityEnvironment().run(apply_exposure, change(f"{base}/exposure"))


async def test_timeout_and_refused_connection_are_transient(secret_env: str) -> None:
    receiver = Receiver(SECRET, script=["slow-after-apply"])
    async with running(receiver.app()) as base:
        with pytest.raises(TargetUnavailable, match="did not answer within 1s"):
            await ActivityEnvironment().run(apply_exposure, change(f"{base}/exposure"))
    with pytest.raises(TargetUnavailable, match="unreachable"):
        await ActivityEnvironment().run(apply_exposure, change(f"http://127.0.0.1:{_free_port()}/exposure"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- through a real Temporal server: retries apply once --------------------------------

RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=1),
    maximum_attempts=6,
)


@workflow.defn(name="ExposureProbe")
class ExposureProbe:
    """Test-only workflow: applies one change with a retry policy, like the rollout does."""

    @workflow.run
    async def run(self, change: TargetChange) -> TargetResult:
        return await workflow.execute_activity(
            "apply_exposure",
            change,
            result_type=TargetResult,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RETRY,
        )


async def _run_probe(env: WorkflowEnvironment, c: TargetChange) -> TargetResult:
    queue = f"exposure-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ExposureProbe],
        activities=[apply_exposure],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        return await env.client.execute_workflow(
            ExposureProbe.run, c, id=c.rollout_id, task_queue=queue, result_type=TargetResult
        )


def _assert_applied_once(receiver: Receiver, c: TargetChange, deliveries: int) -> None:
    assert len(receiver.deliveries) == deliveries
    assert {key for key, _, _ in receiver.deliveries} == {c.idempotency_key}
    assert len({body for _, body, _ in receiver.deliveries}) == 1  # retries send the same bytes
    assert receiver.effects == Counter({c.idempotency_key: 1})
    assert receiver.bad_signatures == 0


@pytest.mark.parametrize("script", [["500"], ["500-after-apply"], ["503", "500-after-apply"]])
async def test_retried_activity_applies_once(dev_env: WorkflowEnvironment, secret_env: str, script: list[str]) -> None:
    receiver = Receiver(SECRET, script=list(script))
    async with running(receiver.app()) as base:
        c = change(f"{base}/exposure")
        result = await _run_probe(dev_env, c)
    assert result.applied
    _assert_applied_once(receiver, c, deliveries=len(script) + 1)
    doc = json.loads(receiver.deliveries[0][1])
    assert doc["run_id"] not in ("", None, "test-run")  # the real workflow run


async def test_timeout_after_applying_is_retried_and_applies_once(
    dev_env: WorkflowEnvironment, secret_env: str
) -> None:
    receiver = Receiver(SECRET, script=["slow-after-apply"])
    async with running(receiver.app()) as base:
        c = change(f"{base}/exposure")
        result = await _run_probe(dev_env, c)
    assert result.applied
    _assert_applied_once(receiver, c, deliveries=2)


async def test_unreachable_receiver_is_retried_until_it_listens(
    dev_env: WorkflowEnvironment, secret_env: str
) -> None:
    port = _free_port()
    receiver = Receiver(SECRET)
    c = change(f"http://127.0.0.1:{port}/exposure")
    probe = asyncio.create_task(_run_probe(dev_env, c))
    await asyncio.sleep(1.0)  # a couple of refused attempts
    assert not probe.done()
    async with running(receiver.app(), port=port):
        result = await asyncio.wait_for(probe, 15)
    assert result.applied
    _assert_applied_once(receiver, c, deliveries=1)


async def test_4xx_fails_at_once_without_retries(dev_env: WorkflowEnvironment, secret_env: str) -> None:
    receiver = Receiver(SECRET, script=["422", "422", "422"])
    async with running(receiver.app()) as base:
        c = change(f"{base}/exposure")
        with pytest.raises(WorkflowFailureError) as err:
            await _run_probe(dev_env, c)
    cause = err.value.cause
    assert isinstance(cause, ActivityError)
    assert isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "TargetRejected" and cause.cause.non_retryable
    assert len(receiver.deliveries) == 1
    assert receiver.applied == {}


async def test_secret_never_reaches_workflow_history(dev_env: WorkflowEnvironment, secret_env: str) -> None:
    receiver = Receiver(SECRET, script=["500", "422"])  # a retry and a failure, both recorded
    async with running(receiver.app()) as base:
        c = change(f"{base}/exposure")
        with pytest.raises(WorkflowFailureError):
            await _run_probe(dev_env, c)
    history = await dev_env.client.get_workflow_handle(c.rollout_id).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)  # payloads undecoded
    assert SECRET_ENV.encode() in raw  # the env var name is in the plan's target block
    assert b"TargetRejected" in raw
    assert SECRET.encode() not in raw


# ---- the example target ---------------------------------------------------------------


async def test_example_target_verifies_applies_once_and_serves_scope(secret_env: str) -> None:
    app = create_app(SECRET)
    async with running(app) as base:
        c = change(f"{base}/exposure")
        env = ActivityEnvironment()
        first = await env.run(apply_exposure, c)
        again = await env.run(apply_exposure, c)
        assert first.applied and again.applied
        async with httpx.AsyncClient() as client:
            state = (await client.get(f"{base}/exposure")).json()
            assert state[c.rollout_id]["scope"] == {"percent": 5, "segments": ["internal"]}
            assert state[c.rollout_id]["authority"]["refund"] == "forbid"
            unsigned = await client.post(
                f"{base}/exposure", content=b"{}", headers={IDEMPOTENCY_HEADER: "k"}
            )
            assert unsigned.status_code == 401
            # an older change of the same run does not overwrite a newer one
            newer = change(f"{base}/exposure", seq=5).model_copy(
                update={"rollout_id": c.rollout_id, "idempotency_key": f"{c.rollout_id}:5", "percent": 25}
            )
            await env.run(apply_exposure, newer)
            older = newer.model_copy(update={"seq": 3, "idempotency_key": f"{c.rollout_id}:3", "percent": 10})
            await env.run(apply_exposure, older)
            state = (await client.get(f"{base}/exposure")).json()
            assert state[c.rollout_id]["seq"] == 5 and state[c.rollout_id]["scope"]["percent"] == 25
            text = (await client.get(f"{base}/")).text
            assert f"{c.rollout_id}: #5 stage pilot 25" in text
    applied = app.state.example.applied
    assert [(a["idempotency_key"], a["seq"]) for a in applied] == [(c.idempotency_key, 1), (f"{c.rollout_id}:5", 5)]
