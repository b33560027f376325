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
