"""Breach signal to containment request at the target, against the Temporal floor.

N rollouts of the 3-stage test plan (webhook target served here, signed) soak in the
pilot. Then `report_breach` signals with action `hold`, each to a rollout not yet
breached: first `--sequential` of them one at a time, then the rest `--in-flight` (50)
at a time. Each sample runs from just before the signal is sent until the target
receives that rollout's containment request. The floor runs interleaved, on the same
server and in the same worker process: a bare workflow (bench/floor.py) that on a signal
runs the `apply_exposure` activity making the same signed HTTP call, as many samples
and with the same concurrency. Prints one JSON object as its last line.

    .venv/bin/python -m bench.breach_latency [--rollouts 1000] [--sequential 200] [--in-flight 50]

With TEMPORAL_ADDRESS set the rollouts run on that server and the worker polling its
`ROLLOUT_TASK_QUEUE`; the floor then runs in this process (its own worker).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import WorkflowHandle

from bench.common import Deadline, emit, machine, percentile, rss_kb, stdout_to_stderr
from bench.floor import BenchFloor, floor_change, floor_worker
from bench.stack import (
    SECRET_ENV,
    activity_timings,
    bounded,
    breach_payload,
    is_containment,
    progress,
    soak,
    stack,
)

GOALS = {"ratio_p50": 1.5, "ratio_p99": 2.0}


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def figures(lat: list[float], floor: list[float]) -> dict[str, Any]:
    p50, p95, p99 = (percentile(lat, p) for p in (50, 95, 99))
    f50, f95, f99 = (percentile(floor, p) for p in (50, 95, 99))
    return {
        "samples": len(lat),
        "p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "max_ms": ms(max(lat, default=None)),
        "floor_samples": len(floor),
        "floor_p50_ms": ms(f50), "floor_p95_ms": ms(f95), "floor_p99_ms": ms(f99),
        "ratio_p50": round(p50 / f50, 2) if p50 and f50 else None,
        "ratio_p99": round(p99 / f99, 2) if p99 and f99 else None,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    errors: list[str] = []
    async with stack() as s, floor_worker(s.client) as floor_queue:
        t0 = time.perf_counter()
        handles, soak_times = await soak(s, args.rollouts, budget_s=budget.left())
        soak_s = time.perf_counter() - t0
        rss_soaking = rss_kb() if not s.external else None
        floors: list[WorkflowHandle[Any, Any]] = [
            await s.client.start_workflow(BenchFloor.run, id=f"bench-floor-{s.run}-{i}", task_queue=floor_queue)
            for i in range(args.in_flight)
        ]
        seq = iter(range(1, 10**9))

        async def one_breach(h: WorkflowHandle[Any, Any], out: list[float]) -> None:
            got = s.target.expect(h.id, is_containment)
            t = time.perf_counter()
            await h.signal("report_breach", breach_payload())
            try:
                out.append(await asyncio.wait_for(got, 60) - t)
            except TimeoutError:
                errors.append(f"{h.id}: no containment request within 60 s")

        async def one_floor(i: int, out: list[float]) -> None:
            n = next(seq)
            rid = f"floor-{s.run}-{n}"
            got = s.target.expect(rid, is_containment)
            t = time.perf_counter()
            await floors[i % len(floors)].signal(BenchFloor.breach, floor_change(rid, n, s.target_url, SECRET_ENV))
            try:
                out.append(await asyncio.wait_for(got, 60) - t)
            except TimeoutError:
                errors.append(f"{rid}: floor request not received within 60 s")

        progress(f"floor workflows started; {min(args.sequential, len(handles))} breaches one at a time")
        sequential = min(args.sequential, len(handles))
        seq_lat: list[float] = []
        seq_floor: list[float] = []
        for i, h in enumerate(handles[:sequential]):  # one at a time, floor and rollout alternating
            await one_floor(i, seq_floor)
            await one_breach(h, seq_lat)
        rest = handles[sequential:]
        conc_lat: list[float] = []
        conc_floor: list[float] = []
        jobs: list[Callable[[], Awaitable[None]]] = []
        for i, h in enumerate(rest):  # interleaved in one pool, args.in_flight at a time
            jobs.append(functools.partial(one_floor, i, conc_floor))
            jobs.append(functools.partial(one_breach, h, conc_lat))
        progress(f"{len(rest)} breaches and as many floor signals, {args.in_flight} in flight")
        t1 = time.perf_counter()
        try:
            await asyncio.wait_for(bounded(args.in_flight, jobs), budget.left(30))
        except TimeoutError:
            errors.append(f"budget spent in the in-flight phase: {len(conc_lat)} of {len(rest)} breach samples")
        conc_wall = time.perf_counter() - t1
        progress("in-flight phase done; checking statuses")
        for f in floors:
            await f.signal(BenchFloor.stop)
        # held means held: the status of every breached rollout
        not_held = 0

        def check(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                nonlocal not_held
                st: dict[str, Any] = await h.query("status", result_type=dict)
                if st.get("status") != "held":
                    not_held += 1

            return job

        await asyncio.wait_for(bounded(50, [check(h) for h in handles]), budget.left(60))
        rss_after = rss_kb() if not s.external else None
        timings = {"one_at_a_time": await activity_timings(handles[:sequential]),
                   "in_flight": await activity_timings(rest)}
        server = "TEMPORAL_ADDRESS " + s.address if s.external else "temporal dev server (start_local, in memory)"
    one = figures(seq_lat, seq_floor)
    many = figures(conc_lat, conc_floor)
    return {
        "benchmark": "breach_latency",
        "server": server,
        "rollouts": len(handles),
        **one,
        "mode": "one at a time",
        "in_flight": {"in_flight": args.in_flight, **many, "wall_s": round(conc_wall, 2),
                      "breaches_per_s": round(len(conc_lat) / conc_wall, 1) if conc_wall else None},
        "goals": {k: f"<= {v}" for k, v in GOALS.items()},
        "goals_met": {
            "one_at_a_time": all((one[k] or 1e9) <= v for k, v in GOALS.items()),
            "in_flight": all((many[k] or 1e9) <= v for k, v in GOALS.items()),
        },
        "where_the_time_goes": timings,
        "soak_s": round(soak_s, 1),
        "soak_phases": soak_times,
        "not_held_after": not_held,
        "bench_process_rss_kb": {"soaking": rss_soaking, "after": rss_after},
        "errors": errors[:20],
        "error_count": len(errors),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=1000, help="rollouts soaking (default 1000)")
    ap.add_argument("--sequential", type=int, default=200, help="breaches sent one at a time (default 200)")
    ap.add_argument("--in-flight", type=int, default=50, help="breaches in flight in the second phase (default 50)")
    ap.add_argument("--timeout", type=float, default=460.0, help="overall budget in seconds (default 460)")
    args = ap.parse_args(argv)
    if not 1 <= args.rollouts <= 5000 or not 1 <= args.in_flight <= 500 or args.sequential < 0:
        ap.error("--rollouts must be 1..5000, --in-flight 1..500, --sequential >= 0")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 1 if result["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
