"""`rollout simulate` speed: 30 days of a three-stage plan at a 30 s interval.

Generates 31 days of two series (an error rate and a p95 latency, one sample every
30 s, with noise and short bad spells that fail evaluations without breaching),
backfills them into a real Prometheus on 127.0.0.1 (`promtool tsdb
create-blocks-from openmetrics`), then times `run_simulation` (what `rollout
simulate` runs: range fetches in chunks plus the state machine) over the last 30
days, `--repeat` times. Goal: under 5 s, fetching included. Prints one JSON object;
stops the Prometheus it started.

    .venv/bin/python -m bench.simulate [--days 30] [--repeat 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.prometheus_range import RangeFetcher
from bench.common import emit, machine, max_rss_kb, stdout_to_stderr
from cli.commands.simulate import run_simulation
from rollout.plan import parse_plan
from tests.promhistory import HistoryPrometheus, Sample, write_openmetrics

STEP_MS = 30_000
GOAL_S = 5.0


def history(start_ms: int, end_ms: int, seed: int = 7) -> Iterator[Sample]:
    rng = random.Random(seed)
    bad = 0
    for at in range(start_ms, end_ms + 1, STEP_MS):
        if bad == 0 and rng.random() < 0.0005:
            bad = rng.randint(1, 2)  # one or two failing evaluations: below `for: 3`
        err = 0.05 if bad else abs(rng.gauss(0.004, 0.002))
        lat = 0.4 if bad else abs(rng.gauss(0.12, 0.02))
        bad = max(0, bad - 1)
        yield {"case": "error"}, at, err
        yield {"case": "latency"}, at, lat


def plan_text(url: str) -> str:
    thresholds = (
        "      - {name: error_rate, query: 'rollout_sim_error_rate{case=\"error\"}', max: 0.02, for: 3,"
        " on_no_data: breach, action: rollback}\n"
        "      - {name: latency_p95, query: 'rollout_sim_error_rate{case=\"latency\"}', max: 0.25, for: 3,"
        " on_no_data: hold, action: hold}\n"
    )
    stages = ""
    for name, tier, pct, roles, window, handoff in (
        ("pilot", "pilot", 5, "[engineering]", "5d", "[]"),
        ("limited-25", "limited", 25, "[engineering, operations]", "10d", "[]"),
        ("system-of-record", "system_of_record", 100, "[risk, engineering, operations]", "14d",
         "[{item: Runbook reviewed, to: operations}]"),
    ):
        stages += (
            f"  - name: {name}\n    tier: {tier}\n    scope: {{percent: {pct}}}\n"
            f"    approvals: {{roles: {roles}}}\n    window: {window}\n    thresholds:\n{thresholds}"
            f"    handoff: {handoff}\n"
        )
    return (
        "apiVersion: rollout/v1\nname: bench-simulate\n"
        "owners: {rollout: alice@example.com, workflow: bob@example.com, incident_response: carol@example.com}\n"
        "approvers: {risk: [erin@example.com], engineering: [frank@example.com], operations: [hank@example.com]}\n"
        "target: {kind: log}\n"
        f"metrics: {{prometheus_url: '{url}', interval: 30s}}\n"
        "fallback: humans answer every ticket\n"
        "escalation: {ack_within: 5m, chain: [incident_response, rollout], max_hold: 7d}\n"
        "stages:\n" + stages
    )


async def measure(url: str, days: int, repeat: int, approve_after: timedelta) -> dict[str, Any]:
    plan = parse_plan(plan_text(url))
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(days=days)
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for _ in range(repeat):
        fetch_s = 0.0
        async with RangeFetcher(url) as fetcher:
            original = fetcher.fetch

            async def timed(*a: Any, _fetch: Any = original, **kw: Any) -> dict[int, float | None]:
                nonlocal fetch_s
                t = time.perf_counter()
                try:
                    result: dict[int, float | None] = await _fetch(*a, **kw)
                    return result
                finally:
                    fetch_s += time.perf_counter() - t

            fetcher.fetch = timed  # type: ignore[method-assign]
            t0 = time.perf_counter()
            c0 = time.process_time()
            sim = await run_simulation(plan, start=start, end=end, approve_after=approve_after, fetcher=fetcher)
            result = sim.result()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            requests = fetcher.requests
        runs.append({
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "fetch_wall_s": round(fetch_s, 3),  # summed over concurrent fetches of one need
            "query_range_requests": requests,
            "decisions": sim.decisions,
        })
    evaluations = sum(t["evaluations"] for t in result["thresholds"].values())
    walls = [r["wall_s"] for r in runs]
    return {
        "days": days,
        "interval_s": STEP_MS / 1000,
        "stages": len(plan.stages),
        "thresholds_per_stage": 2,
        "approve_after_s": approve_after.total_seconds(),
        "evaluations": evaluations,
        "events": len(result["events"]),
        "final": result["final"],
        "runs": runs,
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_min": round(min(walls), 3),
        "goal_s": GOAL_S,
        "goal_met": statistics.median(walls) < GOAL_S,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--approve-after", type=float, default=3600.0, help="seconds (default 1h)")
    args = ap.parse_args()
    now_ms = int(time.time() * 1000) // STEP_MS * STEP_MS
    with stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        path = Path(tmp) / "history.om"
        t = time.perf_counter()
        samples = write_openmetrics(path, history(now_ms - (args.days + 1) * 86_400_000, now_ms))
        prom = HistoryPrometheus(path)
        setup_s = time.perf_counter() - t
        try:
            out = asyncio.run(measure(prom.url, args.days, args.repeat, timedelta(seconds=args.approve_after)))
        finally:
            prom.close()
    out["backfill"] = {"samples": samples, "setup_s": round(setup_s, 2)}
    out["max_rss_kb"] = max_rss_kb()
    out["machine"] = machine()
    emit(out)


if __name__ == "__main__":
    main()
