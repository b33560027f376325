"""The audit chain anchored outside the database, on SQLite and PostgreSQL.

Each fault is made the way a database administrator would make it: past the
append-only triggers (tests/audit_support.tamper), rows rewritten and every hash
after them recomputed with the project's own hash function (rewrite_and_rehash),
the newest rows deleted together with their heads, a run's rows removed, heads
replaced by ones signed with another key. Heads are written the way the
`record_audit` activity writes them (store.record_head with a HeadSigner on a key
made by `rollout keygen`). Each fault is caught by the store's verify and by
`rollout audit verify` (exit 1, naming the sequence and the kind of fault).
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.audit import AuditActivities
from activities.audit_store import Anchor, AuditStore, HeadKey, HeadSigner, VerifyReport
from activities.history_trail import HistoryTrail
from cli.main import main
from rollout.models import AuditBatch, AuditEvent, AuditHead
from tests.audit_support import PLAN_HASH, cli, make_events, rewrite_and_rehash, store_url_for, tamper

RID = "rollout-support-agent"
PER_BATCH = 3
RUNS = ("run-1", "run-2", "run-3")  # a continue-as-new chain: two batches per run


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    async with store_url_for(request.param, tmp_path, pg_url) as u:
        monkeypatch.setenv("ROLLOUT_DB_URL", u)
        monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")  # no Temporal unless a test says so
        monkeypatch.delenv("ROLLOUT_AUDIT_PUBLIC_KEY", raising=False)
        monkeypatch.delenv("ROLLOUT_AUDIT_KEY", raising=False)
        yield u


@pytest.fixture
async def store(url: str) -> AsyncIterator[AuditStore]:
    s = AuditStore.from_url(url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


@dataclass
class Key:
    private: Path  # as `rollout keygen --out` writes it
    public: Path  # the public half, as keygen printed it
    signer: HeadSigner
    head_key: HeadKey


def keygen(tmp_path: Path, name: str) -> Key:
    """A key pair made by `rollout keygen`, its public half kept in a file."""
    private = tmp_path / f"{name}.key"
    out = run_cli_sync("keygen", "--as", f"{name}@example.com", "--out", str(private), "--json")
    public = tmp_path / f"{name}.pub"
    public.write_text(json.loads(out)["public_key"] + "\n")
    return Key(private, public, HeadSigner.from_file(str(private)), HeadKey.from_value(str(public)))


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return keygen(tmp_path, "worker")


def run_cli_sync(*argv: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(argv))
    assert code == 0, (argv, buf.getvalue())
    return buf.getvalue()



# ---- a trail written the way the workflow writes it ---------------------------------------


@dataclass
class Trail:
    events: list[AuditEvent]
    heads: list[AuditHead]  # what each record_audit returned, oldest first
    trail: HistoryTrail  # what Temporal history would hold

    def anchor(self) -> Anchor:
        """The Anchor `anchor_from_history` builds: the newest head, every event, their runs."""
        return self.trail.anchor()


async def write_trail(store: AuditStore, signer: HeadSigner | None, batches: int = 6) -> Trail:
    """`batches` batches of PER_BATCH rows, a head after each (two batches per run)."""
    events = make_events(RID, batches * PER_BATCH)
    heads: list[AuditHead] = []
    trail = HistoryTrail(RID)
    for b in range(batches):
        run = RUNS[b // 2]
        batch = events[b * PER_BATCH : (b + 1) * PER_BATCH]
        await store.append(batch)
        heads.append(await store.record_head(RID, batch[-1].seq, signer, run_id=run))
        trail.events.extend(batch)
        if run not in trail.run_ids:
            trail.run_ids.append(run)
        trail.seq_runs.update({e.seq: run for e in batch})
    trail.head = heads[-1]
    return Trail(events, heads, trail)


def only_fault(report: VerifyReport) -> tuple[int, str, int | None]:
    """(seq, kind, seq_end) of the first fault; asserts the report failed."""
    assert not report.ok, "verify passed a tampered store"
    first = report.first_broken
    assert first is not None
    return first.seq, first.kind, first.seq_end


async def ids_by_seq(store: AuditStore) -> dict[int, int]:
    return {r.event.seq: r.id for r in await store.read(RID)}


def where(ids: dict[int, int], seqs: range) -> str:
    return "id IN (" + ", ".join(str(ids[s]) for s in seqs) + ")"


async def verify_cli(capsys: pytest.CaptureFixture[str], key: Key | None, *extra: str) -> tuple[int, str, str]:
    argv = ["audit", "verify", RID, *extra]
    if key is not None:
        argv += ["--public-key", str(key.public)]
    return await cli(capsys, *argv)


# ---- intact -----------------------------------------------------------------------------


async def test_intact_signed_trail_passes_the_store_verify_and_the_cli(
    store: AuditStore, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    t = await write_trail(store, key.signer)
    report = await store.verify(RID, key=key.head_key, anchors={RID: t.anchor()})
    assert report.ok and report.chains[0].rows == 18 and report.chains[0].signed_heads == 6
    code, out, err = await verify_cli(capsys, key)
    assert code == 0, out + err
    assert f"ok      {RID}: 18 rows, seq 1..18, 6 heads (6 signed)" in out
    assert f"checked: head signatures with key {key.head_key.key_id}" in out
    # without Temporal the workflow's head is the one thing it could not check, and it says so
    assert "NOT CHECKED: the workflow's head: cannot reach Temporal" in out
    assert "the newest rows deleted together with their heads would not be caught" in out


# ---- each fault, the way an administrator would make it -----------------------------------


async def test_edited_row_past_the_triggers_is_named(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    await tamper(url, f"UPDATE audit_events SET reason = 'approved by nobody' WHERE id = {ids[8]}")  # noqa: S608
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (8, "edited_row")
    code, out, err = await verify_cli(capsys, key)
    assert code == 1
    assert f"first broken row: {RID} seq 8 (row id {ids[8]}): edited_row:" in out
    assert "seq 8" in err and "edited_row" in err


async def test_rows_rewritten_and_rehashed_are_caught_by_the_stored_heads(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    await rewrite_and_rehash(url, RID, 5, reason="nothing happened here")
    # the chain itself is consistent again: only the heads can tell
    rows = await store.read(RID)
    assert rows[4].event.reason == "nothing happened here"
    # the first head after the rewrite (seq 6) no longer matches: the fault spans 4..6
    assert only_fault(await store.verify(RID, key=key.head_key)) == (4, "recomputed_chain", 6)
    code, out, err = await verify_cli(capsys, key)
    assert code == 1
    assert f"first broken row: {RID} seq 4..6 (no row): recomputed_chain:" in out
    assert "the chain no longer matches the head at seq 6" in out
    assert "seq 4..6" in err and "recomputed_chain" in err


async def test_a_chain_recomputed_without_the_key_is_caught_by_the_head_signatures(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    t = await write_trail(store, key.signer)
    await rewrite_and_rehash(url, RID, 11, actor="mallory@example.com")
    # ...and the heads rewritten to match the new hashes: without the key, the old signatures stay
    rows = {r.event.seq: r for r in await store.read(RID)}
    await tamper(
        url,
        *(
            f"UPDATE audit_heads SET hash = '{rows[h.seq].row_hash}' WHERE rollout_id = '{RID}' AND seq = {h.seq}"  # noqa: S608
            for h in t.heads
            if h.seq >= 11
        ),
    )
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (12, "bad_signature")
    code, out, err = await verify_cli(capsys, key)
    assert code == 1
    assert f"first broken row: {RID} seq 12 (no row): bad_signature: head at seq 12:" in out
    assert "seq 12" in err and "bad_signature" in err
    # the workflow's head (Temporal history) catches it too, from the first rewritten row
    report = await store.verify(RID, anchors={RID: t.anchor()})
    assert only_fault(report)[:2] == (11, "recomputed_chain")


async def test_heads_replaced_by_unsigned_ones_are_caught(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    await rewrite_and_rehash(url, RID, 16, reason="quiet")
    rows = {r.event.seq: r for r in await store.read(RID)}
    await tamper(
        url,
        f"UPDATE audit_heads SET hash = '{rows[18].row_hash}', signature = NULL, key_id = NULL "  # noqa: S608
        f"WHERE rollout_id = '{RID}' AND seq = 18",
    )
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (18, "unsigned_head")
    code, out, _ = await verify_cli(capsys, key)
    assert code == 1 and "seq 18 (no row): unsigned_head:" in out


async def test_heads_signed_by_another_key_are_caught(
    store: AuditStore, url: str, key: Key, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The administrator rewrites rows, recomputes the chain and signs new heads with a key of their own."""
    t = await write_trail(store, key.signer)
    rogue = keygen(tmp_path, "rogue")
    await rewrite_and_rehash(url, RID, 2, payload={"n": 2, "forged": True})
    rows = {r.event.seq: r for r in await store.read(RID)}
    statements = []
    for h in t.heads:
        forged = rogue.signer.sign(RID, h.seq, rows[h.seq].row_hash)
        statements.append(
            f"UPDATE audit_heads SET hash = '{forged.hash}', signature = '{forged.signature}', "  # noqa: S608
            f"key_id = '{forged.key_id}' WHERE rollout_id = '{RID}' AND seq = {h.seq}"
        )
    await tamper(url, *statements)
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (3, "wrong_key")
    # a forger who also blanks key_id is still caught: the signature does not verify with our key
    await tamper(url, f"UPDATE audit_heads SET key_id = NULL WHERE rollout_id = '{RID}'")  # noqa: S608
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (3, "wrong_key")
    code, out, err = await verify_cli(capsys, key)
    assert code == 1
    assert f"seq 3 (no row): wrong_key: head at seq 3: the head's signature does not verify with key {key.head_key.key_id}" in out
    assert "wrong_key" in err
    # with the rogue's public key instead, the heads verify: the key is what an auditor must get right
    code, _, _ = await verify_cli(capsys, rogue)
    assert code == 0


async def test_a_deleted_row_in_the_middle_is_named(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    await tamper(url, f"DELETE FROM audit_events WHERE id = {ids[10]}")  # noqa: S608
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (10, "deleted_row")
    code, out, err = await verify_cli(capsys, key)
    assert code == 1 and f"{RID} seq 10 (no row): deleted_row: row missing" in out and "seq 10" in err


async def test_newest_rows_deleted_but_their_heads_kept_are_named(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    await tamper(url, f"DELETE FROM audit_events WHERE {where(ids, range(17, 19))}")  # noqa: S608
    assert only_fault(await store.verify(RID, key=key.head_key)) == (17, "deleted_row", 18)
    code, out, _ = await verify_cli(capsys, key)
    assert code == 1 and f"{RID} seq 17..18 (no row): deleted_row:" in out
    assert "the stored head at seq 18 vouches for them" in out


async def test_newest_rows_deleted_with_their_heads_are_caught_only_against_the_workflows_head(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    t = await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    await tamper(
        url,
        f"DELETE FROM audit_events WHERE {where(ids, range(14, 19))}",  # noqa: S608
        f"DELETE FROM audit_heads WHERE rollout_id = '{RID}' AND seq > 13",  # noqa: S608
    )
    # the store alone is consistent (rows 1..13, heads 3..12): the cut is invisible to it
    assert (await store.verify(RID, key=key.head_key)).ok
    code, out, err = await verify_cli(capsys, key)
    assert code == 0 and "NOT CHECKED: the workflow's head" in out and "not checked" in err
    # the head the workflow holds (seq 18, from Temporal history) names what is gone
    report = await store.verify(RID, key=key.head_key, anchors={RID: t.anchor()})
    seq, kind, end = only_fault(report)
    assert (seq, end) == (14, 18) and kind in ("deleted_row", "truncated_run")
    assert "the workflow's head (Temporal history) is at seq 18" in report.chains[0].broken.problem  # type: ignore[union-attr]


async def test_a_runs_rows_removed_are_named_as_a_truncated_run(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    """run-2 recorded seq 7..12; its rows are removed, its heads kept (they carry its run id)."""
    t = await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    await tamper(url, f"DELETE FROM audit_events WHERE {where(ids, range(7, 13))}")  # noqa: S608
    report = await store.verify(RID, key=key.head_key)
    assert only_fault(report) == (7, "truncated_run", 12)
    assert "every row of run run-2 is missing (seq 7..12)" in report.chains[0].broken.problem  # type: ignore[union-attr]
    code, out, err = await verify_cli(capsys, key)
    assert code == 1 and f"{RID} seq 7..12 (no row): truncated_run: every row of run run-2" in out
    assert "truncated_run" in err
    # with its heads removed too, the workflow's record of which run wrote what still names it
    await tamper(url, f"DELETE FROM audit_heads WHERE rollout_id = '{RID}' AND seq BETWEEN 7 AND 12")  # noqa: S608
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (7, "deleted_row")
    assert only_fault(await store.verify(RID, key=key.head_key, anchors={RID: t.anchor()})) == (
        7, "truncated_run", 12,
    )


async def test_the_newest_run_removed_with_its_heads_is_a_truncated_run_against_the_workflows_head(
    store: AuditStore, url: str, key: Key
) -> None:
    t = await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    await tamper(
        url,
        f"DELETE FROM audit_events WHERE {where(ids, range(13, 19))}",  # noqa: S608
        f"DELETE FROM audit_heads WHERE rollout_id = '{RID}' AND run_id = 'run-3'",  # noqa: S608
    )
    assert (await store.verify(RID, key=key.head_key)).ok  # invisible to the store alone
    report = await store.verify(RID, key=key.head_key, anchors={RID: t.anchor()})
    assert only_fault(report) == (13, "truncated_run", 18)
    assert "every row of run run-3 is missing" in report.chains[0].broken.problem  # type: ignore[union-attr]


async def test_a_payload_respelled_is_not_blamed_but_a_payload_changed_is(store: AuditStore, url: str, key: Key) -> None:
    """The hash covers the payload's content, not how the database spells its JSON."""
    await write_trail(store, key.signer)
    ids = await ids_by_seq(store)
    same = '{ "nested": {"text": "ünïcødé | pipe", "values": [1, 2.5, null]},  "n": 4 }'
    await tamper(url, f"UPDATE audit_events SET payload = '{same}' WHERE id = {ids[4]}")  # noqa: S608
    assert (await store.verify(RID, key=key.head_key)).ok
    changed = same.replace('"n": 4', '"n": 40')
    await tamper(url, f"UPDATE audit_events SET payload = '{changed}' WHERE id = {ids[4]}")  # noqa: S608
    assert only_fault(await store.verify(RID, key=key.head_key))[:2] == (4, "edited_row")


# ---- without a key ------------------------------------------------------------------------


async def test_without_a_key_verify_says_what_it_could_not_check(
    store: AuditStore, url: str, key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    t = await write_trail(store, key.signer)
    code, out, err = await verify_cli(capsys, None)
    assert code == 0
    assert "NOT CHECKED: head signatures: no public key" in out
    assert "a chain recomputed by someone with database access would pass" in out
    assert "checked: 6 stored heads against the rows" in out
    assert "not checked: head signatures: no public key" in err
    # what it can check without the key, it still fails on: heads against rows
    await rewrite_and_rehash(url, RID, 9, reason="hidden")
    code, out, err = await verify_cli(capsys, None)
    assert code == 1 and "seq 7..9 (no row): recomputed_chain" in out
    # a chain recomputed with its heads rewritten passes without the key (it says so) ...
    rows = {r.event.seq: r for r in await store.read(RID)}
    await tamper(
        url,
        *(
            f"UPDATE audit_heads SET hash = '{rows[h.seq].row_hash}', signature = NULL, key_id = NULL "  # noqa: S608
            f"WHERE rollout_id = '{RID}' AND seq = {h.seq}"
            for h in t.heads
            if h.seq >= 9
        ),
    )
    code, out, err = await verify_cli(capsys, None)
    assert code == 0 and "NOT CHECKED: head signatures" in out
    # ... and fails as soon as the key is given
    code, out, _ = await verify_cli(capsys, key)
    assert code == 1 and "seq 9 (no row): unsigned_head" in out


async def test_an_unsigned_trail_without_a_key_is_verified_as_far_as_it_can_be(
    store: AuditStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker without ROLLOUT_AUDIT_KEY keeps unsigned heads; verify passes what it could check."""
    await write_trail(store, None)
    code, out, err = await cli(capsys, "audit", "verify", RID, "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    chain = data["rollouts"][0]
    assert (chain["heads"], chain["signed_heads"]) == (6, 0)
    assert "6 stored heads against the rows" in chain["checked"]
    assert any(x.startswith("head signatures: no public key") for x in chain["unchecked"])
    assert "not checked" in err


# ---- exports, offline --------------------------------------------------------------------


async def export_to(capsys: pytest.CaptureFixture[str], path: Path) -> list[dict[str, object]]:
    code, out, _ = await cli(capsys, "audit", "export")
    assert code == 0
    path.write_text(out)
    return [json.loads(x) for x in out.splitlines()]


def write_lines(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


async def test_an_export_verifies_offline_with_the_public_key(
    store: AuditStore, key: Key, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    await store.close()
    f = tmp_path / "trail.jsonl"
    records = await export_to(capsys, f)
    assert sum(1 for r in records if r["record"] == "row") == 18
    assert sum(1 for r in records if r["record"] == "head" and r["signature"]) == 6
    code, out, err = await cli(capsys, "audit", "verify", "--file", str(f), "--public-key", str(key.public))
    assert code == 0, out + err
    assert f"ok      {RID}: 18 rows, seq 1..18, 6 heads (6 signed)" in out
    assert f"checked: head signatures with key {key.head_key.key_id}" in out


async def test_a_tampered_export_is_caught_offline(
    store: AuditStore, key: Key, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_trail(store, key.signer)
    await store.close()
    records = await export_to(capsys, tmp_path / "trail.jsonl")
    rows = [r for r in records if r["record"] == "row"]
    heads = [r for r in records if r["record"] == "head"]

    async def check(name: str, recs: list[dict[str, object]]) -> tuple[str, str]:
        f = tmp_path / f"{name}.jsonl"
        write_lines(f, recs)
        code, out, err = await cli(capsys, "audit", "verify", "--file", str(f), "--public-key", str(key.public))
        assert code == 1, (name, out, err)
        return out, err

    # an edited row
    edited = [dict(r, reason="approved by nobody") if r["record"] == "row" and r["seq"] == 5 else r for r in records]
    out, err = await check("edited", edited)
    assert f"{RID} seq 5 (row id {rows[4]['id']}): edited_row" in out and "seq 5" in err
    # a removed line (row 8)
    out, err = await check("removed", [r for r in records if not (r["record"] == "row" and r["seq"] == 8)])
    assert f"{RID} seq 8 (no row): deleted_row" in out and "seq 8" in err
    # the newest rows removed: the exported heads still vouch for them
    out, _ = await check("cut", [r for r in records if not (r["record"] == "row" and int(str(r["seq"])) > 16)])
    assert f"{RID} seq 17..18 (no row): deleted_row" in out
    # a head with a bad signature: its signature altered ...
    seq9 = heads[2]["seq"]
    sig = str(heads[2]["signature"])
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    bad = [dict(r, signature=flipped) if r["record"] == "head" and r["seq"] == seq9 else r for r in records]
    out, err = await check("bad-signature", bad)
    assert f"{RID} seq {seq9} (no row): bad_signature" in out and "bad_signature" in err
    # ... or its hash changed under the old signature: the head is blamed, not the rows
    bad = [dict(r, hash="f" * 64) if r["record"] == "head" and r["seq"] == seq9 else r for r in records]
    out, err = await check("bad-head", bad)
    assert f"first broken row: {RID} seq {seq9} (no row): bad_signature" in out and "recomputed_chain" not in out


# ---- the workflow's head through Temporal: `rollout audit verify` against a live history ------


@workflow.defn(name="AnchorTestWorkflow")
class AnchorTestWorkflow:
    """Records batches through the real `record_audit` activity, as StagedRollout does."""

    @workflow.run
    async def run(self, batches: int) -> AuditHead:
        info = workflow.info()
        head = AuditHead(seq=0, hash="0" * 64)
        for b in range(batches):
            events = [
                AuditEvent(rollout_id=info.workflow_id, seq=b * PER_BATCH + i + 1, at=workflow.now(),
                           actor="alice@example.com", role="rollout", action="note", stage="pilot",
                           plan_hash=PLAN_HASH, reason=f"batch {b} event {i}", payload={"b": b, "i": i})
                for i in range(PER_BATCH)
            ]
            head = await workflow.execute_activity(
                "record_audit", AuditBatch(events=events), result_type=AuditHead,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=1.0),
            )
        return head


async def test_cli_catches_newest_rows_deleted_with_their_heads_from_the_workflows_history(
    dev_env: WorkflowEnvironment,
    store: AuditStore,
    url: str,
    key: Key,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = dev_env.client
    monkeypatch.setenv("TEMPORAL_ADDRESS", client.service_client.config.target_host)
    queue = f"anchor-{uuid.uuid4().hex[:8]}"
    wid = f"rollout-anchor-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[AnchorTestWorkflow],
        activities=[AuditActivities(store, key.signer).record_audit],
        workflow_runner=UnsandboxedWorkflowRunner(), graceful_shutdown_timeout=timedelta(milliseconds=200),
    ):
        head = await client.execute_workflow(AnchorTestWorkflow.run, 4, id=wid, task_queue=queue)
    assert head.seq == 12 and head.signature and head.key_id == key.head_key.key_id
    code, out, err = await cli(capsys, "audit", "verify", wid, "--public-key", str(key.public))
    assert code == 0, out + err
    assert "checked: the workflow's head at seq 12 (Temporal history)" in out and "NOT CHECKED" not in out
    ids = {r.event.seq: r.id for r in await store.read(wid)}
    await tamper(
        url,
        f"DELETE FROM audit_events WHERE id IN ({ids[10]}, {ids[11]}, {ids[12]})",  # noqa: S608
        f"DELETE FROM audit_heads WHERE rollout_id = '{wid}' AND seq = 12",  # noqa: S608
    )
    assert (await store.verify(wid, key=key.head_key)).ok  # the store alone cannot tell
    code, out, err = await cli(capsys, "audit", "verify", wid, "--public-key", str(key.public))
    assert code == 1
    assert f"first broken row: {wid} seq 10..12 (no row):" in out
    assert "the workflow's head (Temporal history) is at seq 12" in out
    assert "seq 10..12" in err
