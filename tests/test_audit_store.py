"""The audit store on SQLite and PostgreSQL: append, idempotency, concurrency, chains, tampering."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from activities.audit_store import (
    GENESIS_HASH,
    AuditConflictError,
    AuditGapError,
    AuditStore,
    chain_hash,
    normalize_url,
)
from tests.audit_support import T0, make_event, make_events, store_url_for, tamper


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[str]:
    async with store_url_for(request.param, tmp_path, pg_url) as u:
        yield u


@pytest.fixture
async def store(url: str) -> AsyncIterator[AuditStore]:
    s = AuditStore.from_url(url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


RID = "rollout-support-agent"


async def test_append_and_read_round_trip(store: AuditStore) -> None:
    events = make_events(RID, 4)
    events.append(make_event(RID, 5, actor=None, role=None, stage=None, reason=None, payload={}))
    assert await store.append(events) == 5
    rows = await store.read(RID)
    assert [r.event for r in rows] == events
    assert rows[0].prev_hash == GENESIS_HASH
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.row_hash
        assert row.row_hash == chain_hash(row.prev_hash, row.event)
    assert (await store.verify(RID)).ok


async def test_append_is_idempotent_on_rollout_and_seq(store: AuditStore) -> None:
    events = make_events(RID, 6)
    assert await store.append(events[:3]) == 3
    assert await store.append(events) == 3  # only 4..6 are new
    assert await store.append(events) == 0
    assert await store.append(reversed(events)) == 0  # order within a batch does not matter
    assert [r.event.seq for r in await store.read(RID)] == [1, 2, 3, 4, 5, 6]


async def test_same_seq_with_other_content_is_refused(store: AuditStore) -> None:
    await store.append(make_events(RID, 2))
    with pytest.raises(AuditConflictError, match=r"seq 2 .*differs in reason"):
        await store.append([make_event(RID, 2, reason="something else")])
    assert [r.event.reason for r in await store.read(RID)] == ["decision 1", "decision 2"]


async def test_a_row_after_a_missing_one_is_refused(store: AuditStore) -> None:
    await store.append(make_events(RID, 2))
    with pytest.raises(AuditGapError, match="no row 3"):
        await store.append([make_event(RID, 4)])
    with pytest.raises(AuditGapError):
        await store.append([make_event("rollout-other", 2)])
    assert len(await store.read(RID)) == 2


async def test_concurrent_appends_neither_duplicate_nor_lose_rows(store: AuditStore, url: str) -> None:
    """Like retries racing on several workers: overlapping batches from many tasks and engines."""
    other = AuditStore.from_url(url)  # a second engine: another worker process
    try:
        rng = random.Random(7)
        ids = [f"{RID}-{k}" for k in range(3)]
        full = {rid: make_events(rid, 40) for rid in ids}
        jobs = []
        for i in range(24):
            rid = ids[i % len(ids)]
            n = rng.randint(1, 40)
            batch = full[rid][:n]
            rng.shuffle(batch)
            jobs.append((store if i % 2 else other).append(batch))
        jobs += [store.append(full[rid]) for rid in ids]
        written = await asyncio.gather(*jobs)
        assert sum(written) == 3 * 40
        for rid in ids:
            assert [r.event for r in await store.read(rid)] == full[rid]
        report = await store.verify()
        assert report.ok and [c.rows for c in report.chains] == [40, 40, 40]
    finally:
        await other.close()


async def test_verify_names_no_row_when_intact(store: AuditStore) -> None:
    assert (await store.verify()).ok
    await store.append(make_events(RID, 3))
    await store.append(make_events("rollout-b", 2))
    report = await store.verify()
    assert report.ok
    assert {(c.rollout_id, c.rows, c.last_seq) for c in report.chains} == {("rollout-b", 2, 2), (RID, 3, 3)}
    assert report.first_broken is None


async def _ids(store: AuditStore) -> dict[int, int]:
    return {r.event.seq: r.id for r in await store.read(RID)}


async def test_edited_row_is_detected(store: AuditStore, url: str) -> None:
    await store.append(make_events(RID, 6))
    await store.append(make_events("rollout-untouched", 3))
    ids = await _ids(store)
    await tamper(url, f"UPDATE audit_events SET reason = 'nothing to see' WHERE id = {ids[4]}")  # noqa: S608
    report = await store.verify()
    broken = report.first_broken
    assert not report.ok and broken is not None
    assert (broken.rollout_id, broken.seq, broken.row_id) == (RID, 4, ids[4])
    assert "edited" in broken.problem
    assert {c.rollout_id: c.ok for c in report.chains} == {RID: False, "rollout-untouched": True}


async def test_edited_payload_is_detected(store: AuditStore, url: str) -> None:
    await store.append(make_events(RID, 3))
    ids = await _ids(store)
    await tamper(url, f"""UPDATE audit_events SET payload = '{{"n": 2}}' WHERE id = {ids[2]}""")  # noqa: S608
    broken = (await store.verify(RID)).first_broken
    assert broken is not None and broken.seq == 2


async def test_deleted_row_is_detected(store: AuditStore, url: str) -> None:
    await store.append(make_events(RID, 6))
    ids = await _ids(store)
    await tamper(url, f"DELETE FROM audit_events WHERE id = {ids[3]}")  # noqa: S608
    broken = (await store.verify(RID)).first_broken
    assert broken is not None
    assert (broken.seq, broken.row_id) == (3, None)
    assert "missing" in broken.problem and f"row id {ids[4]}" in broken.problem


async def test_deleted_first_row_is_detected(store: AuditStore, url: str) -> None:
    await store.append(make_events(RID, 3))
    await tamper(url, f"DELETE FROM audit_events WHERE rollout_id = '{RID}' AND seq = 1")  # noqa: S608
    broken = (await store.verify(RID)).first_broken
    assert broken is not None and broken.seq == 1


async def test_deleted_and_renumbered_rows_are_detected(store: AuditStore, url: str) -> None:
    """Deleting a row and closing the gap by renumbering breaks the chain at the gap."""
    await store.append(make_events(RID, 5))
    await tamper(
        url,
        f"DELETE FROM audit_events WHERE rollout_id = '{RID}' AND seq = 3",  # noqa: S608
        f"UPDATE audit_events SET seq = seq - 1 WHERE rollout_id = '{RID}' AND seq = 4",  # noqa: S608
        f"UPDATE audit_events SET seq = seq - 1 WHERE rollout_id = '{RID}' AND seq = 5",  # noqa: S608
    )
    broken = (await store.verify(RID)).first_broken
    assert broken is not None and broken.seq == 3


async def test_reordered_rows_are_detected(store: AuditStore, url: str) -> None:
    await store.append(make_events(RID, 6))
    ids = await _ids(store)
    await tamper(
        url,
        f"UPDATE audit_events SET seq = -1 WHERE id = {ids[3]}",  # noqa: S608
        f"UPDATE audit_events SET seq = 3 WHERE id = {ids[4]}",  # noqa: S608
        f"UPDATE audit_events SET seq = 4 WHERE id = {ids[3]}",  # noqa: S608
    )
    broken = (await store.verify(RID)).first_broken
    assert broken is not None
    assert (broken.seq, broken.row_id) == (3, ids[4])


async def test_table_refuses_update_and_delete(store: AuditStore) -> None:
    await store.append(make_events(RID, 2))
    for statement in ("UPDATE audit_events SET reason = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with store.engine.begin() as conn:
                await conn.execute(sa.text(statement))
    assert (await store.verify(RID)).ok and len(await store.read(RID)) == 2


async def test_migrations_are_idempotent_and_concurrent(url: str) -> None:
    stores = [AuditStore.from_url(url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        await stores[0].migrate()
        assert await stores[1].schema_revision() == "0002"
        await stores[2].append(make_events(RID, 2))
        await stores[0].migrate()  # upgrading an up-to-date store keeps its rows
        assert len(await stores[0].read(RID)) == 2
    finally:
        for s in stores:
            await s.close()


async def test_first_use_migrates_lazily(url: str) -> None:
    s = AuditStore.from_url(url)
    try:
        assert await s.append(make_events(RID, 1)) == 1
        assert await s.schema_revision() == "0002"
    finally:
        await s.close()


async def test_export_since_streams_rows_in_time_order(store: AuditStore) -> None:
    await store.append(make_events(RID, 5))  # at T0 + 1..5 min
    await store.append(make_events("rollout-b", 2))
    everything = [r async for r in store.export()]
    assert len(everything) == 7
    assert [r.event.at for r in everything] == sorted(r.event.at for r in everything)
    recent = [r async for r in store.export(T0 + timedelta(minutes=4))]
    assert [(r.event.rollout_id, r.event.seq) for r in recent] == [(RID, 4), (RID, 5)]
    line = recent[0].to_json()
    assert line["row_hash"] == recent[0].row_hash and line["at"] == "2025-03-01T09:04:00.123456Z"


async def test_payload_values_keep_their_hash(store: AuditStore) -> None:
    odd = {"nan": float("nan"), "big": 1e300, "small": 1e-12, "int": 2**53 + 1, "s": "a\u2028b", "empty": {}}
    await store.append([make_event(RID, 1, payload=odd)])
    (row,) = await store.read(RID)
    assert row.event.payload["nan"] == "NaN" and row.event.payload["big"] == 1e300
    assert row.event.payload["int"] == 2**53 + 1
    assert (await store.verify(RID)).ok
    assert await store.append([make_event(RID, 1, payload=odd)]) == 0  # a retry still matches


async def test_reconcile_writes_missing_rows_and_reports_disagreements(store: AuditStore, url: str) -> None:
    history = make_events(RID, 6)
    await store.append(history[:2])
    report = await store.reconcile(RID, history)
    assert (report.written, report.agreeing, report.ok) == (4, 2, True)
    assert [r.event for r in await store.read(RID)] == history
    ids = await _ids(store)
    await tamper(url, f"UPDATE audit_events SET actor = 'mallory@example.com' WHERE id = {ids[5]}")  # noqa: S608
    again = await store.reconcile(RID, history)
    assert again.written == 0 and not again.ok
    assert again.disagreements == ["seq 5: store differs from history in actor"]


def test_url_normalisation() -> None:
    assert normalize_url("postgresql://u@h:5432/db") == "postgresql+asyncpg://u@h:5432/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("sqlite:///x/audit.db") == "sqlite+aiosqlite:///x/audit.db"
    assert normalize_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalize_url("state/audit.db") == "sqlite+aiosqlite:///state/audit.db"


async def test_from_env_defaults_to_sqlite_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROLLOUT_DB_URL", raising=False)
    monkeypatch.setenv("ROLLOUT_STATE_DIR", str(tmp_path / "state"))
    s = AuditStore.from_env()
    try:
        assert s.dialect == "sqlite"
        await s.append(make_events(RID, 1))
    finally:
        await s.close()
    assert (tmp_path / "state" / "audit.db").exists()


@pytest.mark.parametrize("text", ["plain", "é ü 日本", "quote\" back\\slash", "ctl\x01\x1f\t\n", "sep\u2028\u2029", "😀", ""])
def test_verify_fast_text_is_the_canonical_hashed_text(text: str) -> None:
    from activities.audit_store import _stored_fields_text, event_fields
    from rollout.plan import canonical_json

    ev = make_event(RID, 7, payload={"k": text}).model_copy(update={"actor": text, "reason": text, "stage": text})
    fields = event_fields(ev)
    row = {**fields, "seq": ev.seq}
    assert _stored_fields_text(row, ev.at, canonical_json(fields["payload"])) == canonical_json(fields)
    assert _stored_fields_text({**row, "role": None, "reason": None}, ev.at, "{}") == canonical_json(
        {**fields, "role": None, "reason": None, "payload": {}})


async def test_verify_checks_every_signature_when_heads_span_threads(store: AuditStore) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from activities.audit_store import HeadKey, HeadSigner, key_id_for

    private, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signer = HeadSigner(private, key_id_for(private.public_key()))
    forger = HeadSigner(other, signer.key_id)  # claims the right key id
    await store.append(make_events(RID, 1100))
    for seq in range(1, 1101):
        await store.record_head(RID, seq, forger if seq == 900 else signer)
    report = await store.verify(RID, key=HeadKey(private.public_key(), signer.key_id))
    chain = report.chains[0]
    assert chain.signed_heads == 1100
    assert [(f.seq, f.kind) for f in chain.faults] == [(900, "bad_signature")]
