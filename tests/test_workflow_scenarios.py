"""Whole-rollout scenarios on the time-skipping test server (actions by signal)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from tests import plans
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, WORKFLOW_OWNER
from tests.wfkit import (
    STARTED,
    bounded_shutdown,
    clean_monitor,
    hours,
    record_histories,
    signal,
    start,
    status,
    wait_for,
)
from worker.main import RolloutWorker, build_worker


@pytest.fixture
def store(sqlite_store: AuditStore) -> AuditStore:
    return sqlite_store


HISTORIES = Path(__file__).parent / "histories"


@pytest.fixture
async def worker(
    ts_env: WorkflowEnvironment, store: AuditStore, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    w: RolloutWorker = build_worker(
        ts_env.client, store, queue=queue, replace_activities={"monitor_thresholds": clean_monitor}
    )
    STARTED.clear()
    run = asyncio.create_task(w.run())
    try:
        yield queue
        # `ROLLOUT_RECORD_HISTORIES=1 pytest tests/test_workflow_scenarios.py` refreshes tests/histories/
        if os.environ.get("ROLLOUT_RECORD_HISTORIES") == "1":
            await record_histories(request.node.name.removeprefix("test_"), HISTORIES)
    finally:
        await bounded_shutdown(w, run)


async def approve(h: Any, stage: str, role: str, actor: str) -> None:
    await signal(h, "approve", actor=actor, stage=stage, role=role, comment="ok")


async def through_pilot(env: WorkflowEnvironment, h: Any) -> None:
    await approve(h, "pilot", "engineering", ENG1)
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    await env.sleep(hours(73))
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")


async def test_happy_path_three_stages(ts_env: WorkflowEnvironment, worker: str, store: AuditStore) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    st = await wait_for(h, lambda s: s["status"] == "awaiting_approval")
    assert st["stage"] == "pilot" and st["exposure_stage"] is None and st["exposure"]["percent"] == 0
    assert st["approvals"]["missing"] == ["engineering"]

    await through_pilot(ts_env, h)
    st = await status(h)
    assert st["exposure_stage"] == "pilot" and st["exposure"]["percent"] == 5
    assert st["exposure"]["authority"]["refund"] == "forbid"

    await approve(h, "limited-25", "engineering", ENG2)
    await approve(h, "limited-25", "operations", OPS)
    st = await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    assert st["exposure"]["percent"] == 25 and st["exposure"]["authority"]["send_customer_message"] == "auto"
    await ts_env.sleep(hours(24 * 7 + 1))
    st = await wait_for(h, lambda s: s["status"] == "awaiting_handoff")
    assert [p["item"] for p in st["pending_handoff"]] == ["Support leads briefed"]
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval")

    for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
        await approve(h, "system-of-record", role, who)
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    # handoff items may be acknowledged any time once the stage is entered
    await signal(h, "acknowledge", actor=OPS, item="On-call rota includes the agent")
    await ts_env.sleep(hours(24 * 14 + 1))
    st = await wait_for(h, lambda s: s["status"] == "awaiting_handoff")
    assert [p["item"] for p in st["pending_handoff"]] == ["Runbook reviewed"]
    await signal(h, "acknowledge", actor=IR, item="Runbook reviewed")
    result = await h.result()
    assert result["status"] == "completed" and result["exposure"]["percent"] == 100
    rows = await store.read(h.id)
    actions = [r.event.action for r in rows] if hasattr(rows[0], "event") else [r.action for r in rows]  # type: ignore[attr-defined]
    assert actions[0] == "started" and actions[-1] == "completed"
    assert actions.count("stage_entered") == 3


async def test_refusals_are_recorded_and_change_nothing(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await wait_for(h, lambda s: s["status"] == "awaiting_approval")
    await approve(h, "pilot", "engineering", OWNER)  # rollout owner, though listed
    await approve(h, "pilot", "operations", OPS)  # role not needed by this stage
    await approve(h, "pilot", "engineering", RISK)  # not listed for the role
    await approve(h, "limited-25", "engineering", ENG1)  # not the awaited stage
    await approve(h, "nope", "engineering", ENG1)  # unknown stage
    st = await wait_for(h, lambda s: len(s["refused"]) == 5)
    reasons = [r["reason"] for r in st["refused"]]
    assert "rollout owner" in reasons[0]
    assert "does not need an approval for role 'operations'" in reasons[1]
    assert "not listed for role 'engineering'" in reasons[2]
    assert "not awaiting approval" in reasons[3]
    assert "unknown stage 'nope'" in reasons[4]
    assert st["status"] == "awaiting_approval" and st["approvals"]["given"] == {}


async def test_duplicate_and_distinct_from(ts_env: WorkflowEnvironment, worker: str) -> None:
    d = plans.plan_dict()
    d["approvers"]["risk"] = [RISK, WORKFLOW_OWNER]
    d["approvers"]["operations"] = [OPS, ENG1]
    h = await start(ts_env.client, d, worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    await approve(h, "limited-25", "engineering", ENG2)  # role already approved
    await approve(h, "limited-25", "operations", ENG1)  # identity already approved
    st = await wait_for(h, lambda s: len(s["refused"]) == 2)
    assert "already approved in this entry" in st["refused"][0]["reason"]
    assert "already approved this entry" in st["refused"][1]["reason"]
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "soaking")
    await ts_env.sleep(hours(24 * 7 + 1))
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval")
    await approve(h, "system-of-record", "risk", WORKFLOW_OWNER)  # distinct_from: {risk: [workflow]}
    st = await wait_for(h, lambda s: len(s["refused"]) == 3)
    assert "separation of duties" in st["refused"][2]["reason"]


async def test_breach_hold_escalation_resume_restarts_window(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await approve(h, "pilot", "engineering", ENG1)
    st = await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    first_end = st["window_ends_at"]
    await ts_env.sleep(hours(48))
    await signal(h, "report_breach", source="test-monitor", threshold="error_rate", value=0.09,
                 detail={"why": "test"})
    st = await wait_for(h, lambda s: s["status"] == "held" and s["exposure"]["frozen"])
    assert st["window_ends_at"] is None and st["target_pending"] is None
    assert st["escalation"]["level"] == 0 and st["escalation"]["pages"][0]["recipients"] == [IR]
    assert st["open_breaches"][0]["evidence"]["value"] == 0.09
    await ts_env.sleep(timedelta_minutes(6))
    st = await wait_for(h, lambda s: s["escalation"]["level"] == 1)
    assert st["escalation"]["pages"][1]["recipients"] == [OWNER]
    await ts_env.sleep(timedelta_minutes(5))
    st = await wait_for(h, lambda s: s["escalation"]["level"] == 2)
    assert set(st["escalation"]["pages"][2]["recipients"]) == {IR, OWNER}
    # a repeat for the same threshold changes nothing
    await signal(h, "report_breach", source="test-monitor", threshold="error_rate")
    await signal(h, "resume", actor=IR, reason="false alarm")
    st = await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    assert st["escalation"]["acknowledged_by"] == IR
    assert st["window_ends_at"] > first_end  # restarted from zero, not resumed
    assert st["open_breaches"] == []
    await ts_env.sleep(hours(71))
    assert (await status(h))["stage"] == "pilot"
    await ts_env.sleep(hours(2))
    await wait_for(h, lambda s: s["stage"] == "limited-25")


def timedelta_minutes(n: float) -> Any:
    from datetime import timedelta

    return timedelta(minutes=n)


async def test_narrow_and_rollback_from_limited(ts_env: WorkflowEnvironment, worker: str) -> None:
    d = plans.with_thresholds(
        plans.plan_dict(),
        1,
        {"name": "latency", "query": "x", "max": 1.0, "action": "narrow"},
        {"name": "errors", "query": "y", "max": 0.1, "action": "rollback"},
    )
    h = await start(ts_env.client, d, worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await signal(h, "report_breach", source="m", threshold="latency", value=2.5)
    st = await wait_for(h, lambda s: s["status"] == "held" and s["exposure"]["percent"] == 5)
    assert st["exposure_stage"] == "limited-25"
    assert st["exposure"]["authority"]["send_customer_message"] == "review"  # auto -> review
    assert st["exposure"]["authority"]["read"] == "review"
    # a stricter breach while held applies
    await signal(h, "report_breach", source="m", threshold="errors", value=0.5)
    st = await wait_for(h, lambda s: s["status"] == "rolled_back" and s["target_pending"] is None)
    assert st["stage"] == "pilot" and st["exposure_stage"] == "pilot" and st["exposure"]["percent"] == 5
    assert st["handoff_acknowledged"].get("limited-25") is None
    # the stage rolled back from is no longer entered: its handoff cannot be acknowledged now
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    st = await wait_for(h, lambda s: len(s["refused"]) == 1)
    assert "has not been entered yet" in st["refused"][0]["reason"]
    await signal(h, "resume", actor=OWNER, reason="fixed")
    await wait_for(h, lambda s: s["status"] == "soaking" and s["stage"] == "pilot" and s["window_ends_at"])
    await ts_env.sleep(hours(73))
    st = await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
    assert st["approvals"]["given"] == {}  # a stage entered again needs fresh approvals


async def test_rollback_from_pilot_goes_to_zero(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await approve(h, "pilot", "engineering", ENG1)
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    await signal(h, "rollback", actor=RISK, reason="bad replies")
    st = await wait_for(h, lambda s: s["status"] == "rolled_back" and s["exposure"]["percent"] == 0)
    assert st["stage"] == "pilot" and st["exposure_stage"] is None
    assert st["escalation"]["pages"][0]["recipients"] == [IR]  # RISK may not acknowledge: chain[0] paged
    await signal(h, "resume", actor=IR, reason="retry")
    st = await wait_for(h, lambda s: s["status"] == "awaiting_approval")
    assert st["approvals"]["given"] == {}


async def test_reject_holds_and_resume_returns_to_approval(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await approve(h, "pilot", "engineering", ENG1)
    await through_pilot_wait(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    await signal(h, "reject", actor=OPS, stage="limited-25", role="operations", reason="not ready")
    st = await wait_for(h, lambda s: s["status"] == "held")
    assert st["approvals"]["given"] == {} and "not ready" in st["hold"]["reason"]
    assert st["exposure"]["percent"] == 5
    await signal(h, "resume", actor=IR, reason="ready now")
    await wait_for(h, lambda s: s["status"] == "awaiting_approval")
    await approve(h, "limited-25", "operations", OPS)  # the rejecter may approve later
    await approve(h, "limited-25", "engineering", ENG2)
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "soaking")


async def through_pilot_wait(env: WorkflowEnvironment, h: Any) -> None:
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    await env.sleep(hours(73))
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")


async def test_handoff_gate_blocks_exit(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    await ts_env.sleep(hours(24 * 30))
    st = await wait_for(h, lambda s: s["status"] == "awaiting_handoff")
    assert st["stage"] == "limited-25"
    await signal(h, "acknowledge", actor=ENG1, item="Support leads briefed")  # wrong receiver
    st = await wait_for(h, lambda s: len(s["refused"]) == 1)
    assert "goes to 'operations'" in st["refused"][0]["reason"] and st["status"] == "awaiting_handoff"
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await wait_for(h, lambda s: s["stage"] == "system-of-record")


async def test_max_hold_becomes_rollback(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
    await signal(h, "hold", actor=IR, reason="investigating")
    st = await wait_for(h, lambda s: s["status"] == "held")
    assert st["escalation"]["acknowledged_by"] == IR  # the actor may acknowledge: nobody paged
    await ts_env.sleep(hours(24 * 7 + 1))
    st = await wait_for(h, lambda s: s["status"] == "rolled_back" and s["target_pending"] is None)
    assert st["stage"] == "pilot" and st["exposure"]["percent"] == 5


async def test_amendment_resets_awaited_approvals(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    new = plans.plan_dict()
    new["stages"][2]["window"] = "21d"
    await signal(h, "amend", actor=OWNER, plan=new, reason="longer SoR window")
    st = await wait_for(h, lambda s: s["pending_amendment"] is not None)
    new_hash = st["pending_amendment"]["plan_hash"]
    old_hash = st["plan_hash"]
    changed = plans.plan_dict()
    changed["stages"][0]["window"] = "1h"  # an entered stage may not change
    await signal(h, "amend", actor=OWNER, plan=changed)
    await signal(h, "amend", actor=ENG1, plan=new)  # only the rollout owner amends
    st = await wait_for(h, lambda s: len(s["refused"]) == 2)
    assert "already entered" in st["refused"][0]["reason"]
    assert "only the rollout owner" in st["refused"][1]["reason"]
    await signal(h, "approve", actor=ENG2, amendment=new_hash, role="engineering")
    await signal(h, "approve", actor=OPS, amendment=new_hash, role="operations")
    st = await wait_for(h, lambda s: s["plan_hash"] == new_hash)
    assert st["plan_hash"] != old_hash and st["pending_amendment"] is None
    assert st["approvals"]["given"] == {}  # approvals already given for the awaited stage are void


async def test_continue_as_new_keeps_state(ts_env: WorkflowEnvironment, worker: str) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker, continue_as_new_after=60)
    await through_pilot(ts_env, h)
    await approve(h, "limited-25", "engineering", ENG1)
    for i in range(25):
        await signal(h, "approve", actor=f"stranger{i}@example.com", stage="limited-25", role="operations")
    await signal(h, "report_breach", source="m", threshold="t", observed_at="2000-01-01T00:00:00Z")
    # within 90 s: in about 1 run of 6 (on the shell before and after the no-empty-tasks change)
    # the time-skipping server leaves the new run's queries unanswered for ~28 s after the old
    # run's last task completion is refused ("workflow execution already completed"); it recovers
    st = await wait_for(h, lambda s: s["runs"] >= 2, within=90)
    assert st["approvals"]["given"]["engineering"]["actor"] == ENG1
    assert st["exposure_stage"] == "pilot"
    desc = await h.describe()
    assert desc.run_id != h.first_execution_run_id or st["runs"] >= 2
    await approve(h, "limited-25", "operations", OPS)
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "soaking")


async def test_ninety_day_plan_does_not_grow_history_with_time(ts_env: WorkflowEnvironment, worker: str) -> None:
    d = plans.plan_dict()
    for st in d["stages"]:
        st["window"] = "30d"
    h = await start(ts_env.client, d, worker)
    await approve(h, "pilot", "engineering", ENG1)
    # quiet: soaking, window running, every audit row written
    await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None
                   and (s["audit_head"] or {}).get("seq") == s["audit_seq"])
    before = len((await h.fetch_history()).events)
    for _ in range(29):
        await ts_env.sleep(hours(24))
    st = await status(h)
    assert st["status"] == "soaking" and st["stage"] == "pilot"
    after = len((await h.fetch_history()).events)
    # at most one timer that fell due meanwhile (the target's give-up timer, never cancelled:
    # the shell does not cancel timers): its TimerFired, one workflow task (3 events), the
    # memo every outside event records and the timer started after it; nothing per day
    assert after - before <= 6, f"29 days of soaking grew history by {after - before} events"
    await ts_env.sleep(hours(25))
    await wait_for(h, lambda s: s["stage"] == "limited-25")


async def test_signals_on_a_held_rollout_page_until_acknowledged_and_late_timers_record_delay(
    ts_env: WorkflowEnvironment, worker: str
) -> None:
    h = await start(ts_env.client, plans.plan_dict(), worker)
    await signal(h, "hold", actor=RISK, reason="before the pilot")  # a hold before the pilot
    st = await wait_for(h, lambda s: s["status"] == "held")
    assert st["exposure_stage"] is None and st["escalation"]["pages"][0]["recipients"] == [IR]
    await approve(h, "pilot", "engineering", ENG1)  # approvals are accepted during a hold that interrupted them
    st = await wait_for(h, lambda s: "engineering" in s["approvals"]["given"])
    assert st["status"] == "held"  # ... but no entry follows a containment without a resume
    await signal(h, "acknowledge", actor=RISK, escalation=True)  # RISK may not acknowledge
    await wait_for(h, lambda s: len(s["refused"]) == 1)
    await signal(h, "acknowledge", actor=OWNER, escalation=True)
    st = await wait_for(h, lambda s: s["escalation"]["acknowledged_by"] == OWNER)
    await signal(h, "resume", actor=OWNER, reason="go")
    await wait_for(h, lambda s: s["status"] == "soaking" and s["stage"] == "pilot")
