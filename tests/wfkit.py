"""Helpers for driving StagedRollout in tests: start, act by signal or update, wait for a state."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.worker import Worker

from rollout.models import MonitorRequest, MonitorResult
from rollout.plan import validate_plan_data
from worker.main import RolloutWorker
from workflows.messages import RolloutInput
from workflows.staged_rollout import StagedRollout


@activity.defn(name="monitor_thresholds")
async def clean_monitor(req: MonitorRequest) -> MonitorResult:
    """Stand-in for Prometheus in time-skipping tests: every window is fully covered and clean.

    Real Prometheus is used by the monitor tests; here time is skipped, and only
    `report_breach` signals breach."""
    names = [t.name for t in req.thresholds]
    return MonitorResult(kind="window_end", coverage=dict.fromkeys(names, 1.0), expected_evaluations=1)


STARTED: list[WorkflowHandle[Any, Any]] = []  # for recording replay histories


async def start(client: Client, plan: dict[str, Any], queue: str, **kw: Any) -> WorkflowHandle[Any, Any]:
    p = validate_plan_data(plan)
    kw.setdefault("started_by", p.owners.rollout)
    wid = f"rollout-{p.name}-{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow(
        StagedRollout.run,
        RolloutInput(plan=p, **kw),
        id=wid,
        task_queue=queue,
    )
    STARTED.append(handle)
    return handle


async def record_histories(name: str, directory: Path) -> None:
    """Write the histories of the workflows a test started (every run) as JSON for replay tests."""
    handles = list(STARTED)
    STARTED.clear()
    directory.mkdir(parents=True, exist_ok=True)
    for i, h in enumerate(handles):
        run_ids = [h.run_id]
        latest = h._client.get_workflow_handle(h.id)
        desc = await latest.describe()
        if desc.run_id not in run_ids:
            run_ids.append(desc.run_id)
        for j, run in enumerate(run_ids):
            hist = await h._client.get_workflow_handle(h.id, run_id=run).fetch_history()
            (directory / f"{name}-{i}-{j}.json").write_text(hist.to_json())


async def status(h: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await h.query("status")
    return result


async def wait_for(
    h: WorkflowHandle[Any, Any], pred: Callable[[dict[str, Any]], bool], within: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last: dict[str, Any] = {}
    unanswered: list[str] = []
    while time.monotonic() < deadline:
        try:
            last = await status(h)
        except RPCError as exc:  # a query can time out while the run continues as new on a loaded server
            unanswered.append(str(exc))
            continue
        if pred(last):
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached; last status={last.get('status')} stage={last.get('stage')}: {last}"
                         f" (unanswered queries: {unanswered})")


async def signal(h: WorkflowHandle[Any, Any], name: str, **payload: Any) -> None:
    await h.signal(name, payload)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


async def bounded_shutdown(worker: Worker | RolloutWorker, run: asyncio.Task[None], within: float = 30.0) -> None:
    """Stop a worker started with `worker.run()`; never let a stuck shutdown hang the suite.

    Seen rarely with the time-skipping test server: a poll that the server never answers
    keeps `Worker.shutdown` waiting. The worker's work is done by then, so after `within`
    seconds the run task is cancelled and the test goes on (reported on stderr)."""
    try:
        await asyncio.wait_for(worker.shutdown(), within)
    except TimeoutError:
        print(f"worker shutdown exceeded {within}s; cancelling it", file=sys.stderr)
    if not run.done():
        run.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(run), 5)
