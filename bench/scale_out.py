"""Several worker processes on one task queue: breach latency with 2 and then 4 workers, and
one worker SIGKILLed under load.

Starts Temporal's dev server (or uses TEMPORAL_ADDRESS), then `rollout worker` processes
(each its own Python process; one shared SQLite audit store in a temporary directory, or
ROLLOUT_DB_URL) on a task queue of its own. N rollouts of the 3-stage test plan (webhook
target served here) soak in the pilot with 2 workers. Phase `2`: `--samples` rollouts
breached (`report_breach`, action `hold`), `--in-flight` at a time; phase `4`: two more
workers join, `--samples` more rollouts breached; phase `kill`: the remaining rollouts
breached the same way and, once a quarter of them were sent, one worker is SIGKILLed.
Latency runs from just before the signal until the target receives the containment
request. `lost` counts rollouts of the kill phase that never reached the target as
contained or whose status is not `held` afterwards. Prints one JSON object as its last line.

    .venv/bin/python -m bench.scale_out [--rollouts 1000] [--samples 300] [--in-flight 50]
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
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import IO, Any

from temporalio.client import WorkflowHandle

from activities.audit_store import AuditStore
from bench.common import Deadline, emit, machine, percentile, rss_kb, stdout_to_stderr
from bench.stack import bounded, breach_payload, is_containment, soak, stack

KILL_WAIT_S = 90.0  # how long a breach may take across a worker's death before it counts as lost


class WorkerProcs:
    """`rollout worker` processes, each stopped by its pid."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"worker-{len(self.procs)}.log", "wb")
        code = "import sys; from cli.main import run; sys.argv = ['rollout', 'worker']; run()"
        p = subprocess.Popen([sys.executable, "-c", code], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        self.logs.append(log)
        return p

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.alive():
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for log in self.logs:
            log.close()


async def wait_polling(procs: list[subprocess.Popen[bytes]], logdir: Path, seconds: float = 3.0) -> None:
    """A few seconds for new workers to connect and poll; fail if one exits meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited early; see {logdir}")
        await asyncio.sleep(0.5)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    errors: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="bench-scale-out-")
    logdir = Path(tmp.name)
    procs: WorkerProcs | None = None
    phases: dict[str, dict[str, Any]] = {}
    try:
        async with stack(own_worker=False) as s:
            queue = f"bench-scale-{uuid.uuid4().hex[:8]}"
            os.environ["ROLLOUT_TASK_QUEUE"] = queue  # worker.client.start and the workers read it
            db_url = os.environ.get("ROLLOUT_DB_URL") or f"sqlite+aiosqlite:///{logdir / 'audit.db'}"
            store = AuditStore.from_url(db_url)
            await store.migrate()  # once, before the workers (each migrates at start: then a no-op)
            await store.close()
            env = {**os.environ, "TEMPORAL_ADDRESS": s.address, "ROLLOUT_TASK_QUEUE": queue,
                   "ROLLOUT_DB_URL": db_url, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            procs = WorkerProcs(env, logdir)
            first = [procs.start(), procs.start()]
            await wait_polling(first, logdir)
            handles, soak_times = await soak(s, args.rollouts, budget_s=budget.left())

            async def breach(h: WorkflowHandle[Any, Any], out: list[float], missed: list[str], wait: float) -> None:
                got = s.target.expect(h.id, is_containment)
                t = time.perf_counter()
                await h.signal("report_breach", breach_payload(source="bench-scale-out"))
                try:
                    out.append(await asyncio.wait_for(got, wait) - t)
                except TimeoutError:
                    missed.append(h.id)

            async def phase(name: str, group: list[WorkflowHandle[Any, Any]], wait: float,
                            during: Callable[[int], Awaitable[None]] | None = None) -> list[str]:
                lat: list[float] = []
                missed: list[str] = []
                sent = 0

                def job(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
                    async def run() -> None:
                        nonlocal sent
                        sent += 1
                        if during is not None:
                            await during(sent)
                        await breach(h, lat, missed, wait)

                    return run

                t = time.perf_counter()
                await asyncio.wait_for(bounded(args.in_flight, [job(h) for h in group]), budget.left())
                wall = time.perf_counter() - t
                phases[name] = {
                    "workers": len(procs.alive()) if procs else None,
                    "samples": len(lat),
                    "breach_p50_ms": round((percentile(lat, 50) or 0) * 1000, 1),
                    "breach_p95_ms": round((percentile(lat, 95) or 0) * 1000, 1),
                    "breach_p99_ms": round((percentile(lat, 99) or 0) * 1000, 1),
                    "breach_max_ms": round(max(lat, default=0) * 1000, 1),
                    "missed": len(missed),
                    "wall_s": round(wall, 2),
                    "worker_rss_kb": [rss_kb(p.pid) for p in procs.procs] if procs else None,
                }
                return missed

            n = min(args.samples, len(handles) // 3)
            await phase("2", handles[:n], 60.0)
            more = [procs.start(), procs.start()]
            await wait_polling(more, logdir)
            await phase("4", handles[n:2 * n], 60.0)
            rest = handles[2 * n:]
            killed: dict[str, Any] = {}

            async def kill_one(sent: int) -> None:
                if not killed and procs is not None and sent >= max(1, len(rest) // 4):
                    victim = procs.procs[0]
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.update({"pid": victim.pid, "after_sent": sent, "at": time.perf_counter()})

            missed = await phase("kill", rest, KILL_WAIT_S, during=kill_one)
            statuses: dict[str, str] = {}

            def check(h: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[None]]:
                async def job() -> None:
                    st: dict[str, Any] = await h.query("status", result_type=dict)
                    statuses[h.id] = str(st.get("status"))

                return job

            await bounded(50, [check(h) for h in handles])
            not_held = [h.id for h in rest if statuses.get(h.id) != "held"]
            twice = [h.id for h in rest if len(s.target.contained(h.id)) > 1]
            lost = sorted(set(missed) | set(not_held) | set(twice))
            for w in lost[:10]:
                errors.append(f"{w}: status {statuses.get(w)}, {len(s.target.contained(w))} containment request(s)")
            all_not_held = sum(1 for h in handles if statuses.get(h.id) != "held")
            server = "TEMPORAL_ADDRESS " + s.address if s.external else "temporal dev server (start_local, in memory)"
    finally:
        if procs is not None:
            procs.stop()
        tmp.cleanup()
    p99 = {k: v["breach_p99_ms"] for k, v in phases.items()}
    return {
        "benchmark": "scale_out",
        "server": server,
        "rollouts": len(handles),
        "in_flight": args.in_flight,
        "workers": [2, 4],
        "breach_p99_ms": p99,
        "phases": phases,
        "killed": {"after_sent": killed.get("after_sent")} if killed else None,
        "lost": len(lost),
        "not_held_total": all_not_held,
        "goals": {"lost": 0, "breach_p99_ms": "4 workers no worse than 2"},
        "goals_met": {"lost": not lost, "p99_no_worse": p99.get("4", 1e9) <= p99.get("2", 0)},
        "soak_phases": soak_times,
        "errors": errors[:20],
        "error_count": len(errors),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=1000, help="rollouts soaking (default 1000)")
    ap.add_argument("--samples", type=int, default=300, help="breaches in each of phases 2 and 4 (default 300)")
    ap.add_argument("--in-flight", type=int, default=50, help="breaches in flight (default 50)")
    ap.add_argument("--timeout", type=float, default=460.0, help="overall budget in seconds (default 460)")
    args = ap.parse_args(argv)
    if not 3 <= args.rollouts <= 5000 or not 1 <= args.in_flight <= 500:
        ap.error("--rollouts must be 3..5000 and --in-flight 1..500")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 1 if result["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
