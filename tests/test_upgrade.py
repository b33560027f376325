"""Upgrade: a rollout started on the code of before the state machine goes on after the upgrade.

`OldStagedRollout` is that code as it ran in production (the frozen
workflows/legacy/v1.py under the workflow name `StagedRollout`, never calling
`workflow.patched`). A rollout runs on it until the middle of its pilot window; that
worker stops and a worker built by `worker.main.build_worker` (today's StagedRollout)
takes the task queue over. It must replay the old history (no patch marker recorded,
so the new shell delegates to the legacy code) and drive the rollout to `completed`
without a single failed workflow task.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio import workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from activities.audit_store import AuditStore
from rollout.plan import validate_plan_data
from tests import history_shape, plans
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK
from tests.wfkit import bounded_shutdown, hours, signal, wait_for
from worker.main import activities_for, build_worker
from workflows.legacy.v1 import LegacyStagedRollout
from workflows.messages import RolloutInput
from workflows.staged_rollout import StagedRollout


@workflow.defn(name="StagedRollout")
class OldStagedRollout(LegacyStagedRollout):
    """The workflow as it was registered before the state machine (handlers inherited;
    the SDK wants `run` declared on the registered class itself)."""

    @workflow.run
    async def run(self, inp: RolloutInput) -> dict[str, Any]:
        return await super().run(inp)


OLD_IDENTITY = "old-code-worker"
NEW_IDENTITY = "new-code-worker"


async def connect_as(env: WorkflowEnvironment, identity: str) -> Client:
    return await Client.connect(env.client.service_client.config.target_host, identity=identity,
                                data_converter=pydantic_data_converter)


def soaking(s: dict[str, Any]) -> bool:
    return bool(s["status"] == "soaking" and s["window_ends_at"] is not None)


async def approve(h: Any, stage: str, role: str, actor: str) -> None:
    await signal(h, "approve", actor=actor, stage=stage, role=role, comment="ok")


def test_old_workflow_registers_every_handler_of_the_legacy_code() -> None:
    defn = workflow._Definition.must_from_class(OldStagedRollout)
    assert defn.name == "StagedRollout"
    actions = {"approve", "reject", "hold", "resume", "rollback", "acknowledge", "amend", "abort"}
    assert actions <= set(defn.updates)
    assert actions | {"report_breach"} <= set(defn.signals)
    assert "status" in defn.queries


async def test_rollout_recorded_on_old_code_mid_window_replays_and_completes_on_new_code(
    ts_env: WorkflowEnvironment, sqlite_store: AuditStore
) -> None:
    queue = f"upgrade-{uuid.uuid4().hex[:8]}"
    old_client = await connect_as(ts_env, OLD_IDENTITY)
    old = Worker(old_client, task_queue=queue, workflows=[OldStagedRollout], activities=activities_for(sqlite_store),
                 workflow_runner=UnsandboxedWorkflowRunner(),
                 # no sticky queue: the time-skipping server never moves a task off the sticky
                 # queue of a stopped worker (a real cluster does after 5 s)
                 max_cached_workflows=0)
    old_run = asyncio.create_task(old.run())
    plan = validate_plan_data(plans.plan_dict("upgrade"))
    h = await ts_env.client.start_workflow("StagedRollout", RolloutInput(plan=plan, started_by=OWNER),
                                           id=f"rollout-upgrade-{uuid.uuid4().hex[:6]}", task_queue=queue)
    try:
        await approve(h, "pilot", "engineering", ENG1)
        st = await wait_for(h, soaking)
        assert st["stage"] == "pilot"
        await ts_env.sleep(hours(30))  # the middle of the 72h pilot window
        st = await wait_for(h, soaking)
        assert st["stage"] == "pilot"
    finally:
        await bounded_shutdown(old, old_run)
    before = [e async for e in h.fetch_history_events()]
    switched_at = before[-1].event_id

    new_client = await connect_as(ts_env, NEW_IDENTITY)
    new = build_worker(new_client, sqlite_store, queue=queue)
    new_run = asyncio.create_task(new.run())
    try:
        st = await wait_for(h, soaking)  # the new code answers from the replayed old history
        assert st["stage"] == "pilot" and st["exposure"]["percent"] == 5
        await ts_env.sleep(hours(43))  # the pilot window ends: its timer fires on the new code
        await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
        await approve(h, "limited-25", "engineering", ENG2)
        await approve(h, "limited-25", "operations", OPS)
        await wait_for(h, lambda s: s["stage"] == "limited-25" and soaking(s))
        await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
        await ts_env.sleep(hours(24 * 7 + 1))
        await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval")
        for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
            await approve(h, "system-of-record", role, who)
        await wait_for(h, soaking)
        await signal(h, "acknowledge", actor=OPS, item="On-call rota includes the agent")
        await signal(h, "acknowledge", actor=IR, item="Runbook reviewed")
        await ts_env.sleep(hours(24 * 14 + 1))
        result = await asyncio.wait_for(h.result(), 60)
    finally:
        await bounded_shutdown(new, new_run)

    assert result["status"] == "completed" and result["exposure"]["percent"] == 100
    history = await h.fetch_history()
    events = history.events
    assert history_shape.failures(events) == []
    assert history_shape.patch_ids(events) == []  # the run stays on the code it started on
    assert history_shape.name(events[-1]) == "WORKFLOW_EXECUTION_COMPLETED"
    started_by = {e.event_id: e.workflow_task_started_event_attributes.identity for e in events
                  if e.HasField("workflow_task_started_event_attributes")}
    assert {who for eid, who in started_by.items() if eid <= switched_at} == {OLD_IDENTITY}
    assert {who for eid, who in started_by.items() if eid > switched_at} == {NEW_IDENTITY}
    replayer = Replayer(workflows=[StagedRollout], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
