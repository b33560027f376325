"""The worker-kill nondeterminism (sdk-rust #1146) cannot arise in the state-machine shell.

The trigger, found in ../shared/histories/worker-kill-update-nondeterminism.json: two
consecutive workflow tasks that issue no command (an audit batch and a notification
finishing), the worker's cache lost, then a workflow task carrying only an Update.
SDK core 1.35 chunks history with its v1 heuristic: a task that wrote nothing and is
followed at once by the next task's scheduling is a "heartbeat" and is folded into the
next task on replay, but a worker that rebuilt the workflow live after losing its cache
did not always fold it. The Update and the activity results of the empty tasks were
then applied in one activation on replay and in two live, at another workflow time, in
another order. The legacy workflow cancelled a `wait_condition(timeout=)` timer there
(`[TMPRL1100] Nondeterminism error: ... TimerCanceled`); the first state-machine shell
hit it too under the chaos test (`Update machine does not handle
UpsertWorkflowSearchAttributes`).

The shell now leaves no such task: every event from outside that wakes it records one
memo upsert where it is handled (`StagedRollout._handled`), so no task it completes is
empty and core never folds one. Here the new StagedRollout goes through the same
sequence (two tasks woken by activities that only wrote that memo, the cache lost, an
Update alone) on a real dev server, with the cache lost both ways (a worker that caches
nothing; a cached worker stopped and another started), and must show no empty task, no
failed workflow task, answer `status`, and replay. The shared history is kept in
tests/histories/shared/ and still fails to replay on the legacy path with the same
error: that documents the old pattern meeting the SDK's chunking.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.audit_store import AuditStore
from rollout.plan import validate_plan_data
from tests import history_shape, plans
from tests.http_recorder import Recorder, serving
from tests.plans import ENG1, IR, OWNER
from worker.main import RolloutWorker, WorkerSettings, build_worker
from workflows.messages import RolloutInput
from workflows.staged_rollout import StagedRollout

SHARED = Path(__file__).parent / "histories" / "shared" / "worker-kill-update-nondeterminism.json"
MACHINE = Path(__file__).parent / "histories" / "machine"


def rollout_worker(client: Client, store: AuditStore, queue: str, *, cache: bool) -> RolloutWorker:
    """The production worker; `cache=False` replays every task from scratch."""
    return build_worker(client, store, queue=queue, settings=WorkerSettings(max_cached_workflows=1000 if cache else 0))


def plan_with_webhooks(rec: Recorder, name: str) -> dict[str, Any]:
    return plans.plan_dict(
        name,
        target={"kind": "webhook", "url": f"{rec.url}/exposure"},
        notify=[{"kind": "webhook", "url": f"{rec.url}/notify"}],
    )


async def events_of(h: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return [e async for e in h.fetch_history_events()]


def _quiet(t: history_shape.Task) -> bool:
    """Woken by an activity's end, and wrote only the memo every outside event records
    (without it the task would be empty: what core folds on replay)."""
    return set(t.writes) == {"WORKFLOW_PROPERTIES_MODIFIED"} and "ACTIVITY_TASK_COMPLETED" in t.inputs


def two_quiet_tasks_at_end(events: list[HistoryEvent]) -> bool:
    """The history ends with two completed workflow tasks, each woken by an activity, that
    wrote only the memo, and no activity is in flight."""
    ts = history_shape.tasks(events)
    last_completed = max((i for i, e in enumerate(events) if history_shape.name(e) == "WORKFLOW_TASK_COMPLETED"),
                         default=-1)
    if len(ts) < 2 or len(events) - 1 - last_completed != len(ts[-1].writes):  # nothing after the last task's writes
        return False
    names = [history_shape.name(e) for e in events]
    ended = sum(names.count(f"ACTIVITY_TASK_{x}") for x in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELED"))
    if names.count("ACTIVITY_TASK_SCHEDULED") != ended:
        return False
    return all(_quiet(t) for t in ts[-2:])


async def wait_history(h: WorkflowHandle[Any, Any], pred: Callable[[list[HistoryEvent]], bool],
                       within: float = 30.0) -> list[HistoryEvent]:
    deadline = time.monotonic() + within
    evs: list[HistoryEvent] = []
    while time.monotonic() < deadline:
        evs = await events_of(h)
        if pred(evs):
            return evs
        await asyncio.sleep(0.2)
    raise AssertionError(f"history never reached the state awaited: {history_shape.outline(evs[-30:])}")


def update_tasks_after_quiet_pair(events: list[HistoryEvent]) -> list[history_shape.Task]:
    """Workflow tasks that accepted an Update, arrived with nothing else, right after two quiet tasks."""
    ts = history_shape.tasks(events)
    found = []
    for i in range(2, len(ts)):
        t = ts[i]
        if (t.writes[:1] == ["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"] and not t.inputs
                and all(_quiet(p) for p in ts[i - 2:i])):
            found.append(t)
    return found


@pytest.mark.parametrize("cache_lost_by", ["no_cache", "worker_restart"])
async def test_update_after_two_quiet_tasks_with_cache_lost_replays_without_nondeterminism(
    dev_env: WorkflowEnvironment, sqlite_store: AuditStore, cache_lost_by: str
) -> None:
    client = dev_env.client
    queue = f"ndg-{uuid.uuid4().hex[:8]}"
    with serving() as rec:
        rec.delays["/notify"] = 1.5  # each notification finishes last, after the audit rows: a quiet task
        p = validate_plan_data(plan_with_webhooks(rec, "nd-guard"))
        wid = f"rollout-nd-guard-{cache_lost_by}-{uuid.uuid4().hex[:6]}"
        worker = rollout_worker(client, sqlite_store, queue, cache=cache_lost_by == "no_cache")
        run = asyncio.create_task(worker.run())
        try:
            h = await client.start_workflow(StagedRollout.run, RolloutInput(plan=p, started_by=OWNER), id=wid,
                                            task_queue=queue)
            # each message below is sent only after two quiet tasks, with the cache lost
            messages: list[tuple[str, dict[str, Any]]] = [
                ("approve", {"actor": ENG1, "stage": "pilot", "role": "engineering"}),  # window timer starts
                ("hold", {"actor": OWNER, "reason": "odd replies"}),  # while soaking, timers running
                ("resume", {"actor": IR, "reason": "fixed"}),  # the message of the shared history
                ("hold", {"actor": plans.RISK, "reason": "again"}),  # RISK may not acknowledge: IR paged
                ("acknowledge", {"actor": IR, "escalation": True}),
            ]
            for kind, payload in messages:
                await wait_history(h, two_quiet_tasks_at_end)
                if cache_lost_by == "worker_restart":
                    await asyncio.wait_for(worker.shutdown(), 30)
                    await run
                    worker = rollout_worker(client, sqlite_store, queue, cache=True)
                    run = asyncio.create_task(worker.run())
                res = await h.execute_update(kind, payload, result_type=dict)
                assert res["ok"] is True, (kind, res)
            st = await h.query("status")
            assert st["status"] == "held" and st["escalation"]["acknowledged_by"] == IR
            events = await wait_history(h, two_quiet_tasks_at_end)
        finally:
            await asyncio.wait_for(worker.shutdown(), 30)
            await run

    assert history_shape.failures(events) == []
    assert history_shape.silent_tasks(events) == [], history_shape.outline(events)  # nothing for core to fold
    # the trigger really happened, once per message
    assert len(update_tasks_after_quiet_pair(events)) == len(messages), history_shape.outline(events)
    assert "TIMER_CANCELED" not in [history_shape.name(e) for e in events]
    # deliveries reached the webhook target in decision order, once per key
    keys = [r.key for r in rec.snapshot("/exposure")]
    assert keys and keys == sorted(set(keys), key=lambda k: int(k.rsplit(":", 1)[1]))
    history = await h.fetch_history()
    if os.environ.get("ROLLOUT_RECORD_HISTORIES") == "1":
        MACHINE.mkdir(parents=True, exist_ok=True)
        (MACHINE / f"update_after_quiet_tasks_{cache_lost_by}.json").write_text(history.to_json())
    replayer = Replayer(workflows=[StagedRollout], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


async def test_shared_worker_kill_history_still_fails_on_the_legacy_path_as_documented() -> None:
    """The rollout of issue 11, point 13, ran the legacy code (no patch marker), so it
    replays through LegacyStagedRollout and fails as it did in production: this is the old
    pattern (an Update handler issuing commands at once, a cancelled wait_condition timer)
    meeting sdk-rust #1146. The test above shows the new shell under the same trigger."""
    history = WorkflowHistory.from_json("worker-kill-update-nondeterminism", SHARED.read_text())
    assert history_shape.patch_ids(history.events) == []
    replayer = Replayer(workflows=[StagedRollout], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    message = str(result.replay_failure)
    assert "Nondeterminism" in message and "TimerCanceled" in message, message
    # the prefix before the Update that met the empty tasks replays fine
    prefix = WorkflowHistory(history.workflow_id, [e for e in history.events if e.event_id <= 176])
    ok = await replayer.replay_workflow(prefix, raise_on_replay_failure=False)
    assert ok.replay_failure is None, ok.replay_failure
