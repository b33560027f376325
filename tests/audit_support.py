"""Helpers shared by the audit tests: fresh databases, events, tampering."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from activities.audit_store import GENESIS_HASH, AuditStore, chain_hash
from cli.main import main
from rollout.models import AuditEvent
from rollout.plan import canonical_json

T0 = datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
PLAN_HASH = "a" * 64


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def fresh_pg_database(pg_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"rollout_audit_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(pg_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def store_url_for(kind: str, tmp_path: Path, pg_url: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    else:
        async with fresh_pg_database(pg_url) as url:
            yield url


def make_event(rollout_id: str, seq: int, **kw: Any) -> AuditEvent:
    data: dict[str, Any] = {
        "rollout_id": rollout_id,
        "seq": seq,
        "at": T0 + timedelta(minutes=seq),
        "actor": "alice@example.com",
        "role": "rollout",
        "action": "note",
        "stage": "pilot",
        "plan_hash": PLAN_HASH,
        "reason": f"decision {seq}",
        "payload": {"n": seq, "nested": {"values": [1, 2.5, None], "text": "ünïcødé | pipe"}},
    }
    data.update(kw)
    return AuditEvent(**data)


def make_events(rollout_id: str, n: int, start: int = 1) -> list[AuditEvent]:
    return [make_event(rollout_id, i) for i in range(start, start + n)]


async def tamper(url: str, *statements: str) -> None:
    """Run statements past the append-only triggers (what a rogue DBA could do).

    PostgreSQL: a superuser session with `session_replication_role = replica`, so
    ordinary triggers do not fire. SQLite: drop the triggers first.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        assert u.database
        con = sqlite3.connect(u.database)
        try:
            for trigger in SQLITE_TRIGGERS:
                con.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            for st in statements:
                con.execute(st)
            con.commit()
            # put the triggers back, as an administrator covering their tracks would
            for trigger, sql in SQLITE_TRIGGERS.items():
                con.execute(f"CREATE TRIGGER {trigger} {sql}")
            con.commit()
        finally:
            con.close()
    else:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                for st in statements:
                    await conn.execute(st)
        finally:
            await conn.close()


SQLITE_TRIGGERS = {
    "audit_events_no_update": "BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END",
    "audit_events_no_delete": "BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END",
    "audit_heads_no_update": "BEFORE UPDATE ON audit_heads "
    "BEGIN SELECT RAISE(ABORT, 'audit_heads is append-only: UPDATE refused'); END",
    "audit_heads_no_delete": "BEFORE DELETE ON audit_heads "
    "BEGIN SELECT RAISE(ABORT, 'audit_heads is append-only: DELETE refused'); END",
}


async def rewrite_and_rehash(url: str, rollout_id: str, seq: int, **changes: Any) -> None:
    """Edit row `seq` and recompute every hash after it with the project's own hash
    function, past the triggers: the chain is then consistent again, without the key."""
    store = AuditStore.from_url(url)
    try:
        rows = await store.read(rollout_id)
    finally:
        await store.close()
    statements: list[str] = []
    prev = GENESIS_HASH
    for row in rows:
        ev = row.event
        if ev.seq == seq:
            ev = ev.model_copy(update=changes)
            sets = ", ".join(f"{k} = {_sql_literal(v)}" for k, v in changes.items())
            statements.append(f"UPDATE audit_events SET {sets} WHERE id = {row.id}")  # noqa: S608
        if ev.seq >= seq:
            new_hash = chain_hash(prev, ev)
            statements.append(
                f"UPDATE audit_events SET prev_hash = '{prev}', row_hash = '{new_hash}' WHERE id = {row.id}"  # noqa: S608
            )
            prev = new_hash
        else:
            prev = row.row_hash
    await tamper(url, *statements)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        value = canonical_json(value)
    return "'" + str(value).replace("'", "''") + "'"


def scenario_events(rid: str) -> list[AuditEvent]:
    """A plausible trail: start, approvals, a breach with its evidence, escalation, resume,
    handoff, an amendment, a refused approval, completion."""
    new_hash = "b" * 64
    evidence = {
        "source": "prometheus",
        "threshold": "error_rate",
        "query": "sum(rate(agent_errors_total[5m])) / sum(rate(agent_runs_total[5m]))",
        "value": 0.031,
        "max": 0.02,
        "min": None,
        "for_": 3,
        "no_data": False,
        "samples": [
            {"at": "2025-03-01T10:00:00Z", "value": 0.025, "error": None},
            {"at": "2025-03-01T10:00:30Z", "value": 0.029, "error": None},
            {"at": "2025-03-01T10:01:00Z", "value": 0.031, "error": None},
        ],
        "observed_at": "2025-03-01T10:01:00Z",
        "action": "hold",
        "detail": {},
    }
    spec: list[dict[str, Any]] = [
        {"action": "started", "actor": "alice@example.com", "role": "rollout", "stage": "pilot",
         "payload": {"status": "awaiting_approval", "plan_name": "support-agent"}},
        {"action": "approval_refused", "actor": "alice@example.com", "role": "engineering", "stage": "pilot",
         "reason": "the rollout owner may not approve", "payload": {"refused": True, "request": "approve"}},
        {"action": "approved", "actor": "frank@example.com", "role": "engineering", "stage": "pilot",
         "payload": {"comment": "dashboards look good"}},
        {"action": "stage_entered", "actor": None, "role": None, "stage": "pilot",
         "payload": {"status": "soaking", "scope": {"percent": 5, "segments": ["internal"]}}},
        {"action": "breach", "actor": None, "role": None, "stage": "pilot", "reason": "error_rate 0.031 > max 0.02",
         "payload": {
             "evidence": evidence,
             "scope": {"percent": 5, "segments": ["internal"]},
             "authority": {"read": "auto", "draft": "auto", "refund": "forbid"},
             "overrides": [],
             "escalation": {"level": 0, "paged": ["carol@example.com"]},
             "containment": "hold",
             "status": "held",
         }},
        {"action": "hold", "actor": None, "role": None, "stage": "pilot", "reason": "breach of error_rate",
         "payload": {"status": "held"}},
        {"action": "escalation_page", "actor": None, "role": None, "stage": "pilot",
         "payload": {"level": 0, "paged": ["carol@example.com"]}},
        {"action": "escalation_acknowledged", "actor": "carol@example.com", "role": "incident_response",
         "stage": "pilot", "payload": {}},
        {"action": "resumed", "actor": "carol@example.com", "role": "incident_response", "stage": "pilot",
         "reason": "bad deploy reverted", "payload": {"status": "soaking"}},
        {"action": "amend_requested", "actor": "alice@example.com", "role": "rollout", "stage": "pilot",
         "payload": {"new_plan_hash": new_hash}},
        {"action": "approved", "actor": "gina@example.com", "role": "engineering", "stage": "pilot",
         "payload": {"amendment": new_hash, "comment": "ok to widen thresholds"}},
        {"action": "amended", "actor": None, "role": None, "stage": "pilot", "plan_hash": new_hash,
         "payload": {"old_plan_hash": PLAN_HASH, "new_plan_hash": new_hash}},
        {"action": "handoff_acknowledged", "actor": "hank@example.com", "role": "operations",
         "stage": "system-of-record", "plan_hash": new_hash, "payload": {"item": "Runbook reviewed"}},
        {"action": "completed", "actor": None, "role": None, "stage": "system-of-record", "plan_hash": new_hash,
         "payload": {"status": "completed"}},
    ]
    out = []
    for i, s in enumerate(spec, start=1):
        data = {"reason": None, "plan_hash": PLAN_HASH, **s}
        out.append(
            AuditEvent(rollout_id=rid, seq=i, at=T0 + timedelta(hours=i), **data)
        )
    return out


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI entry in a thread (it runs its own event loop): (exit code, stdout, stderr)."""
    capsys.readouterr()

    def run() -> int:
        try:
            return main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            return int(exc.code or 0)

    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return code, out, err
