"""Audit verify time: one rollout's chain of 100,000 rows with a signed head every 10 rows.

For SQLite (a temporary file) and PostgreSQL (a fresh database on --pg-url, dropped
afterwards) the bench appends the rows in batches of --batch, stores a head every
--head-every rows signed with a fresh Ed25519 key (as `record_audit` signs them), then
times `AuditStore.verify` three ways: the chain and the heads against the rows (no key);
with the public key (every head's signature checked too); with the key and the
workflow's anchor (its head and every recorded event's content hash, as
`rollout audit verify` takes them from Temporal history). Goal: under 5 s.
Populating is bounded by --timeout; a run cut short says so (`complete: false`).
Prints one JSON object.

    .venv/bin/python -m bench.audit_verify [--rows 100000] [--head-every 10] [--no-pg] [--timeout 600]
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from activities.audit_store import (
    Anchor,
    AuditStore,
    HeadKey,
    HeadSigner,
    audit_heads,
    content_hash,
    key_id_for,
    normalize_event,
)
from bench.common import (
    Deadline,
    PostgresUnreachable,
    emit,
    fresh_pg_database,
    machine,
    max_rss_kb,
    stdout_to_stderr,
)
from rollout.models import AuditEvent

RID = "rollout-bench-verify"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLAN_HASH = "c" * 64


def event(seq: int) -> AuditEvent:
    return AuditEvent(
        rollout_id=RID, seq=seq, at=T0 + timedelta(seconds=30 * seq), actor="system", role=None,
        action="window_summary" if seq % 10 == 0 else "scope_applied", stage="pilot", plan_hash=PLAN_HASH,
        reason=None if seq % 3 else f"decision {seq}",
        payload={"seq": seq, "kind": "resume", "percent": 5.0, "segments": ["internal"],
                 "authority": {"read": "auto", "draft": "review"}, "values": [0.01, 0.02, None]},
    )


async def populate(store: AuditStore, rows: int, batch: int, head_every: int, signer: HeadSigner,
                   budget: Deadline) -> dict[str, Any]:
    t = time.perf_counter()
    written = 0
    for lo in range(1, rows + 1, batch):
        if budget.expired():
            break
        written += await store.append([event(s) for s in range(lo, min(lo + batch, rows + 1))])
    append_s = time.perf_counter() - t
    # heads: signed as record_audit signs them, inserted in bulk (one row per head, as record_head stores them)
    t = time.perf_counter()
    stored = {r.event.seq: r.row_hash for r in await store.read(RID) if r.event.seq % head_every == 0}
    now = datetime.now(UTC)
    heads = []
    for seq in sorted(stored):
        h = signer.sign(RID, seq, stored[seq])
        heads.append({"rollout_id": RID, "seq": seq, "hash": h.hash, "signature": h.signature, "key_id": h.key_id,
                      "run_id": f"run-{seq // 10_000}", "recorded_at": now})
    async with store.engine.begin() as conn:
        for i in range(0, len(heads), 5000):
            await conn.execute(audit_heads.insert(), heads[i : i + 5000])
    return {"rows_written": written, "append_s": round(append_s, 2), "heads": len(heads),
            "heads_s": round(time.perf_counter() - t, 2), "complete": written == rows}


async def run_store(url: str, args: argparse.Namespace, budget: Deadline) -> dict[str, Any]:
    private = Ed25519PrivateKey.generate()
    signer = HeadSigner(private, key_id_for(private.public_key()))
    key = HeadKey(private.public_key(), signer.key_id)
    store = AuditStore.from_url(url)
    try:
        await store.migrate()
        out: dict[str, Any] = {"backend": store.dialect}
        out.update(await populate(store, args.rows, args.batch, args.head_every, signer, budget))
        last = await store.last_seq(RID)
        head = (await store.heads(RID))[-1].head
        anchor = Anchor(head=head, events={s: content_hash(normalize_event(event(s))) for s in range(1, last + 1)},
                        seq_runs={s: f"run-{s // 10_000}" for s in range(1, last + 1)})
        for name, kw in (("verify_s", {}), ("verify_with_key_s", {"key": key}),
                         ("verify_with_key_and_anchor_s", {"key": key, "anchors": {RID: anchor}})):
            t = time.perf_counter()
            report = await store.verify(RID, **kw)  # type: ignore[arg-type]
            out[name] = round(time.perf_counter() - t, 3)
            chain = report.chains[0]
            out[name.replace("_s", "_ok")] = report.ok and chain.rows == last
        out["goal_s"] = 5.0
        out["goal_met"] = max(out["verify_s"], out["verify_with_key_s"], out["verify_with_key_and_anchor_s"]) < 5.0
        return out
    finally:
        await store.close()



async def run_pg(args: argparse.Namespace, budget: Deadline) -> dict[str, Any]:
    try:
        async with fresh_pg_database(args.pg_url, "rollout_audit_verify_bench") as url:
            return {"database": "fresh, dropped afterwards", **await run_store(url, args, budget)}
    except PostgresUnreachable as exc:
        return {"skipped": f"cannot connect to PostgreSQL: {exc}"}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    budget = Deadline(args.timeout)
    out: dict[str, Any] = {"benchmark": "audit_verify", "rows": args.rows, "head_every": args.head_every,
                           "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="bench-audit-verify-") as tmp:
        out["sqlite"] = await asyncio.wait_for(
            run_store(f"sqlite+aiosqlite:///{Path(tmp) / 'audit.db'}", args, budget), budget.left())
    out["postgresql"] = (
        {"skipped": "--no-pg"} if args.no_pg else await asyncio.wait_for(run_pg(args, budget), budget.left(30))
    )
    out["peak_rss_kb"] = max_rss_kb()
    out["machine"] = machine()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows in the chain (default 100000)")
    ap.add_argument("--head-every", type=int, default=10, help="a signed head every N rows (default 10)")
    ap.add_argument("--batch", type=int, default=1000, help="rows per append (default 1000)")
    ap.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL server to create the fresh database on")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--timeout", type=float, default=600.0, help="overall budget in seconds (default 600)")
    args = ap.parse_args(argv)
    if not 1 <= args.rows <= 2_000_000 or not 1 <= args.head_every <= args.rows or not 1 <= args.batch <= 5000:
        ap.error("--rows must be 1..2000000, --head-every 1..rows, --batch 1..5000")
    with stdout_to_stderr():
        result = asyncio.run(bench(args))
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
