"""A breach storm: N rollouts soaking, every one breached within one second.

N rollouts of the 3-stage test plan (webhook target and notifier served here) soak in
the pilot. Then, all at once: half get a `report_breach` signal (action `hold`), the
other half are named by firing alerts POSTed to the Alertmanager receiver
(`POST /alertmanager`, `--alerts-per-post` alerts per webhook, as Alertmanager groups
them). Measures until every rollout's target received its containment request and its
status is `held`; counts rollouts lost (not held, no containment at the target, or
contained twice), escalation pages received and the receiver's 5xx answers. Prints one
JSON object as its last line.

    .venv/bin/python -m bench.storm [--rollouts 1000] [--alerts-per-post 10]

With TEMPORAL_ADDRESS set: that server and its worker; the receiver at
ROLLOUT_RECEIVER_URL with ROLLOUT_RECEIVER_TOKEN (without a URL one is served here).
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
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio.client import WorkflowHandle

from bench.common import Deadline, emit, machine, stdout_to_stderr
from bench.floor import BenchFloor, floor_change, floor_worker
from bench.stack import (
    SECRET_ENV,
    Stack,
    StackSampler,
    activity_timings,
    bounded,
    breach_payload,
    progress,
    soak,
    stack,
)

GOAL_HELD_WITHIN_S = 30.0


def alert_body(wids: list[str], run: str, k: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "version": "4",
        "groupKey": f"{{}}:{{alertname=\"BenchBreach\",batch=\"{run}-{k}\"}}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "rollout",
        "groupLabels": {"alertname": "BenchBreach"},
        "commonLabels": {"alertname": "BenchBreach", "threshold": "error_rate"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {"status": "firing", "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
             "labels": {"alertname": "BenchBreach", "rollout": wid, "threshold": "error_rate"},
             "annotations": {"summary": "bench storm"}, "generatorURL": "", "fingerprint": f"{run}{k}{i:04d}"}
            for i, wid in enumerate(wids)
        ],
    }


async def floor_storm(s: Stack, n: int, senders: int, budget: Deadline) -> dict[str, Any]:
    """The same storm against the floor: n bare workflows (bench/floor.py) on the same server
    and in the same process, each signalled once, all at once; each runs `apply_exposure`
    (the same signed request to the same target). What a Temporal worker process on this
    machine needs for n signal-then-activity round trips, with no rule, audit or notification."""
    async with floor_worker(s.client) as queue:
        handles: list[WorkflowHandle[Any, Any]] = []

        async def start(i: int) -> None:
            handles.append(await s.client.start_workflow(BenchFloor.run, id=f"bench-floor-storm-{s.run}-{i}",
                                                         task_queue=queue))

        await asyncio.wait_for(bounded(50, [functools.partial(start, i) for i in range(n)]), budget.left())

        async def ready(h: WorkflowHandle[Any, Any]) -> None:
            await h.query(BenchFloor.pending)  # answered once the first workflow task ran

        await asyncio.wait_for(bounded(50, [functools.partial(ready, h) for h in handles]), budget.left())
        progress(f"{n} floor workflows waiting; the same storm against the floor")
        ids = [f"floor-storm-{s.run}-{i}" for i in range(n)]
        t0 = time.perf_counter()

        async def breach(h: WorkflowHandle[Any, Any], rid: str) -> None:
            await h.signal(BenchFloor.breach, floor_change(rid, 1, s.target_url, SECRET_ENV))

        await asyncio.wait_for(bounded(senders, [functools.partial(breach, h, r) for h, r in zip(handles, ids,
                                                                                                   strict=True)]),
                               budget.left())
        while not budget.expired():
            if all(s.target.contained(r) for r in ids):
                break
            await asyncio.sleep(0.05)
        reached = [min(a.at for a in s.target.contained(r)) for r in ids if s.target.contained(r)]

        async def stop(h: WorkflowHandle[Any, Any]) -> None:
            await h.signal(BenchFloor.stop)

        await bounded(50, [functools.partial(stop, h) for h in handles])
    return {
        "workflows": n,
        "contained": len(reached),
        "all_contained_within_s": round(max(reached) - t0, 2) if len(reached) == n else None,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    errors: list[str] = []
    async with stack(receiver=True) as s:
        handles, soak_times = await soak(s, args.rollouts, budget_s=budget.left())
        by_signal = handles[0::2]
        by_alert = handles[1::2]
        codes: Counter[int] = Counter()
        sampler = StackSampler().__enter__() if args.profile else None
        t0 = time.perf_counter()
        sent_at: dict[str, float] = {}

        async def signal(h: WorkflowHandle[Any, Any]) -> None:
            await h.signal("report_breach", breach_payload(source="bench-storm"))
            sent_at[h.id] = time.perf_counter()

        async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=100)) as http:
            async def post(k: int, group: list[WorkflowHandle[Any, Any]]) -> None:
                try:
                    r = await http.post(f"{s.receiver_url}/alertmanager", json=alert_body([h.id for h in group],
                                                                                           s.run, k),
                                        headers={"Authorization": f"Bearer {s.receiver_token}"})
                    codes[r.status_code] += 1
                    if r.status_code >= 300:
                        errors.append(f"receiver answered {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    codes[0] += 1
                    errors.append(f"receiver: {type(exc).__name__}: {exc}")
                now = time.perf_counter()
                for h in group:
                    sent_at[h.id] = now

            n = args.alerts_per_post
            groups = [by_alert[i:i + n] for i in range(0, len(by_alert), n)]
            jobs: list[Callable[[], Awaitable[None]]] = []
            for i in range(max(len(by_signal), len(groups))):  # interleaved: both paths at once
                if i < len(by_signal):
                    jobs.append(functools.partial(signal, by_signal[i]))
                if i < len(groups):
                    jobs.append(functools.partial(post, i, groups[i]))
            await asyncio.wait_for(bounded(args.senders, jobs), budget.left())
        sent_s = time.perf_counter() - t0
        progress(f"{len(handles)} breaches sent in {sent_s:.2f} s; waiting for the target")
        # wait until every target saw a containment, then confirm the statuses
        ids = [h.id for h in handles]
        while not budget.expired():
            if all(s.target.contained(w) for w in ids):
                break
            await asyncio.sleep(0.05)
        if sampler is not None:
            sampler.__exit__()
        contained_at = [min(a.at for a in s.target.contained(w)) for w in ids if s.target.contained(w)]
        last_contained_s = (max(contained_at) - t0) if contained_at else None
        statuses: dict[str, str] = {}

        def check(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                st: dict[str, Any] = await h.query("status", result_type=dict)
                statuses[h.id] = str(st.get("status"))

            return job

        await bounded(50, [check(h) for h in handles])
        status_confirmed_s = time.perf_counter() - t0
        # pages follow the containment; give them until the budget or 30 s more
        page_deadline = time.monotonic() + min(30.0, budget.left())
        while time.monotonic() < page_deadline:
            if len(s.target.pages()) >= len(handles):
                break
            await asyncio.sleep(0.1)
        paged = Counter(str(p.doc.get("rollout_id")) for p in s.target.pages())
        lost = [w for w in ids if statuses.get(w) != "held" or len(s.target.contained(w)) != 1]
        for w in lost[:10]:
            errors.append(f"{w}: status {statuses.get(w)}, {len(s.target.contained(w))} containment request(s)")
        lat = sorted(min(a.at for a in s.target.contained(w)) - sent_at[w]
                     for w in ids if s.target.contained(w) and w in sent_at)
        held_within = status_confirmed_s if last_contained_s is not None and not lost else None
        timings = await activity_timings(handles[0::max(1, len(handles) // 30)])
        floor = await floor_storm(s, len(handles), args.senders, budget) if args.floor else None
        server = "TEMPORAL_ADDRESS " + s.address if s.external else "temporal dev server (start_local, in memory)"
    receiver_5xx = sum(c for code, c in codes.items() if code >= 500)
    return {
        "benchmark": "storm",
        "server": server,
        "rollouts": len(handles),
        "by_signal": len(by_signal),
        "by_alertmanager": len(by_alert),
        "alert_posts": sum(codes.values()),
        "breaches_sent_s": round(sent_s, 2),
        "held_within_s": round(held_within, 2) if held_within is not None else None,
        "last_containment_at_target_s": round(last_contained_s, 2) if last_contained_s is not None else None,
        "send_to_containment_ms": {
            "p50": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
            "max": round(lat[-1] * 1000, 1) if lat else None,
        },
        "lost": len(lost),
        "pages": sum(paged.values()),
        "rollouts_paged": len(paged),
        "receiver_5xx": receiver_5xx,
        "receiver_answers": {str(k): v for k, v in sorted(codes.items())},
        "goals": {"held_within_s": f"<= {GOAL_HELD_WITHIN_S}", "lost": 0, "receiver_5xx": 0},
        "goals_met": {
            "held_within_s": held_within is not None and held_within <= GOAL_HELD_WITHIN_S,
            "lost": not lost,
            "receiver_5xx": receiver_5xx == 0,
        },
        "floor": floor,
        "ratio_to_floor": (round(held_within / floor["all_contained_within_s"], 2)
                           if floor and floor["all_contained_within_s"] and held_within is not None else None),
        "where_the_time_goes": timings,
        "profile": sampler.top() if sampler is not None else None,
        "soak_phases": soak_times,
        "errors": errors[:20],
        "error_count": len(errors),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=1000, help="rollouts soaking, all breached (default 1000)")
    ap.add_argument("--alerts-per-post", type=int, default=10, help="alerts in one Alertmanager webhook (default 10)")
    ap.add_argument("--senders", type=int, default=200, help="signals and posts in flight while sending (default 200)")
    ap.add_argument("--profile", action="store_true", help="sample this process's stacks during the storm")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the same storm against the floor workflow (bench/floor.py)")
    ap.add_argument("--timeout", type=float, default=460.0, help="overall budget in seconds (default 460)")
    args = ap.parse_args(argv)
    if not 2 <= args.rollouts <= 5000 or not 1 <= args.alerts_per_post <= 100:
        ap.error("--rollouts must be 2..5000 and --alerts-per-post 1..100")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 1 if result["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
