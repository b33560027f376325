"""Approval latency on a real Temporal dev server.

Starts Temporal's dev server on 127.0.0.1 (a free port), a worker built by
`build_worker` with a temporary SQLite audit store, and N rollouts of the test plan
(tests/plans.py, unique names). For each rollout: one refused `approve` update (the
rollout owner approving their own rollout), then the pilot's one approval as an
update, then status queries until the rollout is `soaking` with the target's
acknowledgement in (window running, nothing pending at the target). Then a burst of
status queries. Prints one JSON object.

    .venv/bin/python -m bench.bench_approvals [--rollouts 50] [--concurrency 10]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from bench.common import (
    Deadline,
    emit,
    machine,
    max_rss_kb,
    rss_kb,
    stdout_to_stderr,
    summary_ms,
    tool_path,
)
from rollout.plan import validate_plan_data
from tests import plans
from worker import client as rollout_client
from worker.main import build_worker
from workflows import search_attrs

POLL = 0.01  # seconds between status queries while waiting for `soaking`


def child_pids() -> list[int]:
    """Direct children of this process (the dev server), from /proc."""
    pids: list[int] = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def server_rss_kb() -> int | None:
    total = 0
    found = False
    for pid in child_pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"temporal"):
            total += rss_kb(pid) or 0
            found = True
    return total if found else None


def soaking_acknowledged(st: dict[str, Any]) -> bool:
    """Entered the pilot and the target acknowledged its scope: the window is running."""
    return (
        st.get("status") == "soaking"
        and st.get("window_ends_at") is not None
        and st.get("target_pending") is None
        and st.get("exposure_stage") == "pilot"
    )


async def bounded(n: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    rss_process_start = rss_kb()
    t0 = time.perf_counter()
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        search_attributes=search_attrs.ALL,
        dev_server_existing_path=tool_path("temporal"),
        dev_server_log_level="error",
        ip="127.0.0.1",
    )
    server_start_s = time.perf_counter() - t0
    tmp = tempfile.TemporaryDirectory(prefix="bench-approvals-")
    store = AuditStore.from_url(f"sqlite+aiosqlite:///{Path(tmp.name) / 'audit.db'}")
    try:
        await store.migrate()
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        os.environ["ROLLOUT_TASK_QUEUE"] = queue  # worker.client.start uses it
        client: Client = env.client
        run = uuid.uuid4().hex[:6]
        async with build_worker(client, store, queue=queue):
            rss_before = rss_kb()
            handles: list[WorkflowHandle[Any, Any]] = []
            start_s: list[float] = []
            refused_s: list[float] = []
            approve_s: list[float] = []
            to_soak_s: list[float] = []
            query_s: list[float] = []
            errors: list[str] = []

            def starter(i: int) -> Callable[[], Awaitable[None]]:
                async def job() -> None:
                    plan = validate_plan_data(plans.plan_dict(name=f"bench-{run}-{i}"))
                    t = time.perf_counter()
                    h = await rollout_client.start(client, plan, started_by=plan.owners.rollout)
                    start_s.append(time.perf_counter() - t)
                    handles.append(h)

                return job

            t = time.perf_counter()
            await asyncio.wait_for(
                bounded(args.concurrency, [starter(i) for i in range(args.rollouts)]), budget.left()
            )
            start_wall = time.perf_counter() - t

            # settle: each rollout has run its first workflow task (audit base fetched, trail started),
            # as a rollout has long before a human approves it
            settle_s: list[float] = []

            def settler(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
                async def job() -> None:
                    t = time.perf_counter()
                    while not budget.expired():
                        st: dict[str, Any] = await h.query("status", result_type=dict)
                        if int(st.get("audit_seq", 0)) >= 1:
                            break
                        await asyncio.sleep(POLL)
                    settle_s.append(time.perf_counter() - t)

                return job

            await asyncio.wait_for(bounded(args.concurrency, [settler(h) for h in handles]), budget.left())

            def approver(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
                async def job() -> None:
                    # refused: the rollout owner may not approve their own rollout (no history written)
                    t = time.perf_counter()
                    try:
                        await h.execute_update(
                            "approve",
                            {"actor": plans.OWNER, "stage": "pilot", "role": "engineering"},
                            result_type=dict,
                        )
                        errors.append(f"{h.id}: self-approval was accepted")
                    except WorkflowUpdateFailedError:
                        refused_s.append(time.perf_counter() - t)
                    # the last (only) approval the pilot needs
                    t = time.perf_counter()
                    await h.execute_update(
                        "approve",
                        {"actor": plans.ENG1, "stage": "pilot", "role": "engineering", "comment": "bench"},
                        result_type=dict,
                    )
                    accepted = time.perf_counter()
                    approve_s.append(accepted - t)
                    while True:
                        st: dict[str, Any] = await h.query("status", result_type=dict)
                        if soaking_acknowledged(st):
                            to_soak_s.append(time.perf_counter() - accepted)
                            return
                        if budget.expired():
                            errors.append(f"{h.id}: not soaking in time (status {st.get('status')})")
                            return
                        await asyncio.sleep(POLL)

                return job

            t = time.perf_counter()
            await asyncio.wait_for(bounded(args.concurrency, [approver(h) for h in handles]), budget.left())
            approve_wall = time.perf_counter() - t

            def querier(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
                async def job() -> None:
                    t = time.perf_counter()
                    st: dict[str, Any] = await h.query("status", result_type=dict)
                    query_s.append(time.perf_counter() - t)
                    if st.get("status") != "soaking":
                        errors.append(f"{h.id}: status {st.get('status')} in the query phase")

                return job

            t = time.perf_counter()
            await asyncio.wait_for(
                bounded(args.concurrency, [querier(h) for h in handles for _ in range(args.queries)]),
                budget.left(),
            )
            query_wall = time.perf_counter() - t

            # every decision also lands in the audit store; give the audit activity a moment
            audit_rows = 0
            while not budget.expired():
                audit_rows = sum([await store.last_seq(h.id) for h in handles])
                statuses = [await h.query("status", result_type=dict) for h in handles]
                if audit_rows >= sum(int(s["audit_seq"]) for s in statuses):
                    break
                await asyncio.sleep(0.1)
            history = [len((await h.fetch_history()).events) for h in handles]
            rss_after = rss_kb()
            dev_rss = server_rss_kb()
        # open rollouts end with the dev server, which is thrown away below
    finally:
        await store.close()
        await env.shutdown()
        tmp.cleanup()

    return {
        "benchmark": "approvals",
        "server": "temporal dev server (start_local, SQLite in memory)",
        "rollouts": args.rollouts,
        "concurrency": args.concurrency,
        "server_start_s": round(server_start_s, 2),
        "start": {**summary_ms(start_s), "wall_s": round(start_wall, 3),
                  "per_s": round(len(start_s) / start_wall, 1) if start_wall else None},
        "settle_after_start": summary_ms(settle_s),
        "update_refused": summary_ms(refused_s),
        "update_approve": summary_ms(approve_s),
        "approval_to_soaking": summary_ms(to_soak_s),
        "approve_phase_wall_s": round(approve_wall, 3),
        "status_query": {**summary_ms(query_s), "wall_s": round(query_wall, 3),
                         "per_s": round(len(query_s) / query_wall, 1) if query_wall else None},
        "history_events_per_rollout": {"min": min(history, default=0), "max": max(history, default=0)},
        "audit_rows": audit_rows,
        "worker_rss_kb": {
            "process_start": rss_process_start,
            "before": rss_before,
            "after": rss_after,
            "growth": (rss_after - rss_before) if rss_after is not None and rss_before is not None else None,
            "peak": max_rss_kb(),
        },
        "dev_server_rss_kb": dev_rss,
        "errors": errors[:20],
        "error_count": len(errors),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=50, help="rollouts to start (default 50)")
    ap.add_argument("--concurrency", type=int, default=10, help="requests in flight at once (default 10)")
    ap.add_argument("--queries", type=int, default=10, help="status queries per rollout in the query phase")
    ap.add_argument("--timeout", type=float, default=100.0, help="overall budget in seconds (default 100)")
    args = ap.parse_args(argv)
    if not 1 <= args.rollouts <= 2000 or not 1 <= args.concurrency <= 200:
        ap.error("--rollouts must be 1..2000 and --concurrency 1..200")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 1 if result["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
