"""History size on the time-skipping test server: time alone does not grow history.

Part 1, `ninety_day`: one rollout of the test plan with every window set to 30d (a
90-day plan), driven through all three stages by signals, with `env.sleep` skipping
one simulated day at a time. Reports the events of each run (continue-as-new), the
events added per simulated day while soaking, and events per simulated day overall.

Part 2, `storm`: 2,000 refused signals (approvals from identities not in the plan)
against one rollout started with `continue_as_new_after=1000`; reports the runs and
the largest history of any run, i.e. that a noisy rollout's history stays bounded.

    .venv/bin/python -m bench.bench_history [--signals 2000] [--can-after 1000]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from bench.common import Deadline, emit, machine, register_search_attributes, stdout_to_stderr, tool_path
from tests import plans
from tests.plans import ENG1, ENG2, IR, OPS, RISK
from tests.wfkit import start
from worker.main import build_worker

DAY = timedelta(days=1)


async def runs_of(client: Client, wid: str, first_run_id: str) -> list[dict[str, Any]]:
    """Every run of a workflow id from its first, following continue-as-new, with its history size."""
    out: list[dict[str, Any]] = []
    run_id: str | None = first_run_id
    while run_id:
        hist = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        last = hist.events[-1] if hist.events else None
        out.append({"run_id": run_id, "events": len(hist.events)})
        run_id = None
        if last is not None and last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return out


async def total_events(client: Client, h: WorkflowHandle[Any, Any]) -> int:
    assert h.first_execution_run_id is not None
    return sum(r["events"] for r in await runs_of(client, h.id, h.first_execution_run_id))


async def wait_for(
    h: WorkflowHandle[Any, Any], pred: Callable[[dict[str, Any]], bool], budget: Deadline, what: str
) -> dict[str, Any]:
    last: dict[str, Any] = {}
    while not budget.expired():
        last = await query_status(h, budget)
        if pred(last):
            return last
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what}: not reached in time; status={last.get('status')} stage={last.get('stage')}")


async def query_status(h: WorkflowHandle[Any, Any], budget: Deadline) -> dict[str, Any]:
    """`status` of the newest run; retried, since a query sent while a run continues as new can time out."""
    while True:
        try:
            st: dict[str, Any] = await h.query("status", result_type=dict, rpc_timeout=timedelta(seconds=5))
            return st
        except RPCError:
            if budget.expired():
                raise
            await asyncio.sleep(0.2)


async def signal(h: WorkflowHandle[Any, Any], name: str, **payload: Any) -> None:
    await h.signal(name, payload)


async def ninety_day(env: WorkflowEnvironment, queue: str, budget: Deadline) -> dict[str, Any]:
    client = env.client
    d = plans.plan_dict(name="bench-ninety-day")
    for st in d["stages"]:
        st["window"] = "30d"
    t_wall = time.perf_counter()
    first = await start(client, d, queue)
    h = client.get_workflow_handle(first.id, first_execution_run_id=first.first_execution_run_id)  # follows runs
    await wait_for(h, lambda s: s["status"] == "awaiting_approval", budget, "started")
    simulated_days = 0
    per_day: list[int] = []  # events added by one simulated day of soaking
    stages: list[dict[str, Any]] = []

    async def soak(stage: str) -> None:
        nonlocal simulated_days
        await wait_for(h, lambda s: s["stage"] == stage and s["status"] == "soaking"
                       and s["window_ends_at"] is not None, budget, f"{stage} soaking")
        at_entry = await total_events(client, h)
        before = at_entry
        for _ in range(29):  # the first 29 days: nothing but time passes
            await env.sleep(DAY)
            simulated_days += 1
            now = await total_events(client, h)
            per_day.append(now - before)
            before = now
        st = await h.query("status", result_type=dict)
        assert st["status"] == "soaking" and st["stage"] == stage, st["status"]
        await env.sleep(DAY + timedelta(hours=1))  # the window ends inside this day
        simulated_days += 1
        await wait_for(h, lambda s: s["stage"] != stage or s["status"] != "soaking", budget, f"{stage} window end")
        stages.append({
            "stage": stage,
            "events_at_entry": at_entry,
            "events_after_29_days": before,
            "events_after_window": await total_events(client, h),
        })

    await signal(h, "approve", actor=ENG1, stage="pilot", role="engineering")
    await soak("pilot")
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval",
                   budget, "limited-25 awaiting approval")
    await signal(h, "approve", actor=ENG2, stage="limited-25", role="engineering")
    await signal(h, "approve", actor=OPS, stage="limited-25", role="operations")
    await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await soak("limited-25")
    await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval",
                   budget, "system-of-record awaiting approval")
    for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
        await signal(h, "approve", actor=who, stage="system-of-record", role=role)
    await signal(h, "acknowledge", actor=OPS, item="On-call rota includes the agent")
    await signal(h, "acknowledge", actor=IR, item="Runbook reviewed")
    await soak("system-of-record")
    result: dict[str, Any] = await asyncio.wait_for(h.result(), budget.left())
    assert h.first_execution_run_id is not None
    runs = await runs_of(client, h.id, h.first_execution_run_id)
    total = sum(r["events"] for r in runs)
    return {
        "final_status": result.get("status"),
        "simulated_days": simulated_days,
        "runs": len(runs),
        "events_per_run": [r["events"] for r in runs],
        "events_total": total,
        "events_per_simulated_day": round(total / simulated_days, 2) if simulated_days else None,
        "soaking_events_per_day": {
            "days": len(per_day),
            "max": max(per_day, default=0),
            "mean": round(sum(per_day) / len(per_day), 3) if per_day else None,
            "days_with_zero": sum(1 for x in per_day if x == 0),
        },
        "stages": stages,
        "wall_s": round(time.perf_counter() - t_wall, 2),
    }


async def storm(env: WorkflowEnvironment, store: AuditStore, queue: str, budget: Deadline, n: int,
                can_after: int, concurrency: int) -> dict[str, Any]:
    client = env.client
    first = await start(client, plans.plan_dict(name="bench-storm"), queue, continue_as_new_after=can_after)
    h = client.get_workflow_handle(first.id, first_execution_run_id=first.first_execution_run_id)  # follows runs
    st0 = await wait_for(h, lambda s: s["status"] == "awaiting_approval" and s["audit_seq"] >= 1,
                         budget, "storm rollout started")
    base = int(st0["audit_seq"])
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            # refused: not listed for the role (changes nothing; recorded in status.refused and the audit trail)
            await signal(h, "approve", actor=f"stranger{i}@example.com", stage="pilot", role="engineering")

    t = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), budget.left())
    sent_s = time.perf_counter() - t
    # Each refusal is one audit row. All are handled once every row is in the store; a run that
    # passed `continue_as_new_after` continues as new after flushing its audit rows, so wait for
    # the rows, then for the run chain to stop changing.
    while not budget.expired():
        if await store.last_seq(h.id) >= base + n:
            break
        await asyncio.sleep(0.05)
    processed_s = time.perf_counter() - t
    assert first.first_execution_run_id is not None
    runs: list[dict[str, Any]] = []
    while not budget.expired():
        now = await runs_of(client, h.id, first.first_execution_run_id)
        if now == runs:
            break
        runs = now
        await asyncio.sleep(0.5)
    events = [r["events"] for r in runs]
    st = await query_status(h, budget)
    return {
        "signals": n,
        "continue_as_new_after": can_after,
        "signals_sent_s": round(sent_s, 2),
        "signals_processed_s": round(processed_s, 2),
        "audit_rows": await store.last_seq(h.id),
        "signals_per_s": round(n / processed_s, 1) if processed_s else None,
        "runs": len(runs),
        "status_runs": st.get("runs"),
        "events_per_run": events,
        "max_events_per_run": max(events, default=0),
        "refused_kept_in_status": len(st.get("refused", [])),
        "status_after": st.get("status"),
        "approvals_given": st["approvals"]["given"],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=tool_path("temporal-test-server"),
    )
    tmp = tempfile.TemporaryDirectory(prefix="bench-history-")
    store = AuditStore.from_url(f"sqlite+aiosqlite:///{Path(tmp.name) / 'audit.db'}")
    try:
        await register_search_attributes(env.client)
        await store.migrate()
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with build_worker(env.client, store, queue=queue):
            long_run = await ninety_day(env, queue, budget)
            noisy = await storm(env, store, queue, budget, args.signals, args.can_after, args.concurrency)
    finally:
        await store.close()
        await env.shutdown()
        tmp.cleanup()
    return {
        "benchmark": "history",
        "server": "temporal time-skipping test server",
        "ninety_day": long_run,
        "storm": noisy,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signals", type=int, default=2000, help="refused signals in the storm (default 2000)")
    ap.add_argument("--can-after", type=int, default=1000, help="continue_as_new_after for the storm (default 1000)")
    ap.add_argument("--concurrency", type=int, default=20, help="signals in flight at once (default 20)")
    ap.add_argument("--timeout", type=float, default=110.0, help="overall budget in seconds (default 110)")
    args = ap.parse_args(argv)
    if not 1 <= args.signals <= 20000 or args.can_after < 100 or not 1 <= args.concurrency <= 200:
        ap.error("--signals must be 1..20000, --can-after at least 100, --concurrency 1..200")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
