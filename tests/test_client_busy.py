"""`act` sends an action again when the workflow refuses it as Busy (the workflow task it
landed in was being rebuilt after a worker died: workflows/staged_rollout.py), and stops
sending after BUSY_RETRIES; any other refusal reaches the user at once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from rollout.errors import RefusedError
from worker import client as rc


@workflow.defn(name="BusyThenOk")
class BusyThenOk:
    """Refuses the first `busy` Updates as Busy, then accepts; counts what it was sent."""

    @workflow.init
    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.validated = 0
        self.done = False

    @workflow.run
    async def run(self, busy: int) -> int:
        await workflow.wait_condition(lambda: self.done)
        return self.validated

    @workflow.query
    def validations(self) -> int:
        return self.validated

    @workflow.update
    async def approve(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.done = payload.get("last", True)
        return {"ok": True, "after": self.validated}

    @approve.validator
    def _v(self, payload: dict[str, Any]) -> None:
        self.validated += 1
        if payload.get("refuse"):
            raise ApplicationError("not yours to approve", type="Refused", non_retryable=True)
        if self.validated <= self.busy:
            raise ApplicationError("being moved to another worker", type="Busy", non_retryable=True)


async def _started(env: WorkflowEnvironment, busy: int) -> tuple[Worker, str]:
    queue = f"busy-{uuid.uuid4().hex[:6]}"
    worker = Worker(env.client, task_queue=queue, workflows=[BusyThenOk])
    wid = f"rollout-busy-{uuid.uuid4().hex[:6]}"
    await env.client.start_workflow(BusyThenOk.run, busy, id=wid, task_queue=queue)
    return worker, wid


async def test_a_busy_refusal_is_sent_again_until_accepted(dev_env: WorkflowEnvironment) -> None:
    worker, wid = await _started(dev_env, busy=3)
    async with worker:
        result = await rc.act(dev_env.client, wid, "approve", {"last": True})
        assert result == {"ok": True, "after": 4}  # three Busy refusals, then accepted once
        assert await dev_env.client.get_workflow_handle(wid).result() == 4


async def test_other_refusals_reach_the_user_at_once_and_busy_gives_up(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rc, "BUSY_RETRIES", 4)
    worker, wid = await _started(dev_env, busy=0)
    async with worker:
        with pytest.raises(RefusedError, match="not yours to approve"):
            await rc.act(dev_env.client, wid, "approve", {"refuse": True})
        assert await dev_env.client.get_workflow_handle(wid).query(BusyThenOk.validations) == 1  # not sent again
    worker, wid = await _started(dev_env, busy=10_000)
    async with worker:
        with pytest.raises(RefusedError, match="being moved to another worker"):
            await rc.act(dev_env.client, wid, "approve", {})
        assert await dev_env.client.get_workflow_handle(wid).query(BusyThenOk.validations) == rc.BUSY_RETRIES + 1
