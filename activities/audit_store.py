"""The audit store: append-only, hash-chained rows, one chain per rollout.

SQLite file by default (`audit.db` in the state directory, rollout.statedir), PostgreSQL via
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

The chain alone cannot show someone who rewrites it from some row to the end
(recomputing every hash), or who deletes the newest rows. So the chain is anchored
outside the database: after each batch `record_head()` stores the head (seq and
row_hash of the batch's last row) in `audit_heads`, signed by the worker's Ed25519
key (`ROLLOUT_AUDIT_KEY`, a private key file as `rollout keygen --out` writes it),
and the `record_audit` activity returns it to the workflow, which keeps it in its
history and `status.audit_head`. `verify()` checks rows and chain, each stored
head's signature against the public half (`ROLLOUT_AUDIT_PUBLIC_KEY`, a file or
the base64 value) and each head against the rows, and, when given (from Temporal
history), the head the workflow holds and the events it recorded. Each fault is
named with its kind (`FAULT_KINDS`) and the first sequence it touches.

The signed message of a head is `rollout-audit-head:v1\n` followed by the
canonical JSON of `[rollout_id, seq, hash]`; `key_id` is the first 16 hex digits
of the SHA-256 of the raw public key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import hashlib
import itertools
import json
import math
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rollout.models import AuditEvent, AuditHead
from rollout.plan import canonical_json
from rollout.statedir import state_dir_from

GENESIS_HASH = "0" * 64
TABLE_NAME = "audit_events"
HEADS_TABLE = "audit_heads"
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
audit_heads = sa.Table(
    HEADS_TABLE,
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.String(255), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text()),
    sa.Column("key_id", sa.String(64)),
    sa.Column("run_id", sa.String(255)),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("rollout_id", "seq", name="uq_audit_heads_rollout_seq"),
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


def _fields_text(ev: AuditEvent) -> str:
    """canonical_json(event_fields(ev)), faster for what verify reads back (a payload already
    plain JSON): no copy of the payload, no strftime. Anything else takes the general path,
    so the text is always the same."""
    at = ev.at
    if at.tzinfo is None or at.utcoffset() or at.year < 1000 or not isinstance(ev.payload, dict):
        return canonical_json(event_fields(ev))
    fields = {
        "rollout_id": ev.rollout_id, "seq": ev.seq,
        "at": f"{at.year:04d}-{at.month:02d}-{at.day:02d}T{at.hour:02d}:{at.minute:02d}:{at.second:02d}"
              f".{at.microsecond:06d}Z",
        "actor": ev.actor, "role": ev.role, "action": ev.action, "stage": ev.stage, "plan_hash": ev.plan_hash,
        "reason": ev.reason, "payload": ev.payload,
    }
    try:  # plain JSON needs no change from _plain_json: dumping it refuses NaN, Infinity and other types
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError):
        return canonical_json(event_fields(ev))


def _stored_fields_text(m: Mapping[Any, Any], at: datetime, payload_text: str) -> str | None:
    """The hashed text of a stored row with its payload spliced in as stored (canonical
    JSON as the store writes it); None when `at` needs the general path."""
    if at.year < 1000:
        return None
    try:
        return (
            f'{{"action":{_json_str(m["action"])},"actor":{_json_str(m["actor"])},"at":"{at.year:04d}-{at.month:02d}-'
            f'{at.day:02d}T{at.hour:02d}:{at.minute:02d}:{at.second:02d}.{at.microsecond:06d}Z",'
            f'"payload":{payload_text},"plan_hash":{_json_str(m["plan_hash"])},"reason":{_json_str(m["reason"])},'
            f'"role":{_json_str(m["role"])},"rollout_id":{_json_str(m["rollout_id"])},"seq":{int(m["seq"])},'
            f'"stage":{_json_str(m["stage"])}}}'
        )
    except TypeError:  # a column that is not text: the general path spells it
        return None


def _json_str(value: str | None) -> str:
    """A string or null as json.dumps(..., ensure_ascii=False) spells it (the C encoder)."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        raise TypeError(f"not text: {type(value).__name__}")
    return _encode_str(value)


_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def event_diff(a: AuditEvent, b: AuditEvent) -> list[str]:
    """Names of the hashed fields that differ between two events."""
    fa, fb = event_fields(a), event_fields(b)
    return [k for k in fa if canonical_json(fa[k]) != canonical_json(fb[k])]


def _stored_event(m: Mapping[Any, Any], at: datetime, payload_text: str) -> AuditEvent:
    """A row read with its payload as text, as an event (verify's general path)."""
    try:
        payload = json.loads(payload_text)
    except ValueError:
        payload = payload_text
    return AuditEvent.model_construct(
        rollout_id=m["rollout_id"], seq=int(m["seq"]), at=at, actor=m["actor"], role=m["role"],
        action=m["action"], stage=m["stage"], plan_hash=m["plan_hash"], reason=m["reason"],
        payload=payload if isinstance(payload, dict) else {"value": payload},
    )


def _slow_text(m: Mapping[Any, Any], at: datetime, payload_text: str) -> Callable[[], str]:
    return lambda: _fields_text(_stored_event(m, at, payload_text))


# ---- heads: the chain anchored outside the database -----------------------------------

HEAD_MESSAGE_VERSION = b"rollout-audit-head:v1\n"
AUDIT_KEY_ENV = "ROLLOUT_AUDIT_KEY"
AUDIT_PUBLIC_KEY_ENV = "ROLLOUT_AUDIT_PUBLIC_KEY"


class AuditKeyError(AuditStoreError):
    """A signing or verifying key that cannot be read."""


def head_message(rollout_id: str, seq: int, head_hash: str) -> bytes:
    """The exact bytes a head's signature covers (see the module docstring)."""
    return HEAD_MESSAGE_VERSION + canonical_json([rollout_id, seq, head_hash]).encode()


def key_id_for(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _key_text(value: str) -> str:
    """The key material in `value`: a file's content when `value` names a file."""
    text = value.strip()
    if text and "\n" not in text and len(text) < 4096:
        path = Path(text).expanduser()
        try:
            if path.is_file():
                return path.read_text().strip()
        except OSError as exc:
            raise AuditKeyError(f"cannot read key file {text}: {exc}") from None
    return text


def load_private_key(path: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from a file: base64 raw (as `rollout keygen --out` writes) or PEM."""
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise AuditKeyError(f"cannot read the audit signing key {path}: {exc}") from None
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 key")
            return key
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise AuditKeyError(f"{path} is not an Ed25519 private key (rollout keygen --out FILE): {exc}") from None


def load_public_key(value: str) -> Ed25519PublicKey:
    """An Ed25519 public key from a value or a file holding it: base64 raw, the
    `public_key: ...` line or JSON `rollout keygen` prints, or PEM."""
    text = _key_text(value)
    try:
        if text.startswith("{"):
            text = str(json.loads(text)["public_key"]).strip()
        elif text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            return key
        if text.startswith("public_key:"):
            text = text.split(":", 1)[1].split()[0]
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.split()[0], validate=True))
    except (ValueError, KeyError, IndexError, binascii.Error) as exc:
        raise AuditKeyError(f"not an Ed25519 public key (base64, as `rollout keygen` prints it): {exc}") from None


@dataclass(frozen=True)
class HeadSigner:
    """The worker's signing key for heads."""

    key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_file(cls, path: str) -> HeadSigner:
        key = load_private_key(path)
        return cls(key, key_id_for(key.public_key()))

    @classmethod
    def from_env(cls) -> HeadSigner | None:
        """The key named by ROLLOUT_AUDIT_KEY; None (unsigned heads) when it is not set."""
        path = os.environ.get(AUDIT_KEY_ENV)
        return cls.from_file(path) if path else None

    def sign(self, rollout_id: str, seq: int, head_hash: str) -> AuditHead:
        sig = self.key.sign(head_message(rollout_id, seq, head_hash))
        return AuditHead(seq=seq, hash=head_hash, signature=base64.b64encode(sig).decode(), key_id=self.key_id)


@dataclass(frozen=True)
class HeadKey:
    """The public half `verify` checks heads with."""

    public: Ed25519PublicKey
    key_id: str

    @classmethod
    def from_value(cls, value: str) -> HeadKey:
        public = load_public_key(value)
        return cls(public, key_id_for(public))

    @classmethod
    def from_env(cls) -> HeadKey | None:
        value = os.environ.get(AUDIT_PUBLIC_KEY_ENV)
        return cls.from_value(value) if value else None

    def fault(self, rollout_id: str, head: AuditHead) -> tuple[str, str] | None:
        """(kind, detail) when `head` is not signed by this key, else None."""
        if not head.signature:
            return "unsigned_head", "the head is not signed (a worker without ROLLOUT_AUDIT_KEY, or a replaced head)"
        if head.key_id and head.key_id != self.key_id:
            return "wrong_key", f"the head is signed by another key (key id {head.key_id}, expected {self.key_id})"
        try:
            self.public.verify(base64.b64decode(head.signature, validate=True), head_message(rollout_id, head.seq, head.hash))
        except (InvalidSignature, ValueError, binascii.Error):
            if not head.key_id:
                return "wrong_key", f"the head's signature does not verify with key {self.key_id} (signed by another key?)"
            return "bad_signature", "the head's signature does not verify (the head was forged or edited)"
        return None

    def faults(self, heads: Sequence[StoredHead]) -> dict[tuple[str, int], tuple[str, str] | None]:
        """`fault` of every head, keyed by (rollout id, seq): checked on a few threads, since
        verifying a signature releases the GIL (10,000 heads: about 1 s on one core)."""
        if not heads:
            return {}
        workers = max(1, min(4, os.cpu_count() or 1, len(heads) // 500))
        size = -(-len(heads) // workers)
        parts = [heads[i : i + size] for i in range(0, len(heads), size)]

        def check(part: Sequence[StoredHead]) -> list[tuple[tuple[str, int], tuple[str, str] | None]]:
            return [((h.rollout_id, h.head.seq), self.fault(h.rollout_id, h.head)) for h in part]

        if len(parts) == 1:
            return dict(check(parts[0]))
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="audit-verify") as pool:
            return dict(itertools.chain.from_iterable(pool.map(check, parts)))


@dataclass(frozen=True)
class StoredHead:
    rollout_id: str
    head: AuditHead
    run_id: str | None = None
    recorded_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "record": "head",
            "rollout_id": self.rollout_id,
            "seq": self.head.seq,
            "hash": self.head.hash,
            "signature": self.head.signature,
            "key_id": self.head.key_id,
            "run_id": self.run_id,
            "recorded_at": _format_at(self.recorded_at) if self.recorded_at else None,
        }


@dataclass
class Anchor:
    """What Temporal history says of a rollout's trail: the head the workflow holds
    (the latest `record_audit` result) and the events it recorded (seq -> content hash)."""

    head: AuditHead | None = None
    events: dict[int, str] = field(default_factory=dict)
    seq_runs: dict[int, str] = field(default_factory=dict)  # seq -> run id that recorded it
    complete: bool = True


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


FAULT_KINDS: dict[str, str] = {
    "edited_row": "a row's content no longer matches its hash",
    "deleted_row": "rows are missing from the chain",
    "truncated_run": "every row of a run is missing",
    "moved_row": "a row is out of sequence or its link to the row before it is broken",
    "recomputed_chain": "rows rewritten and their hashes recomputed: the chain no longer matches a head the workflow or the key vouched for",
    "wrong_key": "a head signed by another key",
    "bad_signature": "a head whose signature does not verify",
    "unsigned_head": "a head without a signature while a public key is configured",
}


@dataclass(frozen=True)
class BrokenRow:
    rollout_id: str
    seq: int  # the first bad or missing seq
    row_id: int | None  # database id of the row found there (None: missing)
    problem: str
    kind: str = "edited_row"  # one of FAULT_KINDS
    seq_end: int | None = None  # the last seq of a missing or suspect range

    def describe(self) -> str:
        where = f"row id {self.row_id}" if self.row_id is not None else "no row"
        span = f"..{self.seq_end}" if self.seq_end is not None and self.seq_end != self.seq else ""
        return f"{self.rollout_id} seq {self.seq}{span} ({where}): {self.kind}: {self.problem}"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "seq_end": self.seq_end,
            "row_id": self.row_id,
            "kind": self.kind,
            "problem": self.problem,
        }


@dataclass
class ChainReport:
    rollout_id: str
    rows: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head_hash: str = GENESIS_HASH
    faults: list[BrokenRow] = field(default_factory=list)
    heads: int = 0
    signed_heads: int = 0
    anchor: AuditHead | None = None
    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def broken(self) -> BrokenRow | None:
        return min(self.faults, key=lambda f: (f.seq, f.kind)) if self.faults else None

    @property
    def ok(self) -> bool:
        return not self.faults


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

    @property
    def unchecked(self) -> list[str]:
        out: list[str] = []
        for c in self.chains:
            out.extend(x for x in c.unchecked if x not in out)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "unchecked": self.unchecked,
            "rollouts": [
                {
                    "rollout_id": c.rollout_id,
                    "rows": c.rows,
                    "first_seq": c.first_seq,
                    "last_seq": c.last_seq,
                    "head_hash": c.head_hash,
                    "heads": c.heads,
                    "signed_heads": c.signed_heads,
                    "workflow_head": None if c.anchor is None else c.anchor.model_dump(mode="json"),
                    "ok": c.ok,
                    "broken": None if c.broken is None else c.broken.to_json(),
                    "faults": [f.to_json() for f in sorted(c.faults, key=lambda f: f.seq)],
                    "checked": c.checked,
                    "unchecked": c.unchecked,
                }
                for c in self.chains
            ],
        }


class ChainVerifier:
    """Feed one rollout's rows in seq order, then `finish(heads)`: checks the chain, the
    stored heads (signatures, hashes), and the workflow's anchor when given.

    `partial=True` (an export cut with --since) accepts a first row after seq 1 and
    takes its prev_hash as given."""

    def __init__(
        self,
        rollout_id: str,
        *,
        key: HeadKey | None = None,
        anchor: Anchor | None = None,
        partial: bool = False,
    ) -> None:
        self.report = ChainReport(rollout_id)
        self.key = key
        self.anchor = anchor
        self.partial = partial
        self._expected_seq = 1
        self._prev_hash = GENESIS_HASH
        self._started = False
        self._chain_fault: BrokenRow | None = None
        self.hashes: dict[int, str] = {}  # seq -> row_hash of rows verified in chain
        self.contents: dict[int, str] = {}  # seq -> content hash (only with an anchor's events)
        self.max_seq = 0

    def _break(self, fault: BrokenRow) -> None:
        self._chain_fault = fault
        self.report.faults.append(fault)

    def feed(self, row: AuditRow) -> None:
        ev = row.event
        self.feed_text(row.id, ev.rollout_id, ev.seq, row.prev_hash, row.row_hash, None, lambda: _fields_text(ev))

    def feed_text(
        self,
        row_id: int,
        rollout_id: str,
        seq: int,
        prev_hash: str,
        row_hash: str,
        fast: str | None,
        slow: Callable[[], str],
    ) -> None:
        """Check one row given the text its hash covers: `fast` (built from the stored
        payload text as it is) when it gives the row's hash, else `slow()` (the fields in
        their canonical form): a stored payload that is not canonical JSON is never blamed
        for its spelling, only for its content."""
        r = self.report
        r.rows += 1
        self.max_seq = max(self.max_seq, seq)
        fast_ok = fast is not None and hashlib.sha256((prev_hash + fast).encode()).hexdigest() == row_hash
        text = fast if fast_ok and fast is not None else slow()
        if self.anchor is not None and self.anchor.events:
            self.contents[seq] = hashlib.sha256(text.encode()).hexdigest()
        if not self._started:
            self._started = True
            r.first_seq = seq
            if self.partial and seq > 1:
                self._expected_seq = seq
                self._prev_hash = prev_hash
        if self._chain_fault is not None:
            return
        if seq != self._expected_seq:
            if seq > self._expected_seq:
                missing = (
                    f"seq {self._expected_seq}"
                    if seq == self._expected_seq + 1
                    else f"seq {self._expected_seq}..{seq - 1}"
                )
                self._break(
                    BrokenRow(
                        rollout_id,
                        self._expected_seq,
                        None,
                        f"row missing ({missing} deleted; next row is seq {seq}, row id {row_id})",
                        "deleted_row",
                        seq - 1,
                    )
                )
            else:
                self._break(BrokenRow(rollout_id, seq, row_id, f"seq {seq} out of order", "moved_row"))
            return
        if prev_hash != self._prev_hash:
            self._break(
                BrokenRow(
                    rollout_id,
                    seq,
                    row_id,
                    "prev_hash does not match the row before it (a row was deleted, replaced or moved)",
                    "moved_row",
                )
            )
            return
        if not fast_ok and hashlib.sha256((prev_hash + text).encode()).hexdigest() != row_hash:
            self._break(
                BrokenRow(
                    rollout_id,
                    seq,
                    row_id,
                    "content does not match its row_hash (the row was edited or moved)",
                    "edited_row",
                )
            )
            return
        self._prev_hash = row_hash
        self._expected_seq += 1
        self.hashes[seq] = row_hash
        r.last_seq = seq
        r.head_hash = row_hash

    # -- after the rows ---------------------------------------------------------------

    def _run_of(self, heads: Sequence[StoredHead]) -> Callable[[int], str | None]:
        runs = self.anchor.seq_runs if self.anchor is not None else {}
        bounds = [(h.head.seq, h.run_id) for h in heads if h.run_id]

        def run_of(seq: int) -> str | None:
            if seq in runs:
                return runs[seq]
            i = bisect.bisect_left(bounds, (seq, ""))
            return bounds[i][1] if i < len(bounds) else None

        return run_of

    def _missing(self, lo: int, hi: int, why: str, run_of: Callable[[int], str | None], last_known: int) -> BrokenRow:
        """A fault for missing seqs lo..hi: a truncated run when a whole run is gone."""
        run = run_of(lo)
        if run is not None and (lo == 1 or run_of(lo - 1) != run):
            run_end = lo
            while run_end < last_known and run_of(run_end + 1) == run:
                run_end += 1
            if run_end <= hi:
                return BrokenRow(
                    self.report.rollout_id, lo, None,
                    f"every row of run {run} is missing (seq {lo}..{run_end}); {why}", "truncated_run", hi,
                )
        return BrokenRow(self.report.rollout_id, lo, None, f"rows seq {lo}..{hi} are missing; {why}", "deleted_row", hi)

    def finish(
        self,
        heads: Sequence[StoredHead] = (),
        signature_faults: Mapping[tuple[str, int], tuple[str, str] | None] | None = None,
    ) -> ChainReport:
        """`signature_faults`: `HeadKey.faults` of these heads, when already checked."""
        r = self.report
        rid = r.rollout_id
        heads = sorted(heads, key=lambda h: h.head.seq)
        r.heads = len(heads)
        r.signed_heads = sum(1 for h in heads if h.head.signature)
        anchor_head = self.anchor.head if self.anchor is not None else None
        r.anchor = anchor_head
        last_known = max([self.max_seq, *(h.head.seq for h in heads), anchor_head.seq if anchor_head else 0,
                          *(self.anchor.seq_runs if self.anchor else {})])
        run_of = self._run_of(heads)
        # a gap inside the rows: a whole run gone?
        if self._chain_fault is not None and self._chain_fault.kind == "deleted_row":
            f = self._chain_fault
            refined = self._missing(f.seq, f.seq_end or f.seq, "the chain has a gap", run_of, last_known)
            if refined.kind == "truncated_run":
                r.faults[r.faults.index(f)] = BrokenRow(rid, f.seq, None, f"{refined.problem} ({f.problem})",
                                                        "truncated_run", f.seq_end)
        good = r.last_seq
        # stored heads: signatures, then hashes
        forged: set[int] = set()  # heads the key does not vouch for: they say nothing of the rows
        if self.key is not None:
            if signature_faults is None:
                signature_faults = self.key.faults(heads)
            for h in heads:
                bad = signature_faults[(rid, h.head.seq)]
                if bad is not None:
                    if not forged:
                        r.faults.append(
                            BrokenRow(rid, h.head.seq, None, f"head at seq {h.head.seq}: {bad[1]}", bad[0])
                        )
                    forged.add(h.head.seq)
            r.checked.append(f"head signatures with key {self.key.key_id}")
        elif heads:
            r.unchecked.append(
                f"head signatures: no public key (set {AUDIT_PUBLIC_KEY_ENV} or pass --public-key); "
                "a chain recomputed by someone with database access would pass"
            )
        if not heads:
            r.unchecked.append("no stored heads: the chain is not anchored in the store (rows written before heads existed, or heads removed)")
        prev_ok = 0
        for h in heads:
            if h.head.seq > self.max_seq:
                r.faults.append(
                    self._missing(self.max_seq + 1, max(x.head.seq for x in heads),
                                  f"the stored head at seq {h.head.seq} vouches for them", run_of, last_known)
                )
                break
            if h.head.seq > good:
                break
            if h.head.seq in forged:
                continue
            if self.hashes.get(h.head.seq) != h.head.hash:
                r.faults.append(
                    BrokenRow(
                        rid, prev_ok + 1, None,
                        f"the chain no longer matches the head at seq {h.head.seq} "
                        f"({'signed, ' + (h.head.key_id or '') if h.head.signature else 'unsigned'}): "
                        f"a row in seq {prev_ok + 1}..{h.head.seq} was rewritten and the hashes after it recomputed",
                        "recomputed_chain", h.head.seq,
                    )
                )
                break
            prev_ok = h.head.seq
        if heads:
            r.checked.append(f"{len(heads)} stored heads against the rows")
        # the workflow's own record
        if self.anchor is None:
            return r
        if anchor_head is not None:
            if self.key is not None and anchor_head.signature:
                bad = self.key.fault(rid, anchor_head)
                if bad is not None:
                    r.faults.append(BrokenRow(rid, anchor_head.seq, None, f"the workflow's head: {bad[1]}", bad[0]))
            if anchor_head.seq > self.max_seq:
                r.faults.append(
                    self._missing(self.max_seq + 1, anchor_head.seq,
                                  f"the workflow's head (Temporal history) is at seq {anchor_head.seq}", run_of, last_known)
                )
            elif anchor_head.seq <= good and self.hashes.get(anchor_head.seq) != anchor_head.hash:
                r.faults.append(
                    BrokenRow(rid, prev_ok + 1, None,
                              f"the chain no longer matches the workflow's head at seq {anchor_head.seq} "
                              "(Temporal history): rows were rewritten and the hashes recomputed",
                              "recomputed_chain", anchor_head.seq)
                )
            r.checked.append(f"the workflow's head at seq {anchor_head.seq} (Temporal history)")
        else:
            r.unchecked.append("the workflow's head: none in Temporal history (the workflow keeps none yet)")
        for seq in sorted(self.anchor.events):
            have = self.contents.get(seq)
            if have is None or have == self.anchor.events[seq]:
                continue
            in_chain = seq in self.hashes
            r.faults.append(
                BrokenRow(
                    rid, seq, None,
                    "the row differs from the event the workflow recorded (Temporal history)"
                    + ("; the hashes after it were recomputed" if in_chain else ""),
                    "recomputed_chain" if in_chain else "edited_row",
                )
            )
            break
        if self.anchor.events:
            r.checked.append(f"{len(self.anchor.events)} rows against Temporal history")
        if not self.anchor.complete:
            r.unchecked.append("older runs are past Temporal's retention: their rows checked against heads only")
        return r


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
    state = state_dir_from(os.environ, Path.home())  # one place, whatever the working directory
    return f"sqlite+aiosqlite:///{state.absolute() / 'audit.db'}"


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
        # SQLite has one writer: writers of this process take turns here, in order, instead of
        # holding pooled connections while SQLite makes them wait (under load they timed out
        # after 30 s and were retried, each holding an activity slot: bench/README.md)
        self._sqlite_writes = asyncio.Lock() if self.dialect == "sqlite" else None

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

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """This process's turn to write (SQLite); PostgreSQL writers run side by side."""
        if self._sqlite_writes is None:
            yield
            return
        async with self._sqlite_writes:
            yield

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
                    async with self._turn():
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

    async def verify(
        self,
        rollout_id: str | None = None,
        *,
        key: HeadKey | None = None,
        anchors: Mapping[str, Anchor] | None = None,
    ) -> VerifyReport:
        """Check one rollout (or every rollout): rows and hash chain, stored heads (their
        signatures with `key`, their hashes against the rows) and, for rollouts in
        `anchors`, the workflow's head and recorded events. Names each first fault."""
        await self._ensure_ready()
        anchors = anchors or {}
        t = audit_events
        columns = [c for c in t.c if c.name not in ("payload", "recorded_at")]
        q = sa.select(*columns, sa.cast(t.c.payload, sa.Text()).label("payload_text"))
        if rollout_id is not None:
            q = q.where(t.c.rollout_id == rollout_id)
        q = q.order_by(t.c.rollout_id, t.c.seq, t.c.id)
        heads = await self.heads(rollout_id)
        by_rollout: dict[str, list[StoredHead]] = {}
        for h in heads:
            by_rollout.setdefault(h.rollout_id, []).append(h)
        # signatures are checked on other threads while the rows stream in
        signatures = asyncio.ensure_future(asyncio.to_thread(key.faults, heads)) if key is not None else None
        verifiers: dict[str, ChainVerifier] = {}
        current: ChainVerifier | None = None
        async with self.engine.connect() as conn:
            result = await conn.stream(q.execution_options(yield_per=5000))
            async for part in result.partitions():
                for r in part:
                    m = r._mapping
                    rid = m["rollout_id"]
                    if current is None or current.report.rollout_id != rid:
                        current = verifiers[rid] = ChainVerifier(rid, key=key, anchor=anchors.get(rid))
                    at, raw = _utc(m["at"]), m["payload_text"]
                    text = raw if isinstance(raw, str) else canonical_json(raw)
                    current.feed_text(
                        int(m["id"]), rid, int(m["seq"]), m["prev_hash"], m["row_hash"],
                        _stored_fields_text(m, at, text) if isinstance(raw, str) else None,
                        _slow_text(m, at, text),
                    )
        wanted = set(by_rollout) | {a for a in anchors if rollout_id is None or a == rollout_id}
        if rollout_id is not None:
            wanted.add(rollout_id)
        for rid in sorted(wanted - set(verifiers)):  # heads or history but no rows at all
            verifiers[rid] = ChainVerifier(rid, key=key, anchor=anchors.get(rid))
        signature_faults = await signatures if signatures is not None else None
        report = VerifyReport()
        for rid in sorted(verifiers):
            report.chains.append(verifiers[rid].finish(by_rollout.get(rid, []), signature_faults))
        return report

    # -- heads ------------------------------------------------------------------------

    async def record_head(
        self, rollout_id: str, seq: int, signer: HeadSigner | None = None, run_id: str | None = None
    ) -> AuditHead:
        """Store (once) and return the head of `rollout_id`'s chain at `seq`, signed when
        there is a signer. A head already stored for that seq is returned as stored."""
        await self._ensure_ready()
        t, h = audit_events, audit_heads
        for attempt in range(5):
            try:
                async with self._turn(), self._writer.begin() as conn:
                    if self.dialect == "postgresql":
                        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_advisory_key(rollout_id))))
                    row_hash = (
                        await conn.execute(
                            sa.select(t.c.row_hash).where(t.c.rollout_id == rollout_id, t.c.seq == seq)
                        )
                    ).scalar_one_or_none()
                    if row_hash is None:
                        raise AuditStoreError(f"no row {seq} of {rollout_id} to take a head at")
                    have = (
                        await conn.execute(sa.select(h).where(h.c.rollout_id == rollout_id, h.c.seq == seq))
                    ).first()
                    if have is not None:
                        stored = self._to_head(have)
                        if stored.head.hash != row_hash:
                            raise AuditConflictError(rollout_id, seq, "the stored head has another hash")
                        return stored.head
                    head = signer.sign(rollout_id, seq, row_hash) if signer else AuditHead(seq=seq, hash=row_hash)
                    await conn.execute(
                        h.insert().values(
                            rollout_id=rollout_id,
                            seq=seq,
                            hash=head.hash,
                            signature=head.signature,
                            key_id=head.key_id,
                            run_id=run_id,
                            recorded_at=datetime.now(UTC),
                        )
                    )
                    return head
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _to_head(r: sa.Row[Any]) -> StoredHead:
        m = r._mapping
        return StoredHead(
            rollout_id=m["rollout_id"],
            head=AuditHead(seq=int(m["seq"]), hash=m["hash"], signature=m["signature"], key_id=m["key_id"]),
            run_id=m["run_id"],
            recorded_at=_utc(m["recorded_at"]),
        )

    async def heads(self, rollout_id: str | None = None) -> list[StoredHead]:
        """Stored heads of one rollout (or all), by rollout and seq."""
        await self._ensure_ready()
        h = audit_heads
        q = sa.select(h)
        if rollout_id is not None:
            q = q.where(h.c.rollout_id == rollout_id)
        async with self.engine.connect() as conn:
            res = await conn.execute(q.order_by(h.c.rollout_id, h.c.seq))
            return [self._to_head(r) for r in res]

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


# ---- exports ---------------------------------------------------------------------------


def verify_export(
    lines: Iterable[str], *, key: HeadKey | None = None, rollout_id: str | None = None
) -> VerifyReport:
    """Check an export (`rollout audit export`: JSON Lines of rows and heads) offline.

    Rows are checked link by link from seq 1 of each rollout, or, in an export cut
    with --since (its first line says so), from the first exported row; the heads
    against the rows and, with `key`, their signatures."""
    rows: dict[str, list[AuditRow]] = {}
    heads: dict[str, list[StoredHead]] = {}
    event_keys = set(AuditEvent.model_fields)
    partial = False
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            kind = data.get("record", "row")
            if kind == "export":
                partial = partial or data.get("since") is not None
                continue
            if kind == "head":
                h = StoredHead(
                    rollout_id=str(data["rollout_id"]),
                    head=AuditHead(
                        seq=data["seq"], hash=data["hash"], signature=data.get("signature"), key_id=data.get("key_id")
                    ),
                    run_id=data.get("run_id"),
                )
                if rollout_id is None or h.rollout_id == rollout_id:
                    heads.setdefault(h.rollout_id, []).append(h)
                continue
            ev = AuditEvent.model_validate({k: v for k, v in data.items() if k in event_keys})
            row = AuditRow(
                int(data.get("id") or 0),
                normalize_event(ev),
                str(data["prev_hash"]),
                str(data["row_hash"]),
                _utc(datetime.fromisoformat(str(data.get("recorded_at") or data["at"]).replace("Z", "+00:00"))),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AuditStoreError(f"line {n} is not an audit export record: {exc}") from None
        if rollout_id is None or ev.rollout_id == rollout_id:
            rows.setdefault(ev.rollout_id, []).append(row)
    report = VerifyReport()
    for rid in sorted(set(rows) | set(heads)):
        verifier = ChainVerifier(rid, key=key, partial=partial)
        for row in sorted(rows.get(rid, []), key=lambda r: (r.event.seq, r.id)):
            verifier.feed(row)
        chain = verifier.finish(heads.get(rid, []))
        if chain.first_seq > 1:
            chain.unchecked.append(f"rows before seq {chain.first_seq} (not in this export)")
        report.chains.append(chain)
    if rollout_id is not None and not report.chains:
        report.chains.append(ChainReport(rollout_id))
    return report
