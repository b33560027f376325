"""`record_audit` through a real Temporal dev server: retries and worker restarts neither
duplicate nor lose rows; the trail in history matches the store, across continue-as-new."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.audit import AuditActivities
from activities.audit_store import AuditStore
from activities.history_trail import read_history_trail, rebuild_from_history, trail_from_history
from rollout.models import AuditBatch, AuditEvent, AuditHead
from tests.audit_support import PLAN_HASH, store_url_for, tamper


class Spec(BaseModel):
    batches: int = 3
    per_batch: int = 3
    next_seq: int = 1
    next_batch: int = 0
    wait_between: bool = False
    continue_every: int = 0  # continue-as-new after this many batches (0: never)


@workflow.defn(name="AuditTestWorkflow")
class AuditTestWorkflow:
    """Records decisions the way StagedRollout does: gap-free seq, one batch at a time."""

    def __init__(self) -> None:
        self.released = 0

    @workflow.signal
    def proceed(self) -> None:
        self.released += 1

    @workflow.run
    async def run(self, spec: Spec) -> list[int]:
        """Returns the seq of each head record_audit returned in this run."""
        info = workflow.info()
        seq = spec.next_seq
        heads: list[int] = []
        done_here = 0
        for b in range(spec.next_batch, spec.batches):
            if spec.continue_every and done_here == spec.continue_every:
                workflow.continue_as_new(spec.model_copy(update={"next_seq": seq, "next_batch": b}))
            if spec.wait_between and b > 0:
                await workflow.wait_condition(lambda b=b: self.released >= b)  # type: ignore[misc]
            events = [
                AuditEvent(
                    rollout_id=info.workflow_id,
                    seq=seq + i,
                    at=workflow.now(),
                    actor="alice@example.com",
                    role="rollout",
                    action="note",
                    stage="pilot",
                    plan_hash=PLAN_HASH,
                    reason=f"batch {b} event {i}",
                    payload={"batch": b, "i": i, "value": 0.1 * i},
                )
                for i in range(spec.per_batch)
            ]
            seq += spec.per_batch
            head = await workflow.execute_activity(
                "record_audit",
                AuditBatch(events=events),
                result_type=AuditHead,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=1.0),
            )
            heads.append(head.seq)
            done_here += 1
        return heads


class FlakyStore(AuditStore):
    """Writes, then fails the attempt (as if the worker lost the DB connection before replying)."""

    fail_attempts: tuple[int, ...] = (1,)

    async def append(self, events: Any) -> int:
        written = await super().append(events)
        if activity.info().attempt in self.fail_attempts:
            raise RuntimeError(f"lost the reply after writing {written} rows")
        return written


class HangingStore(AuditStore):
    """Writes, then never answers on the first attempt: the worker is stopped meanwhile."""

    async def append(self, events: Any) -> int:
        written = await super().append(events)
        if activity.info().attempt == 1 and events and events[0].seq > 1:
            self.hung.set()
            await asyncio.Event().wait()
        return written

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.hung = asyncio.Event()


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[str]:
    async with store_url_for(request.param, tmp_path, pg_url) as u:
        yield u


def _worker(client: Client, queue: str, store: AuditStore) -> Worker:
    return Worker(
        client,
        task_queue=queue,
        workflows=[AuditTestWorkflow],
        activities=[AuditActivities(store).record_audit],
        workflow_runner=UnsandboxedWorkflowRunner(),
        graceful_shutdown_timeout=timedelta(milliseconds=200),
    )


async def _check(store: AuditStore, wid: str, n: int) -> list[AuditEvent]:
    rows = await store.read(wid)
    assert [r.event.seq for r in rows] == list(range(1, n + 1)), "duplicate or missing rows"
    assert (await store.verify(wid)).ok
    return [r.event for r in rows]


async def test_retry_after_a_write_adds_nothing(dev_env: WorkflowEnvironment, url: str) -> None:
    client = dev_env.client
    queue = f"audit-{uuid.uuid4().hex[:8]}"
    base = AuditStore.from_url(url)
    flaky = FlakyStore(base.engine)
    try:
        async with _worker(client, queue, flaky):
            wid = f"rollout-audit-retry-{uuid.uuid4().hex[:8]}"
            heads = await client.execute_workflow(
                AuditTestWorkflow.run, Spec(batches=3, per_batch=4), id=wid, task_queue=queue
            )
        # every batch was written by an attempt whose reply was lost; the retry returns its head
        assert heads == [4, 8, 12]
        events = await _check(base, wid, 12)
        stored = await base.heads(wid)
        assert [h.head.seq for h in stored] == [4, 8, 12]  # one head per batch, none duplicated
        history = await trail_from_history(client, wid)
        assert history == events
    finally:
        await base.close()


async def test_worker_restart_between_and_during_batches(dev_env: WorkflowEnvironment, url: str) -> None:
    client = dev_env.client
    queue = f"audit-{uuid.uuid4().hex[:8]}"
    wid = f"rollout-audit-restart-{uuid.uuid4().hex[:8]}"
    first = HangingStore(AuditStore.from_url(url).engine)
    try:
        async with _worker(client, queue, first):
            handle = await client.start_workflow(
                AuditTestWorkflow.run, Spec(batches=3, per_batch=2, wait_between=True), id=wid, task_queue=queue
            )
            for _ in range(100):  # batch 1 recorded
                if len(await first.read(wid)) == 2:
                    break
                await asyncio.sleep(0.05)
            await handle.signal(AuditTestWorkflow.proceed)
            await asyncio.wait_for(first.hung.wait(), 10)  # batch 2 written, reply never sent
        # worker 1 is gone (its attempt was cancelled); a fresh worker with its own engine takes over
        second = AuditStore.from_url(url)
        try:
            async with _worker(client, queue, second):
                await handle.signal(AuditTestWorkflow.proceed)
                assert await handle.result() == [2, 4, 6]  # batch 2's retry wrote no row twice
            await _check(second, wid, 6)
        finally:
            await second.close()
    finally:
        await first.close()


async def test_history_trail_spans_continue_as_new_and_rebuilds_the_store(
    dev_env: WorkflowEnvironment, url: str, tmp_path: Path, pg_url: str
) -> None:
    client = dev_env.client
    queue = f"audit-{uuid.uuid4().hex[:8]}"
    wid = f"rollout-audit-can-{uuid.uuid4().hex[:8]}"
    store = AuditStore.from_url(url)
    try:
        async with _worker(client, queue, store):
            await client.execute_workflow(
                AuditTestWorkflow.run, Spec(batches=5, per_batch=2, continue_every=2), id=wid, task_queue=queue
            )
        trail = await read_history_trail(client, wid)
        assert trail is not None and trail.complete and len(trail.run_ids) == 3
        stored = await _check(store, wid, 10)
        assert trail.events == stored
        assert await trail_from_history(client, "rollout-never-started") is None

        # an empty store is rebuilt from history, and agrees with it
        async with store_url_for("sqlite", tmp_path / "empty", pg_url) as empty_url:
            fresh = AuditStore.from_url(empty_url)
            try:
                report = await rebuild_from_history(client, fresh, wid)
                assert report is not None and report.ok and report.written == 10
                assert [r.row_hash for r in await fresh.read(wid)] == [r.row_hash for r in await store.read(wid)]
            finally:
                await fresh.close()

        # a tampered store disagrees with history, and rebuild says where
        ids = {r.event.seq: r.id for r in await store.read(wid)}
        await tamper(url, f"UPDATE audit_events SET reason = 'rewritten' WHERE id = {ids[7]}")  # noqa: S608
        report = await rebuild_from_history(client, store, wid)
        assert report is not None and not report.ok
        assert report.disagreements == ["seq 7: store differs from history in reason"]
        assert await rebuild_from_history(client, store, "rollout-never-started") is None
    finally:
        await store.close()
