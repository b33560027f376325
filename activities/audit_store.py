"""The audit store: append-only, hash-chained rows, one chain per rollout.

SQLite file by default (`${ROLLOUT_STATE_DIR:-.state}/audit.db`), PostgreSQL via
`ROLLOUT_DB_URL` (`postgresql+asyncpg://user@host:5432/db`; `postgresql://` and
`postgres://` mean the same). The schema is created and upgraded by Alembic
migrations in `activities/migrations/` (run by `migrate()`, and lazily on first use).

Each row carries `prev_hash` (the `row_hash` of the row before it in the same
rollout, 64 zeros for seq 1) and `row_hash = sha256(prev_hash + canonical_json(fields))`
where `fields` are the AuditEvent fields (rollout_id, seq, at, actor, role, action,
stage, plan_hash, reason, payload). An edited row no longer matches its hash, a
deleted row leaves a gap in `seq` and a broken link, a moved row (seq changed) no
longer matches its hash: `verify()` names the first broken row of each rollout.

Append-only: there is no update or delete API, and a trigger installed by the
migration refuses UPDATE, DELETE (and on PostgreSQL TRUNCATE) on the table. To
tamper on purpose (tests, drills), PostgreSQL needs a superuser session with
`SET session_replication_role = replica` (ordinary triggers do not fire then);
SQLite needs `DROP TRIGGER audit_events_no_update` / `audit_events_no_delete`.

What the chain alone cannot show: someone who rewrites the chain from some row
to the end (recomputing every hash), or who deletes the newest rows. Temporal
history is the primary record: `rollout audit rebuild ID` compares the store
with it while the rollout is still in Temporal.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import os
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rollout.models import AuditEvent
from rollout.plan import canonical_json

GENESIS_HASH = "0" * 64
TABLE_NAME = "audit_events"
VERSION_TABLE = "rollout_audit_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The table as the code sees it; the migrations are the source of truth for the schema.
metadata = sa.MetaData()
audit_events = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.String(255), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("role", sa.String(255)),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("stage", sa.String(255)),
    sa.Column("plan_hash", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text()),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("rollout_id", "seq", name="uq_audit_events_rollout_seq"),
)


class AuditStoreError(Exception):
    """Base of the store's own errors."""


class AuditConflictError(AuditStoreError):
    """A row with this (rollout_id, seq) exists with different content: tampering or a bug."""

    def __init__(self, rollout_id: str, seq: int, detail: str) -> None:
        super().__init__(
            f"audit row {rollout_id} seq {seq} already exists with different content ({detail}); "
            "the store was edited or the workflow reused a sequence number: run `rollout audit verify` "
            f"and `rollout audit rebuild {rollout_id}`"
        )
        self.rollout_id = rollout_id
        self.seq = seq


class AuditGapError(AuditStoreError):
    """A row would be appended after a missing one (the chain needs seq-1 first)."""

    def __init__(self, rollout_id: str, seq: int, last: int) -> None:
        super().__init__(
            f"audit row {rollout_id} seq {seq} cannot be appended: the store has no row {seq - 1} "
            f"(highest stored: {last or 'none'}); run `rollout audit rebuild {rollout_id}` to restore "
            "missing rows from Temporal history"
        )
        self.rollout_id = rollout_id
        self.seq = seq


# ---- hashing ---------------------------------------------------------------------------


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _format_at(at: datetime) -> str:
    return _utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain_json(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings, so every database keeps them exactly."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def normalize_event(ev: AuditEvent) -> AuditEvent:
    """The event as the store keeps it: UTC time, JSON-plain payload."""
    return ev.model_copy(update={"at": _utc(ev.at), "payload": _plain_json(ev.payload)})


def event_fields(ev: AuditEvent) -> dict[str, Any]:
    """The hashed fields of an event, in their canonical form."""
    return {
        "rollout_id": ev.rollout_id,
        "seq": ev.seq,
        "at": _format_at(ev.at),
        "actor": ev.actor,
        "role": ev.role,
        "action": ev.action,
        "stage": ev.stage,
        "plan_hash": ev.plan_hash,
        "reason": ev.reason,
        "payload": _plain_json(ev.payload),
    }


def content_hash(ev: AuditEvent) -> str:
    return hashlib.sha256(canonical_json(event_fields(ev)).encode()).hexdigest()


def chain_hash(prev_hash: str, ev: AuditEvent) -> str:
    return hashlib.sha256((prev_hash + canonical_json(event_fields(ev))).encode()).hexdigest()


def event_diff(a: AuditEvent, b: AuditEvent) -> list[str]:
    """Names of the hashed fields that differ between two events."""
    fa, fb = event_fields(a), event_fields(b)
    return [k for k in fa if canonical_json(fa[k]) != canonical_json(fb[k])]


# ---- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    id: int
    event: AuditEvent
    prev_hash: str
    row_hash: str
    recorded_at: datetime

    def to_json(self) -> dict[str, Any]:
        data = self.event.model_dump(mode="json")
        data["at"] = _format_at(self.event.at)
        data.update(
            id=self.id,
            prev_hash=self.prev_hash,
            row_hash=self.row_hash,
            recorded_at=_format_at(self.recorded_at),
        )
        return data


@dataclass(frozen=True)
class BrokenRow:
    rollout_id: str
    seq: int  # the seq where the chain breaks (for a gap: the first missing seq)
    row_id: int | None  # database id of the row found there (None: missing)
    problem: str

    def describe(self) -> str:
        where = f"row id {self.row_id}" if self.row_id is not None else "no row"
        return f"{self.rollout_id} seq {self.seq} ({where}): {self.problem}"


@dataclass
class ChainReport:
    rollout_id: str
    rows: int = 0
    last_seq: int = 0
    head_hash: str = GENESIS_HASH
    broken: BrokenRow | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)

    @property
    def first_broken(self) -> BrokenRow | None:
        for c in self.chains:
            if c.broken is not None:
                return c.broken
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rollouts": [
                {
                    "rollout_id": c.rollout_id,
                    "rows": c.rows,
                    "last_seq": c.last_seq,
                    "head_hash": c.head_hash,
                    "ok": c.ok,
                    "broken": None
                    if c.broken is None
                    else {
                        "seq": c.broken.seq,
                        "row_id": c.broken.row_id,
                        "problem": c.broken.problem,
                    },
                }
                for c in self.chains
            ],
        }


class ChainVerifier:
    """Feed one rollout's rows in seq order; remembers the first broken row."""

    def __init__(self, rollout_id: str) -> None:
        self.report = ChainReport(rollout_id)
        self._expected_seq = 1
        self._prev_hash = GENESIS_HASH

    def feed(self, row: AuditRow) -> None:
        r = self.report
        r.rows += 1
        if r.broken is not None:
            return
        ev = row.event
        if ev.seq != self._expected_seq:
            if ev.seq > self._expected_seq:
                missing = (
                    f"seq {self._expected_seq}"
                    if ev.seq == self._expected_seq + 1
                    else f"seq {self._expected_seq}..{ev.seq - 1}"
                )
                r.broken = BrokenRow(
                    ev.rollout_id, self._expected_seq, None, f"row missing ({missing} deleted; next row is seq {ev.seq}, row id {row.id})"
                )
            else:
                r.broken = BrokenRow(ev.rollout_id, ev.seq, row.id, f"seq {ev.seq} out of order")
            return
        if row.prev_hash != self._prev_hash:
            r.broken = BrokenRow(
                ev.rollout_id,
                ev.seq,
                row.id,
                "prev_hash does not match the row before it (a row was deleted, replaced or moved)",
            )
            return
        if chain_hash(row.prev_hash, ev) != row.row_hash:
            r.broken = BrokenRow(
                ev.rollout_id,
                ev.seq,
                row.id,
                "content does not match its row_hash (the row was edited or moved)",
            )
            return
        self._prev_hash = row.row_hash
        self._expected_seq += 1
        r.last_seq = ev.seq
        r.head_hash = row.row_hash


@dataclass
class ReconcileReport:
    rollout_id: str
    history_events: int = 0
    written: int = 0
    agreeing: int = 0
    disagreements: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.disagreements

    def to_json(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "ok": self.ok,
            "history_events": self.history_events,
            "written": self.written,
            "agreeing": self.agreeing,
            "disagreements": self.disagreements,
        }


# ---- URLs ------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """`postgresql://` / `postgres://` -> asyncpg, `sqlite://` -> aiosqlite, a path -> SQLite file."""
    url = url.strip()
    if "://" not in url:
        return f"sqlite+aiosqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        return f"postgresql+asyncpg://{rest}"
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return f"sqlite+aiosqlite://{rest}"
    return url


def default_url() -> str:
    state = os.environ.get("ROLLOUT_STATE_DIR") or ".state"
    return f"sqlite+aiosqlite:///{Path(state) / 'audit.db'}"


def _advisory_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


# ---- the store -------------------------------------------------------------------------


class AuditStore:
    """Async, append-only audit store. Use `async with AuditStore.from_env() as store:`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(audit_write=True)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str) -> AuditStore:
        url = normalize_url(url)
        u = make_url(url)
        kwargs: dict[str, Any] = {"json_serializer": canonical_json}
        if u.get_backend_name() == "sqlite":
            db = u.database
            if db and db != ":memory:" and not db.startswith("file:"):
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_async_engine(url, **kwargs)
        if u.get_backend_name() == "sqlite":
            _sqlite_events(engine)
        return cls(engine)

    @classmethod
    def from_env(cls) -> AuditStore:
        return cls.from_url(os.environ.get("ROLLOUT_DB_URL") or default_url())

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> AuditStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- schema -----------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration (Alembic `upgrade head`)."""
        # Alembic's `context`/`op` are process-global: one migration at a time in this process
        # (stores on any engine), and the database lock below for other processes.
        async with _migrate_lock():
            async with self._writer.begin() as conn:
                if self.dialect == "postgresql":  # one migrating process at a time
                    await conn.execute(
                        sa.select(sa.func.pg_advisory_xact_lock(_advisory_key("rollout-audit-migrate")))
                    )
                await conn.run_sync(_alembic_upgrade)
        self._ready = True

    async def schema_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await self.migrate()

    # -- writing ----------------------------------------------------------------------

    async def append(self, events: Iterable[AuditEvent]) -> int:
        """Append events; rows already stored with identical content are skipped.

        Returns the number of rows newly written. Raises AuditConflictError when a row
        with the same (rollout_id, seq) holds different content, AuditGapError when
        the row before a new one is missing.
        """
        await self._ensure_ready()
        by_rollout: dict[str, list[AuditEvent]] = {}
        for ev in events:
            by_rollout.setdefault(ev.rollout_id, []).append(normalize_event(ev))
        written = 0
        for rollout_id, evs in by_rollout.items():
            evs.sort(key=lambda e: e.seq)
            for attempt in range(5):
                try:
                    written += await self._append_chain(rollout_id, evs)
                    break
                except (IntegrityError, OperationalError):
                    # a concurrent writer won a race the lock did not cover (or SQLite was busy)
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
        return written

    async def _append_chain(self, rollout_id: str, evs: Sequence[AuditEvent]) -> int:
        seqs = [e.seq for e in evs]
        for a, b in itertools.pairwise(seqs):
            if a == b:
                raise AuditStoreError(f"batch holds seq {a} of {rollout_id} twice")
        t = audit_events
        async with self._writer.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_advisory_key(rollout_id))))
            stored = {
                row.event.seq: row
                for row in await self._rows(conn, rollout_id, min(seqs) - 1, max(seqs))
            }
            last = (
                await conn.execute(sa.select(sa.func.max(t.c.seq)).where(t.c.rollout_id == rollout_id))
            ).scalar_one_or_none() or 0
            new_rows: list[dict[str, Any]] = []
            now = datetime.now(UTC)
            for ev in evs:
                have = stored.get(ev.seq)
                if have is not None:
                    if content_hash(have.event) != content_hash(ev):
                        raise AuditConflictError(
                            rollout_id, ev.seq, "differs in " + ", ".join(event_diff(have.event, ev))
                        )
                    continue
                if ev.seq < 1:
                    raise AuditStoreError(f"seq must start at 1, got {ev.seq} for {rollout_id}")
                if ev.seq == 1:
                    prev_hash = GENESIS_HASH
                else:
                    before = stored.get(ev.seq - 1)
                    if before is None:
                        raise AuditGapError(rollout_id, ev.seq, int(last))
                    prev_hash = before.row_hash
                row_hash = chain_hash(prev_hash, ev)
                new_rows.append(
                    {
                        "rollout_id": ev.rollout_id,
                        "seq": ev.seq,
                        "at": ev.at,
                        "actor": ev.actor,
                        "role": ev.role,
                        "action": ev.action,
                        "stage": ev.stage,
                        "plan_hash": ev.plan_hash,
                        "reason": ev.reason,
                        "payload": ev.payload,
                        "prev_hash": prev_hash,
                        "row_hash": row_hash,
                        "recorded_at": now,
                    }
                )
                stored[ev.seq] = AuditRow(0, ev, prev_hash, row_hash, now)
            if new_rows:
                await conn.execute(t.insert(), new_rows)
            return len(new_rows)

    # -- reading ----------------------------------------------------------------------

    @staticmethod
    def _to_row(r: sa.Row[Any]) -> AuditRow:
        m = r._mapping
        ev = AuditEvent(
            rollout_id=m["rollout_id"],
            seq=int(m["seq"]),
            at=_utc(m["at"]),
            actor=m["actor"],
            role=m["role"],
            action=m["action"],
            stage=m["stage"],
            plan_hash=m["plan_hash"],
            reason=m["reason"],
            payload=m["payload"] if isinstance(m["payload"], dict) else {"value": m["payload"]},
        )
        return AuditRow(int(m["id"]), ev, m["prev_hash"], m["row_hash"], _utc(m["recorded_at"]))

    async def _rows(
        self, conn: AsyncConnection, rollout_id: str, lo: int | None = None, hi: int | None = None
    ) -> list[AuditRow]:
        t = audit_events
        q = sa.select(t).where(t.c.rollout_id == rollout_id)
        if lo is not None:
            q = q.where(t.c.seq >= lo)
        if hi is not None:
            q = q.where(t.c.seq <= hi)
        res = await conn.execute(q.order_by(t.c.seq, t.c.id))
        return [self._to_row(r) for r in res]

    async def read(self, rollout_id: str) -> list[AuditRow]:
        """Every stored row of one rollout, in seq order."""
        await self._ensure_ready()
        async with self.engine.connect() as conn:
            return await self._rows(conn, rollout_id)

    async def events(self, rollout_id: str) -> list[AuditEvent]:
        return [r.event for r in await self.read(rollout_id)]

    async def last_seq(self, rollout_id: str) -> int:
        """The highest sequence stored for a rollout (0 when none): a new run continues after it."""
        await self._ensure_ready()
        t = audit_events
        async with self.engine.connect() as conn:
            res = await conn.execute(sa.select(sa.func.max(t.c.seq)).where(t.c.rollout_id == rollout_id))
            value = res.scalar()
            return int(value) if value is not None else 0

    async def rollout_ids(self) -> list[str]:
        await self._ensure_ready()
        t = audit_events
        async with self.engine.connect() as conn:
            res = await conn.execute(sa.select(t.c.rollout_id).distinct().order_by(t.c.rollout_id))
            return [str(x) for x in res.scalars()]

    async def export(self, since: datetime | None = None, batch: int = 500) -> AsyncIterator[AuditRow]:
        """Rows with `at >= since` (all when None), oldest first, streamed in batches."""
        await self._ensure_ready()
        t = audit_events
        q = sa.select(t)
        if since is not None:
            q = q.where(t.c.at >= _utc(since))
        q = q.order_by(t.c.at, t.c.rollout_id, t.c.seq)
        async with self.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=batch))
            async for r in result:
                yield self._to_row(r)

    async def verify(self, rollout_id: str | None = None) -> VerifyReport:
        """Check the hash chain of one rollout (or every rollout); name each first broken row."""
        await self._ensure_ready()
        t = audit_events
        q = sa.select(t)
        if rollout_id is not None:
            q = q.where(t.c.rollout_id == rollout_id)
        q = q.order_by(t.c.rollout_id, t.c.seq, t.c.id)
        report = VerifyReport()
        current: ChainVerifier | None = None
        async with self.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=1000))
            async for r in result:
                row = self._to_row(r)
                if current is None or current.report.rollout_id != row.event.rollout_id:
                    current = ChainVerifier(row.event.rollout_id)
                    report.chains.append(current.report)
                current.feed(row)
        if rollout_id is not None and not report.chains:
            report.chains.append(ChainReport(rollout_id))
        return report

    async def reconcile(self, rollout_id: str, history: Sequence[AuditEvent]) -> ReconcileReport:
        """Write rows missing from the store from `history` (the trail in Temporal history),
        and report every row where the two disagree. Never changes a stored row."""
        report = ReconcileReport(rollout_id, history_events=len(history))
        hist = {e.seq: normalize_event(e) for e in history if e.rollout_id == rollout_id}
        for e in history:
            if e.rollout_id != rollout_id:
                report.disagreements.append(f"history event seq {e.seq} belongs to {e.rollout_id}")
        stored = {r.event.seq: r.event for r in await self.read(rollout_id)}
        missing: list[AuditEvent] = []
        for seq in sorted(hist):
            ev = hist[seq]
            have = stored.get(seq)
            if have is None:
                missing.append(ev)
            elif content_hash(have) == content_hash(ev):
                report.agreeing += 1
            else:
                report.disagreements.append(
                    f"seq {seq}: store differs from history in {', '.join(event_diff(have, ev))}"
                )
        top = max(hist) if hist else 0
        for seq in sorted(stored):
            if seq > top:
                report.disagreements.append(f"seq {seq}: in the store but not in Temporal history")
        # append missing rows in seq order, one at a time so that one blocked row does not hide the rest
        for ev in missing:
            try:
                report.written += await self.append([ev])
            except AuditStoreError as exc:
                report.disagreements.append(f"seq {ev.seq}: not written: {exc}")
        return report


# ---- engine plumbing -------------------------------------------------------------------


def _sqlite_events(engine: AsyncEngine) -> None:
    """SQLite: our own BEGIN (IMMEDIATE for writers, so appends serialise), WAL, busy timeout."""

    @sa_event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 60000")
            cur.execute("PRAGMA journal_mode = WAL")
        finally:
            cur.close()

    @sa_event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("audit_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


_MIGRATE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migrate_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _MIGRATE_LOCKS.get(loop)
    if lock is None:
        lock = _MIGRATE_LOCKS[loop] = asyncio.Lock()
    return lock


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _alembic_upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    rev = ctx.get_current_revision()
    return str(rev) if rev is not None else None
