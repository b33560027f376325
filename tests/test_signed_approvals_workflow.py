"""Signed approvals on the real workflow: a signature read from history approves nothing else.

The issue's attack, on a real Temporal dev server with the real worker: frank approves
the pilot with a signed payload (as `rollout approve --key` builds it), the rollout is
rolled back and resumed so the pilot needs a fresh approval, and the very same payload
is sent again with the stock Update (what `temporal workflow update execute` sends).
The workflow refuses it: as an Update, in its validator (nothing lands in history); as
a Signal, recorded in `status.refused` with the reason. Frank signing again for the new
entry is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from cli.signing import approval_claim, signed_fields
from rollout.plan import validate_plan_data
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, plan_dict
from worker import client as rc
from worker import receiver as alert_receiver
from worker.main import build_worker

KEYS = {who: Ed25519PrivateKey.generate() for who in (RISK, ENG1, ENG2, OWNER, OPS)}


def _pub(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@pytest.fixture
async def queue(dev_env: WorkflowEnvironment, sqlite_store: AuditStore) -> AsyncIterator[str]:
    q = f"signed-{uuid.uuid4().hex[:8]}"
    async with build_worker(dev_env.client, sqlite_store, queue=q):
        yield q


async def wait_status(
    handle: WorkflowHandle[Any, Any], pred: Callable[[dict[str, Any]], bool], within: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = await handle.query("status", result_type=dict)
        if pred(st):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {within}s: {st.get('status')} at {st.get('stage')}: {st}")


async def signed_approval(
    handle: WorkflowHandle[Any, Any], who: str, stage: str, role: str
) -> dict[str, Any]:
    """The payload `rollout approve ID --stage S --role R --as WHO --key FILE` sends."""
    st = await handle.query("status", result_type=dict)
    claim = approval_claim(st, role=role, actor=who, now=datetime.now(UTC), stage=stage)
    return {"actor": who, "stage": stage, "role": role, "comment": None, **signed_fields(KEYS[who], claim)}


async def update_events(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.HasField("workflow_execution_update_accepted_event_attributes"))


async def test_signed_approval_replayed_after_rollback_and_resume_is_refused(
    dev_env: WorkflowEnvironment, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_TASK_QUEUE", queue)
    d = plan_dict(f"signed-{uuid.uuid4().hex[:6]}")
    d["require_signed_approvals"] = True
    d["public_keys"] = {who: _pub(k) for who, k in KEYS.items()}
    d["stages"][0]["window"] = "1h"
    plan = validate_plan_data(d)
    client = dev_env.client
    handle = await rc.start(client, plan, workflow_id=f"rollout-{plan.name}", started_by=OWNER)

    st = await wait_status(handle, lambda s: s["status"] == "awaiting_approval")
    assert st["first_run_id"] == handle.result_run_id and st["approvals"]["entry"] >= 1
    payload = await signed_approval(handle, ENG1, "pilot", "engineering")
    await rc.act(client, handle.id, "approve", payload)
    await wait_status(handle, lambda s: s["status"] == "soaking" and s["target_pending"] is None)

    await rc.act(client, handle.id, "rollback", {"actor": RISK, "reason": "odd replies"})
    await wait_status(handle, lambda s: s["status"] == "rolled_back" and s["target_pending"] is None)
    await rc.act(client, handle.id, "resume", {"actor": IR, "reason": "fixed"})
    st = await wait_status(handle, lambda s: s["status"] == "awaiting_approval" and s["stage"] == "pilot")
    entry = st["approvals"]["entry"]

    # the stock Update with frank's old payload, read from history: refused by the validator
    accepted_before = await update_events(handle)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("approve", payload, result_type=dict)
    assert "does not verify" in str(info.value.cause)
    assert await update_events(handle) == accepted_before  # a refused Update leaves no history
    # the same payload as a Signal: refused and recorded with its reason
    await handle.signal("approve", payload)
    st = await wait_status(
        handle, lambda s: any("does not verify" in r.get("reason", "") for r in s["refused"])
    )
    assert st["status"] == "awaiting_approval" and st["approvals"]["given"] == {}
    assert st["approvals"]["entry"] == entry

    # frank signs again for the new entry: accepted
    fresh = await signed_approval(handle, ENG1, "pilot", "engineering")
    await rc.act(client, handle.id, "approve", fresh)
    await wait_status(handle, lambda s: s["status"] == "soaking")
    await rc.act(client, handle.id, "abort", {"actor": OWNER, "reason": "end of test"})


async def test_signed_approval_from_a_previous_run_of_the_same_id_is_refused(
    dev_env: WorkflowEnvironment, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_TASK_QUEUE", queue)
    d = plan_dict(f"signed-{uuid.uuid4().hex[:6]}")
    d["require_signed_approvals"] = True
    d["public_keys"] = {who: _pub(k) for who, k in KEYS.items()}
    plan = validate_plan_data(d)
    client = dev_env.client
    wid = f"rollout-{plan.name}"
    first = await rc.start(client, plan, workflow_id=wid, started_by=OWNER)
    await wait_status(first, lambda s: s["status"] == "awaiting_approval")
    payload = await signed_approval(first, ENG1, "pilot", "engineering")  # signed, never sent
    await rc.act(client, wid, "abort", {"actor": OWNER, "reason": "restart"})
    await client.get_workflow_handle(wid).result()

    second = await rc.start(client, plan, workflow_id=wid, started_by=OWNER)
    st = await wait_status(second, lambda s: s["status"] == "awaiting_approval")
    assert st["first_run_id"] == second.result_run_id != first.result_run_id
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await second.execute_update("approve", payload, result_type=dict)
    assert "does not verify" in str(info.value.cause)
    await rc.act(client, wid, "abort", {"actor": OWNER, "reason": "end of test"})


def _alert(wid: str, status: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "status": status,
        "labels": {"alertname": "RolloutErrorRateHigh", "rollout": wid, "threshold": "error_rate", **labels},
        "annotations": {"value": "0.31"},
        "startsAt": now,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else now,
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": uuid.uuid4().hex[:16],
    }


def _webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": "{}",
        "truncatedAlerts": 0,
        "status": alerts[0]["status"],
        "receiver": "staged-rollout",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


async def test_receiver_token_reports_breaches_but_never_approves_or_resumes(
    dev_env: WorkflowEnvironment, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever holds the receiver token can hold a rollout (a breach), nothing more: alerts
    labelled to look like approvals, resumes or acknowledgements change no approval and
    resume nothing, and a resolved alert never resumes."""
    monkeypatch.setenv("ROLLOUT_TASK_QUEUE", queue)
    token = "stolen-" + uuid.uuid4().hex
    app = alert_receiver.create_app(dev_env.client, token)
    d = plan_dict(f"token-{uuid.uuid4().hex[:6]}")
    d["require_signed_approvals"] = True
    d["public_keys"] = {who: _pub(k) for who, k in KEYS.items()}
    d["stages"][0]["window"] = "1h"
    plan = validate_plan_data(d)
    client = dev_env.client
    handle = await rc.start(client, plan, workflow_id=f"rollout-{plan.name}", started_by=OWNER)
    wid = handle.id
    await wait_status(handle, lambda s: s["status"] == "awaiting_approval")
    posing = [
        _alert(wid, "firing", action="approve", role="engineering", actor=ENG1, stage="pilot"),
        _alert(wid, "firing", alertname="approve", action="resume", actor=IR),
        _alert(wid, "resolved", action="acknowledge", actor=IR),
    ]
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as http:
        for a in posing:
            r = await http.post("/alertmanager", json=_webhook(a), headers=auth)
            assert r.status_code in (200, 409), r.text
        st = await handle.query("status", result_type=dict)
        assert st["approvals"]["given"] == {} and st["exposure"]["percent"] == 0

        payload = await signed_approval(handle, ENG1, "pilot", "engineering")
        await rc.act(client, wid, "approve", payload)
        await wait_status(handle, lambda s: s["status"] == "soaking" and s["target_pending"] is None)
        r = await http.post("/alertmanager", json=_webhook(_alert(wid, "firing")), headers=auth)
        assert r.status_code == 200, r.text
        await wait_status(handle, lambda s: s["status"] == "held")
        for a in (_alert(wid, "resolved"), _alert(wid, "firing", action="resume", actor=IR)):
            r = await http.post("/alertmanager", json=_webhook(a), headers=auth)
            assert r.status_code == 200, r.text
        await asyncio.sleep(1.0)  # give any (wrong) resume time to land
        st = await handle.query("status", result_type=dict)
        assert st["status"] == "held" and st["exposure"]["frozen"] is True
    await rc.act(client, wid, "abort", {"actor": OWNER, "reason": "end of test"})
