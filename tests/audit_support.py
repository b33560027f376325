"""Helpers shared by the audit tests: fresh databases, events, tampering."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from rollout.models import AuditEvent

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
            con.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
            con.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
            for st in statements:
                con.execute(st)
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
