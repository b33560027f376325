"""Replay committed histories of the state-machine StagedRollout (tests/histories/machine/).

Each history carries the `state-machine-v2`, `no-empty-tasks`, `own-queues` and
`notify-batches` patch markers, so it replays through the new shell (tests/test_replay.py replays the legacy
histories, recorded before it). Rollouts started on earlier code must still finish on
today's, so the same scenarios recorded then replay too: tests/histories/machine-v3/
before `own-queues` and `notify-batches` (deliveries and monitors on the rollout's own
task queue, one activity per notification), and
tests/histories/machine-v2/ before `no-empty-tasks` (no memo per outside event).
Together they include a whole rollout, continue-as-new, an amendment applied, a
rollback and its resume, and Updates that arrived after empty workflow tasks with the
cache lost (tests/test_nondeterminism_guard.py).

The scenarios below also run as tests; `ROLLOUT_RECORD_HISTORIES=1 pytest
tests/test_replay_new.py tests/test_nondeterminism_guard.py` rewrites the histories.
Re-record only for a change that is deliberately not replay-compatible (and then
version the workflow with `workflow.patched` instead, when rollouts are running).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.audit_store import AuditStore
from tests import history_shape, plans
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK
from tests.wfkit import STARTED, bounded_shutdown, hours, signal, start, status, wait_for
from worker.main import build_worker
from workflows import queues
from workflows.staged_rollout import (
    PATCH,
    PATCH_HANDLED,
    PATCH_NOTIFY_BATCHES,
    PATCH_ONE_MEMO,
    PATCH_QUEUES,
    StagedRollout,
)

MACHINE = Path(__file__).parent / "histories" / "machine"
HISTORIES = sorted(MACHINE.glob("*.json"))
BEFORE_OWN_QUEUES = sorted((Path(__file__).parent / "histories" / "machine-v3").glob("*.json"))
BEFORE_NO_EMPTY_TASKS = sorted((Path(__file__).parent / "histories" / "machine-v2").glob("*.json"))
EARLIER = BEFORE_OWN_QUEUES + BEFORE_NO_EMPTY_TASKS


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def kinds(path: Path) -> list[str]:
    return [history_shape.name(e) for e in load(path).events]


def test_machine_histories_cover_a_whole_rollout_continue_as_new_amendment_rollback_and_updates() -> None:
    names = {p.stem for p in HISTORIES}
    for scenario in ("whole_rollout", "continue_as_new", "amendment_applied", "rollback_and_resume"):
        assert f"{scenario}-0-0" in names, scenario
    assert "continue_as_new-0-1" in names  # the run after continue-as-new
    assert "WORKFLOW_EXECUTION_COMPLETED" in kinds(MACHINE / "whole_rollout-0-0.json")
    assert "WORKFLOW_EXECUTION_CONTINUED_AS_NEW" in kinds(MACHINE / "continue_as_new-0-0.json")
    signals = {
        p.stem: [e.workflow_execution_signaled_event_attributes.signal_name for e in load(p).events
                 if e.HasField("workflow_execution_signaled_event_attributes")]
        for p in HISTORIES
    }
    assert "amend" in signals["amendment_applied-0-0"]
    assert {"rollback", "resume"} <= set(signals["rollback_and_resume-0-0"])
    assert any("WORKFLOW_EXECUTION_UPDATE_ACCEPTED" in kinds(p) for p in HISTORIES)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_machine_history_carries_the_patch_markers_and_no_empty_task(path: Path) -> None:
    events = load(path).events
    assert history_shape.patch_ids(events) == [PATCH, PATCH_HANDLED, PATCH_QUEUES, PATCH_NOTIFY_BATCHES, PATCH_ONE_MEMO]
    assert history_shape.silent_tasks(events) == []


def activity_queues(path: Path) -> dict[str, set[str]]:
    """Activity type -> the task queues it was scheduled on, and the workflow's own queue as ''."""
    events = load(path).events
    own = next(e.workflow_execution_started_event_attributes.task_queue.name for e in events
               if e.HasField("workflow_execution_started_event_attributes"))
    out: dict[str, set[str]] = {}
    for e in events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            a = e.activity_task_scheduled_event_attributes
            out.setdefault(a.activity_type.name, set()).add("" if a.task_queue.name == own else a.task_queue.name)
            out.setdefault("", set()).add(own)
    return out


def test_audit_notifications_and_monitors_run_beside_deliveries_since_own_queues_and_on_one_queue_before() -> None:
    """Deliveries stay on the workflow's queue (eager dispatch); audit batches go to
    `<queue>-audit`, notifications to `<queue>-notify`, monitors to `<queue>-monitors`."""
    for path in HISTORIES:
        q = activity_queues(path)
        own = next(iter(q[""]))
        assert q.get("apply_exposure", {""}) == {""}, path.stem
        assert q.get("audit_last_seq", {""}) == {""}, path.stem
        assert q.get("record_audit", {queues.audit(own)}) == {queues.audit(own)}, path.stem
        assert q.get("send_notification_batch", {queues.notify(own)}) == {queues.notify(own)}, path.stem
        assert q.get("watch_thresholds", {queues.monitors(own)}) == {queues.monitors(own)}, path.stem
    assert any("record_audit" in activity_queues(p) and "apply_exposure" in activity_queues(p) for p in HISTORIES)
    for path in EARLIER:
        q = activity_queues(path)
        assert all(names == {""} for kind, names in q.items() if kind), path.stem


def test_notifications_of_one_step_go_in_one_activity_since_notify_batches_and_one_each_before() -> None:
    now = [set(activity_queues(p)) for p in HISTORIES]
    assert all("send_notifications" not in kinds for kinds in now)
    assert any("send_notification_batch" in kinds for kinds in now)
    before = [set(activity_queues(p)) for p in EARLIER]
    assert all("send_notification_batch" not in kinds for kinds in before)
    assert any("send_notifications" in kinds for kinds in before)


@pytest.mark.parametrize("path", BEFORE_OWN_QUEUES, ids=[p.stem for p in BEFORE_OWN_QUEUES])
def test_history_before_own_queues_carries_the_two_earlier_markers(path: Path) -> None:
    assert history_shape.patch_ids(load(path).events) == [PATCH, PATCH_HANDLED]


@pytest.mark.parametrize("path", BEFORE_NO_EMPTY_TASKS, ids=[p.stem for p in BEFORE_NO_EMPTY_TASKS])
def test_history_before_no_empty_tasks_carries_only_the_state_machine_marker(path: Path) -> None:
    assert history_shape.patch_ids(load(path).events) == [PATCH]


@pytest.mark.parametrize("path", HISTORIES + EARLIER, ids=[f"{p.parent.name}/{p.stem}" for p in HISTORIES + EARLIER])
async def test_machine_history_replays(path: Path) -> None:
    assert history_shape.failures(load(path).events) == []
    replayer = Replayer(workflows=[StagedRollout], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(load(path))


# ---------------------------------------------------------------- the recorded scenarios


async def record_runs(name: str, client: Client) -> None:
    """Write every run of each workflow the test started, from its first run along the
    continue-as-new chain, as `<name>-<workflow>-<run>.json`.

    (wfkit.record_histories starts from `handle.run_id`, which is None for a handle from
    `start_workflow`, so it writes the latest run twice and never the first.)"""
    MACHINE.mkdir(parents=True, exist_ok=True)
    for i, h in enumerate(STARTED):
        run_id = h.first_execution_run_id
        j = 0
        while run_id:
            hist = await client.get_workflow_handle(h.id, run_id=run_id).fetch_history()
            for _ in range(100):  # a run that just began: wait for its first task (its patch markers)
                if any(history_shape.name(e) == "WORKFLOW_TASK_COMPLETED" for e in hist.events):
                    break
                await asyncio.sleep(0.1)
                hist = await client.get_workflow_handle(h.id, run_id=run_id).fetch_history()
            (MACHINE / f"{name}-{i}-{j}.json").write_text(hist.to_json())
            last = hist.events[-1]
            run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                      if last.HasField("workflow_execution_continued_as_new_event_attributes") else "")
            j += 1


@pytest.fixture
async def worker(
    ts_env: WorkflowEnvironment, sqlite_store: AuditStore, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    w = build_worker(ts_env.client, sqlite_store, queue=queue)
    STARTED.clear()
    run = asyncio.create_task(w.run())
    try:
        yield queue
        if os.environ.get("ROLLOUT_RECORD_HISTORIES") == "1":
            await record_runs(request.node.name.removeprefix("test_scenario_"), ts_env.client)
    finally:
        STARTED.clear()
        await bounded_shutdown(w, run)


async def approve(h: Any, stage: str, role: str, actor: str, **kw: Any) -> None:
    await signal(h, "approve", actor=actor, stage=stage, role=role, comment="ok", **kw)


def soaking(s: dict[str, Any]) -> bool:
    return bool(s["status"] == "soaking" and s["window_ends_at"] is not None)


async def through_pilot(env: WorkflowEnvironment, h: Any) -> None:
    await approve(h, "pilot", "engineering", ENG1)
    await wait_for(h, soaking)
    await env.sleep(hours(73))
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")


async def test_scenario_whole_rollout(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict("whole"), worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG2)
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, soaking)
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await ts_env.sleep(hours(24 * 7 + 1))
    await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval")
    for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
        await approve(h, "system-of-record", role, who)
    await wait_for(h, soaking)
    await ts_env.sleep(hours(24 * 14 + 1))
    await wait_for(h, lambda s: s["status"] == "awaiting_handoff")
    await signal(h, "acknowledge", actor=OPS, item="On-call rota includes the agent")
    await signal(h, "acknowledge", actor=IR, item="Runbook reviewed")
    result = await h.result()
    assert result["status"] == "completed" and result["exposure"]["percent"] == 100


async def test_scenario_continue_as_new(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict("can"), worker, continue_as_new_after=60)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    for i in range(12):  # refused approvals grow the history past 60 events
        await approve(h, "limited-25", "operations", f"stranger{i}@example.com")
    st = await wait_for(h, lambda s: s["runs"] >= 2, within=30)
    assert st["approvals"]["given"]["engineering"]["actor"] == ENG1 and st["exposure_stage"] == "pilot"
    await approve(h, "limited-25", "operations", OPS)
    st = await wait_for(h, lambda s: s["stage"] == "limited-25" and soaking(s))
    assert st["exposure"]["percent"] == 25


async def test_scenario_amendment_applied(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict("amend"), worker)
    await through_pilot(ts_env, h)
    new = plans.plan_dict("amend")
    new["stages"][2]["window"] = "21d"
    await signal(h, "amend", actor=OWNER, plan=new, reason="longer SoR window")
    st = await wait_for(h, lambda s: s["pending_amendment"] is not None)
    new_hash = st["pending_amendment"]["plan_hash"]
    await signal(h, "approve", actor=ENG2, amendment=new_hash, role="engineering")
    await signal(h, "approve", actor=OPS, amendment=new_hash, role="operations")
    st = await wait_for(h, lambda s: s["plan_hash"] == new_hash and s["pending_amendment"] is None)
    await approve(h, "limited-25", "engineering", ENG1)
    await approve(h, "limited-25", "operations", OPS)
    st = await wait_for(h, lambda s: s["stage"] == "limited-25" and soaking(s))
    assert st["plan_hash"] == new_hash


async def test_scenario_rollback_and_resume(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict("rollback"), worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, soaking)
    await signal(h, "rollback", actor=RISK, reason="bad replies")
    st = await wait_for(h, lambda s: s["status"] == "rolled_back" and s["target_pending"] is None)
    assert st["stage"] == "pilot" and st["exposure"]["percent"] == 5
    await signal(h, "resume", actor=IR, reason="fixed")
    st = await wait_for(h, soaking)
    assert st["stage"] == "pilot" and st["escalation"]["acknowledged_by"] == IR
    await ts_env.sleep(hours(73))
    st = await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
    assert st["approvals"]["given"] == {}
    assert (await status(h))["exposure_stage"] == "pilot"
