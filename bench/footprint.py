"""What a rollout costs: worker memory, history per day, and a flood of signals.

Part 1, `memory`: Temporal's dev server, a real Prometheus (the Debian `prometheus`
binary, scraping itself every second) and one `rollout worker` process (its own Python
process, temporary SQLite audit store). VmRSS of that process with 0 rollouts, then with
`--rollouts`/2 and `--rollouts` (1,000) soaking in the pilot of the 3-stage test plan,
each with a threshold its monitor (`watch_thresholds`) evaluates against that Prometheus
every `--interval` (10s), measured after two intervals of polling. With TEMPORAL_ADDRESS
set the worker process is still started here, on that server, on a task queue of its own.

Part 2, `ninety_day`: the time-skipping test server and a worker in this process; one
rollout with every window 30d, approved and handed off by signals through all three
stages, `env.sleep` skipping a day at a time: history events per rollout-day and the wall
time of the 90 days. Without a monitor: the time-skipping server does not skip time while
an activity runs, and the monitor is one long activity (`--days-interval 1d` tries it:
`env.sleep` then times out). The monitor's own cost is measured on the dev server in
part 1 (`monitor_cost`: one rollout whose monitor reports every 10 s, watched for
`--observe` seconds: events per report) and added for a 30d window (a report every 6 h, `rollout.machine.MAX_FLUSH`).

Part 3, `flood`: on the same server, `--signals` (10,000) signals to one soaking rollout
with the default `continue_as_new_after`: half `report_breach` for one threshold (one
applies, the rest are repeats), half `approve` from identities not in the plan (refused),
50 in flight, with `status` queried throughout. History events of the longest run,
whether status stayed queryable, and every signal accounted for (breaches applied,
refusals in the audit store, repeats on the open breach).

    .venv/bin/python -m bench.footprint [--rollouts 1000] [--signals 10000]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import IO, Any

import httpx
import yaml
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from bench.bench_history import runs_of, total_events, wait_for
from bench.bench_history import signal as send
from bench.common import (
    Deadline,
    emit,
    machine,
    register_search_attributes,
    rss_kb,
    stdout_to_stderr,
    tool_path,
)
from bench.stack import bounded, breach_payload, progress, soak, stack
from rollout.machine import MAX_FLUSH
from tests import plans
from tests.plans import ENG1, ENG2, IR, OPS, RISK
from tests.wfkit import start as start_wf
from worker.main import build_worker

DAY = timedelta(days=1)
GOALS = {"worker_kb_per_rollout": 200, "events_per_rollout_day": 50, "wall_s_90d": 10,
         "flood_max_run_events": 5000}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def prometheus(directory: Path) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1 scraping itself every second; stopped by its pid."""
    binary = tool_path("prometheus")
    port = free_port()
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
           "scrape_configs": [{"job_name": "self", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}
    (directory / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    with open(directory / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={directory / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={directory / 'prom-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
                                 "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            end = time.monotonic() + 30
            while True:
                try:
                    q = httpx.get(f"{url}/api/v1/query", params={"query": "up"}, timeout=1).json()
                    if q["data"]["result"]:
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"prometheus did not come up; see {directory / 'prometheus.log'}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def threshold(name: str = "targets_up") -> dict[str, Any]:
    """Passes while Prometheus scrapes itself (up == 1)."""
    return {"name": name, "query": "sum(up)", "min": 0.5, "for": 3, "on_no_data": "hold", "action": "hold"}


def spawn_worker(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`rollout worker` in a process of its own (its RSS is the figure)."""
    code = "import sys; from cli.main import run; sys.argv = ['rollout', 'worker']; run()"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


async def memory(args: argparse.Namespace, prom: str, directory: Path, budget: Deadline) -> dict[str, Any]:
    async with stack(own_worker=False) as s:
        queue = f"bench-footprint-{uuid.uuid4().hex[:8]}"
        os.environ["ROLLOUT_TASK_QUEUE"] = queue
        db_url = f"sqlite+aiosqlite:///{directory / 'audit.db'}"
        env = {**os.environ, "TEMPORAL_ADDRESS": s.address, "ROLLOUT_TASK_QUEUE": queue, "ROLLOUT_DB_URL": db_url,
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        with open(directory / "worker.log", "wb") as log:
            proc = spawn_worker(env, log)
            try:
                await asyncio.sleep(5)  # connected, polling, imports done
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited; see {directory / 'worker.log'}")
                interval = args.interval
                kw = {"stage_thresholds": [threshold()],
                      "metrics": {"prometheus_url": prom, "interval": f"{interval}s"}}
                points = [{"rollouts": 0, "rss_kb": rss_kb(proc.pid)}]
                half = args.rollouts // 2
                done = 0
                for upto in (half, args.rollouts):
                    await soak(s, upto - done, budget_s=budget.left(), plan_kwargs=kw, prefix=f"m{upto}-")
                    done = upto
                    await asyncio.sleep(2 * interval)  # every monitor has polled
                    points.append({"rollouts": done, "rss_kb": rss_kb(proc.pid)})
                monitor = await monitor_cost(s, prom, args.observe)
                # every monitor still running (no breach, no hold): query a sample
                held = 0
                async for wf in s.client.list_workflows(f"TaskQueue = '{queue}' AND RolloutStatus != 'soaking'"):
                    held += 1
                    _ = wf
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
    base, top = points[0]["rss_kb"], points[-1]["rss_kb"]
    mid = points[1]["rss_kb"]
    per = round((top - base) / args.rollouts, 1) if top and base else None
    per_second_half = round((top - mid) / (args.rollouts - half), 1) if top and mid else None
    return {"interval_s": args.interval, "points": points, "kb_per_rollout": per,
            "kb_per_rollout_second_half": per_second_half, "not_soaking_at_end": held, "monitor_cost": monitor}


async def monitor_cost(s: Any, prom: str, observe: float) -> dict[str, Any]:
    """History written by a running monitor: one rollout with a 200s pilot window and a 1s
    interval (the monitor reports every max(interval, min(4h, window/20)) = 10 s), observed
    for `observe` seconds; events per report, then per day for the plans' own windows."""
    from temporalio.api.enums.v1 import EventType as ET

    kw = {"stage_thresholds": [threshold()], "metrics": {"prometheus_url": prom, "interval": "1s"},
          "pilot_window": "200s"}
    (h,), _ = await soak(s, 1, plan_kwargs=kw, prefix="monitor-")

    async def count() -> tuple[int, int]:
        events = (await h.fetch_history()).events
        reports = sum(1 for e in events if e.event_type == ET.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                      and e.activity_task_completed_event_attributes.scheduled_event_id in {
                          x.event_id for x in events if x.event_type == ET.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                          and x.activity_task_scheduled_event_attributes.activity_type.name == "watch_thresholds"})
        return len(events), reports

    e0, r0 = await count()
    await asyncio.sleep(observe)
    e1, r1 = await count()
    per_report = round((e1 - e0) / (r1 - r0), 1) if r1 > r0 else None
    out: dict[str, Any] = {"observed_s": observe, "events_added": e1 - e0, "reports": r1 - r0,
                           "events_per_report": per_report}
    if per_report is not None:
        # a 72h window reports every 3.6 h, any window of 120 h or more every 6 h (MAX_FLUSH)
        out["events_per_day_72h_window"] = round(per_report * 24 / 3.6, 1)
        out["events_per_day_30d_window"] = round(per_report * 24 / (MAX_FLUSH / 3600), 1)
    return out


async def ninety_day(env: WorkflowEnvironment, queue: str, prom: str, args: argparse.Namespace,
                     budget: Deadline) -> dict[str, Any]:
    client = env.client
    d = plans.plan_dict(name="bench-ninety-day")
    if args.days_interval:  # the monitor on: the time-skipping server then cannot skip (see the docstring)
        d["metrics"] = {"prometheus_url": prom, "interval": args.days_interval}
    for st in d["stages"]:
        st["window"] = "30d"
        if args.days_interval:
            st["thresholds"] = [threshold()]
    t_wall = time.perf_counter()
    first = await start_wf(client, d, queue)
    h = client.get_workflow_handle(first.id, first_execution_run_id=first.first_execution_run_id)
    await wait_for(h, lambda s: s["status"] == "awaiting_approval", budget, "started")
    days = 0
    per_day: list[int] = []
    soaking_days = 0

    async def soak_stage(stage: str) -> None:
        nonlocal days, soaking_days
        await wait_for(h, lambda s: s["stage"] == stage and s["status"] == "soaking"
                       and s["window_ends_at"] is not None, budget, f"{stage} soaking")
        before = await total_events(client, h)
        for _ in range(29):
            await env.sleep(DAY)
            progress(f"{stage}: day {days + 1}")
            days += 1
            soaking_days += 1
            now = await total_events(client, h)
            per_day.append(now - before)
            before = now
        await env.sleep(DAY + timedelta(hours=1))
        days += 1
        soaking_days += 1
        await wait_for(h, lambda s: s["stage"] != stage or s["status"] != "soaking", budget, f"{stage} window end")

    await send(h, "approve", actor=ENG1, stage="pilot", role="engineering")
    await soak_stage("pilot")
    await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval",
                   budget, "limited-25 awaiting approval")
    await send(h, "approve", actor=ENG2, stage="limited-25", role="engineering")
    await send(h, "approve", actor=OPS, stage="limited-25", role="operations")
    await send(h, "acknowledge", actor=OPS, item="Support leads briefed")
    await soak_stage("limited-25")
    await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval",
                   budget, "system-of-record awaiting approval")
    for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
        await send(h, "approve", actor=who, stage="system-of-record", role=role)
    await send(h, "acknowledge", actor=OPS, item="On-call rota includes the agent")
    await send(h, "acknowledge", actor=IR, item="Runbook reviewed")
    await soak_stage("system-of-record")
    result: dict[str, Any] = await asyncio.wait_for(h.result(), budget.left())
    wall = time.perf_counter() - t_wall
    assert h.first_execution_run_id is not None
    runs = await runs_of(client, h.id, h.first_execution_run_id)
    total = sum(r["events"] for r in runs)
    return {
        "final_status": result.get("status"),
        "monitor": bool(args.days_interval),
        "simulated_days": days,
        "runs": len(runs),
        "events_per_run": [r["events"] for r in runs],
        "events_total": total,
        "events_per_rollout_day": round(total / days, 2) if days else None,
        "soaking_events_per_day": {"days": len(per_day), "max": max(per_day, default=0),
                                   "mean": round(sum(per_day) / len(per_day), 2) if per_day else None},
        "wall_s": round(wall, 2),
    }


async def flood(env: WorkflowEnvironment, store: AuditStore, queue: str, args: argparse.Namespace,
                budget: Deadline) -> dict[str, Any]:
    client = env.client
    first = await start_wf(client, plans.plan_dict(name="bench-flood"), queue)
    h = client.get_workflow_handle(first.id, first_execution_run_id=first.first_execution_run_id)
    await send(h, "approve", actor=ENG1, stage="pilot", role="engineering")
    await wait_for(h, lambda s: s["status"] == "soaking" and s["target_pending"] is None, budget, "flood soaking")
    n = args.signals
    breaches = n // 2
    query_ok = 0
    query_failed: list[str] = []
    stop = asyncio.Event()

    async def watcher() -> None:
        nonlocal query_ok
        while not stop.is_set():
            try:
                await h.query("status", result_type=dict, rpc_timeout=timedelta(seconds=5))
                query_ok += 1
            except (RPCError, Exception) as exc:
                query_failed.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            await asyncio.sleep(0.2)

    def job(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            if i % 2 == 0 and i // 2 < breaches:
                await h.signal("report_breach", breach_payload(source=f"flood-{i}"))
            else:
                await h.signal("approve", {"actor": f"stranger{i}@example.com", "stage": "pilot",
                                           "role": "engineering"})

        return run

    watch = asyncio.create_task(watcher())
    t0 = time.perf_counter()
    await asyncio.wait_for(bounded(50, [job(i) for i in range(n)]), budget.left())
    sent_s = time.perf_counter() - t0
    refused_expected = n - breaches
    rows: list[Any] = []
    while not budget.expired():
        rows = await store.events(h.id)
        if sum(1 for r in rows if r.action == "refused") >= refused_expected:
            break
        await asyncio.sleep(0.5)
    processed_s = time.perf_counter() - t0
    st: dict[str, Any] = await h.query("status", result_type=dict)
    stop.set()
    await watch
    refused_rows = sum(1 for r in rows if r.action == "refused")
    breach_rows = [r for r in rows if r.action == "breach"]
    repeats = sum(int(b.get("repeats", 0)) for b in st.get("open_breaches", []))
    assert h.first_execution_run_id is not None
    runs = await runs_of(client, h.id, h.first_execution_run_id)
    accounted = len(breach_rows) + repeats + refused_rows
    return {
        "signals": n,
        "report_breach": breaches,
        "refused_approvals": refused_expected,
        "continue_as_new_after": "default (RolloutInput)",
        "sent_s": round(sent_s, 2),
        "processed_s": round(processed_s, 2),
        "runs": len(runs),
        "events_per_run": [r["events"] for r in runs],
        "max_run_events": max((r["events"] for r in runs), default=0),
        "status_queries_ok": query_ok,
        "status_queries_failed": len(query_failed),
        "status_query_failures": query_failed[:5],
        "status_after": st.get("status"),
        "breaches_recorded": len(breach_rows),
        "breach_repeats": repeats,
        "refused_in_audit": refused_rows,
        "refused_kept_in_status": len(st.get("refused", [])),
        "accounted": accounted,
        "all_accounted": accounted == n,
    }


async def skipping(args: argparse.Namespace, prom: str, directory: Path, budget: Deadline) -> dict[str, Any]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=tool_path("temporal-test-server"))
    store = AuditStore.from_url(f"sqlite+aiosqlite:///{directory / 'skip-audit.db'}")
    try:
        await register_search_attributes(env.client)
        await store.migrate()
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with build_worker(env.client, store, queue=queue):
            out: dict[str, Any] = {}
            try:
                out["ninety_day"] = await ninety_day(env, queue, prom, args, budget)
            except Exception as exc:
                import traceback

                traceback.print_exc()
                out["ninety_day"] = {"error": f"{type(exc).__name__}: {exc}"}
            out["flood"] = await flood(env, store, queue, args, budget)
            return out
    finally:
        await store.close()
        await env.shutdown()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp, prometheus(Path(tmp)) as prom:
        mem = await memory(args, prom, Path(tmp), budget) if args.rollouts else None
        skip = await skipping(args, prom, Path(tmp), budget)
    nd, fl = skip["ninety_day"], skip["flood"]
    mc = mem["monitor_cost"] if mem else {}
    per_day = nd.get("events_per_rollout_day")
    with_monitor = (round(per_day + mc["events_per_day_30d_window"], 1)
                    if per_day is not None and mc.get("events_per_day_30d_window") is not None else None)
    figures = {
        "worker_kb_per_rollout": mem["kb_per_rollout"] if mem else None,
        "events_per_rollout_day": with_monitor if with_monitor is not None else per_day,
        "events_per_rollout_day_parts": {"ninety_days_without_monitor": per_day,
                                         "monitor_30d_window": mc.get("events_per_day_30d_window")},
        "wall_s_90d": nd.get("wall_s"),
        "flood_max_run_events": fl["max_run_events"],
        "flood_accounted": f"{fl['accounted']}/{fl['signals']}",
    }
    met = {k: figures[k] is not None and float(figures[k]) <= v for k, v in GOALS.items()}
    met["wall_s_90d"] = figures["wall_s_90d"] is not None and float(figures["wall_s_90d"]) < GOALS["wall_s_90d"]
    met["flood_accounted"] = bool(fl["all_accounted"])
    met["flood_status_queryable"] = fl["status_queries_failed"] == 0
    return {
        "benchmark": "footprint",
        **figures,
        "goals": {"worker_kb_per_rollout": "<= 200", "events_per_rollout_day": "<= 50", "wall_s_90d": "< 10",
                  "flood_max_run_events": "<= 5000", "flood_accounted": "all"},
        "goals_met": met,
        "memory": mem,
        "ninety_day": nd,
        "flood": fl,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=1000, help="rollouts soaking for the memory figure (default 1000)")
    ap.add_argument("--interval", type=int, default=10, help="monitor interval in seconds, memory part (default 10)")
    ap.add_argument("--days-interval", default="",
                    help="run the 90 days with a monitor at this interval (default: none; the server cannot skip)")
    ap.add_argument("--observe", type=float, default=60.0, help="seconds a 10s-report monitor is watched (default 60)")
    ap.add_argument("--signals", type=int, default=10000, help="signals in the flood (default 10000)")
    ap.add_argument("--timeout", type=float, default=460.0, help="overall budget in seconds (default 460)")
    args = ap.parse_args(argv)
    if not 0 <= args.rollouts <= 5000 or not 2 <= args.signals <= 50000 or args.interval < 1:
        ap.error("--rollouts must be 0..5000, --signals 2..50000, --interval >= 1")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
