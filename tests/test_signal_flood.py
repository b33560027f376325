"""A flood of signals at one rollout (a misbehaving alert source or script): every signal is
accounted for, the rollout stays queryable, and continue-as-new carries the unsent audit rows
within Temporal's payload limits.

Found with bench/footprint.py's 10,000-signal flood: a workflow task holding thousands of
signals copied the state once per signal and ran past the 2 s deadlock limit; and the
continue-as-new input carried every unsent audit row (11 MB), past gRPC's 4 MB, so the task
failed again on every attempt, with more signals each time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from tests import history_shape, plans
from tests.plans import ENG1
from tests.wfkit import bounded_shutdown, signal, start, wait_for
from worker.main import build_worker
from workflows.staged_rollout import CARRY_BYTES

SIGNALS = 2500
PADDING = "x" * 2000  # each refusal's audit row keeps an excerpt of the request: rows of ~1 KB


@pytest.fixture
async def queue(ts_env: WorkflowEnvironment, sqlite_store: AuditStore) -> AsyncIterator[str]:
    q = f"flood-{uuid.uuid4().hex[:8]}"
    w = build_worker(ts_env.client, sqlite_store, queue=q)
    run = asyncio.create_task(w.run())
    try:
        yield q
    finally:
        await bounded_shutdown(w, run)


async def runs(h: WorkflowHandle[Any, Any]) -> list[list[Any]]:
    """Every run's events, from the first along the continue-as-new chain."""
    out: list[list[Any]] = []
    run_id: str | None = h.first_execution_run_id
    client = h._client
    while run_id:
        events = [e async for e in client.get_workflow_handle(h.id, run_id=run_id).fetch_history_events()]
        out.append(events)
        last = events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW else None)
    return out


async def test_a_flood_of_refused_signals_is_recorded_whole_across_runs_within_payload_limits(
    ts_env: WorkflowEnvironment, queue: str, sqlite_store: AuditStore
) -> None:
    h = await start(ts_env.client, plans.plan_dict(), queue, continue_as_new_after=500)
    await signal(h, "approve", actor=ENG1, stage="pilot", role="engineering")
    await wait_for(h, lambda s: s["status"] == "soaking" and s["target_pending"] is None)
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            await h.signal("approve", {"actor": f"stranger{i}@example.com", "stage": "pilot", "role": "engineering",
                                       "comment": PADDING})

    await asyncio.gather(*(one(i) for i in range(SIGNALS)))
    refused: list[Any] = []
    for _ in range(240):
        refused = [r for r in await sqlite_store.events(h.id) if r.action == "refused"]
        if len(refused) >= SIGNALS:
            break
        await asyncio.sleep(0.5)
    assert len(refused) == SIGNALS  # every signal recorded once, none lost across runs
    st = await wait_for(h, lambda s: s["status"] == "soaking", within=60)
    assert st["runs"] >= 2 and len(st["refused"]) == 100  # status keeps the last 100
    chain = await runs(h)
    assert len(chain) >= 2
    # one memo write per workflow task, not per signal: a flood costs about one event per signal
    assert sum(len(events) for events in chain) < SIGNALS * 1.4, [len(events) for events in chain]
    for events in chain:
        assert history_shape.failures(events) == []  # no task failed: no deadlock, no oversized input
        last = events[-1]
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            carried = sum(len(p.data) for p in last.workflow_execution_continued_as_new_event_attributes.input.payloads)
            assert carried < CARRY_BYTES + 256 * 1024, carried  # the rows carried, the state and a margin


def test_a_batch_takes_leading_items_up_to_its_count_and_bytes_and_always_the_first() -> None:
    from workflows.staged_rollout import _batch_len

    assert _batch_len([10, 10, 10], most=2, most_bytes=100) == 2
    assert _batch_len([60, 30, 20], most=10, most_bytes=100) == 2  # the third would pass 100 bytes
    assert _batch_len([500, 1], most=10, most_bytes=100) == 1  # an oversized first item still goes alone
    assert _batch_len([], most=10, most_bytes=100) == 0
