"""Audit store throughput: append 10,000 events in batches of 50, then verify the chains.

Backends: SQLite (a temporary file) and PostgreSQL (a fresh database created on the
server named by --pg-url, dropped afterwards; default
postgresql+asyncpg://postgres@127.0.0.1:5432/postgres, the database in that URL is
only used to create and drop the fresh one). Events are spread over --rollouts hash
chains (default 10), one batch = 50 consecutive events of one rollout, as the worker's
`record_audit` activity writes them. A second pass re-appends every batch (idempotent
retries: nothing written). Prints one JSON object.

    .venv/bin/python -m bench.bench_audit [--events 10000] [--batch 50] [--rollouts 10] [--no-pg]
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
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.audit_store import AuditStore
from bench.common import (
    Deadline,
    PostgresUnreachable,
    emit,
    fresh_pg_database,
    machine,
    max_rss_kb,
    stdout_to_stderr,
    summary_ms,
)
from rollout.models import AuditEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLAN_HASH = "b" * 64


def make_batches(events: int, batch: int, rollouts: int) -> list[list[AuditEvent]]:
    """`events` events over `rollouts` chains, cut into batches of consecutive events of one rollout."""
    per = [events // rollouts + (1 if r < events % rollouts else 0) for r in range(rollouts)]
    chains: list[list[list[AuditEvent]]] = []
    for r, count in enumerate(per):
        rid = f"rollout-bench-audit-{r}"
        evs = [
            AuditEvent(
                rollout_id=rid,
                seq=seq,
                at=T0 + timedelta(seconds=seq),
                actor="frank@example.com",
                role="engineering",
                action="refused" if seq % 7 else "approved",
                stage="pilot",
                plan_hash=PLAN_HASH,
                reason=f"benchmark event {seq}",
                payload={"request": {"stage": "pilot", "role": "engineering", "n": seq}, "status": "awaiting_approval"},
            )
            for seq in range(1, count + 1)
        ]
        chains.append([evs[i : i + batch] for i in range(0, len(evs), batch)])
    # interleave the rollouts' batches, as concurrent rollouts would write them
    out: list[list[AuditEvent]] = []
    for i in range(max((len(c) for c in chains), default=0)):
        out += [c[i] for c in chains if i < len(c)]
    return out


async def run_store(url: str, batches: list[list[AuditEvent]], budget: Deadline) -> dict[str, Any]:
    store = AuditStore.from_url(url)
    try:
        t = time.perf_counter()
        await store.migrate()
        migrate_s = time.perf_counter() - t
        per_batch: list[float] = []
        written = 0
        t_all = time.perf_counter()
        for b in batches:
            if budget.expired():
                break
            t = time.perf_counter()
            written += await store.append(b)
            per_batch.append(time.perf_counter() - t)
        append_s = time.perf_counter() - t_all
        # idempotent retries: the same batches again write nothing
        retry: list[float] = []
        rewritten = 0
        t_all = time.perf_counter()
        for b in batches[: len(per_batch)]:
            t = time.perf_counter()
            rewritten += await store.append(b)
            retry.append(time.perf_counter() - t)
        retry_s = time.perf_counter() - t_all
        t = time.perf_counter()
        report = await store.verify()
        verify_s = time.perf_counter() - t
        rows = sum(c.rows for c in report.chains)
        return {
            "backend": store.dialect,
            "migrate_s": round(migrate_s, 3),
            "events_written": written,
            "batches": len(per_batch),
            "append_s": round(append_s, 3),
            "events_per_s": round(written / append_s, 1) if append_s else None,
            "append_batch": summary_ms(per_batch),
            "retry_written": rewritten,
            "retry_s": round(retry_s, 3),
            "retry_batch": summary_ms(retry),
            "verify_s": round(verify_s, 3),
            "verify_ok": report.ok,
            "verify_chains": len(report.chains),
            "verify_rows": rows,
            "verify_rows_per_s": round(rows / verify_s, 1) if rows and verify_s else None,
        }
    finally:
        await store.close()



async def run_pg(base_url: str, batches: list[list[AuditEvent]], budget: Deadline) -> dict[str, Any]:
    try:
        async with fresh_pg_database(base_url, "rollout_audit_bench") as url:
            return {"database": "fresh, dropped afterwards", **await run_store(url, batches, budget)}
    except PostgresUnreachable as exc:
        return {"skipped": f"cannot connect to PostgreSQL: {exc}"}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    batches = make_batches(args.events, args.batch, args.rollouts)
    out: dict[str, Any] = {
        "benchmark": "audit",
        "events": args.events,
        "batch_size": args.batch,
        "rollouts": args.rollouts,
    }
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        out["sqlite"] = await run_store(f"sqlite+aiosqlite:///{Path(tmp) / 'audit.db'}", batches, budget)
    out["postgresql"] = {"skipped": "--no-pg"} if args.no_pg else await run_pg(args.pg_url, batches, budget)
    out["peak_rss_kb"] = max_rss_kb()
    out["machine"] = machine()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000, help="events to append (default 10000)")
    ap.add_argument("--batch", type=int, default=50, help="events per append (default 50)")
    ap.add_argument("--rollouts", type=int, default=10, help="hash chains the events are spread over (default 10)")
    ap.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL server to create the fresh database on")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--timeout", type=float, default=100.0, help="overall budget in seconds (default 100)")
    args = ap.parse_args(argv)
    if not 1 <= args.events <= 1_000_000 or not 1 <= args.batch <= 1000 or not 1 <= args.rollouts <= 10_000:
        ap.error("--events must be 1..1000000, --batch 1..1000, --rollouts 1..10000")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
