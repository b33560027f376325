"""`rollout audit` against the store (SQLite and PostgreSQL) and against Temporal history."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from cli.commands.audit import parse_since
from tests.audit_support import cli, make_events, scenario_events, store_url_for, tamper
from tests.test_audit_activity import AuditTestWorkflow, Spec, _worker

RID = "rollout-support-agent"


@pytest.fixture(params=["sqlite", "postgres"])
async def url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    async with store_url_for(request.param, tmp_path, pg_url) as u:
        monkeypatch.setenv("ROLLOUT_DB_URL", u)
        monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing there unless a test says so
        yield u


@pytest.fixture
async def store(url: str) -> AsyncIterator[AuditStore]:
    s = AuditStore.from_url(url)
    try:
        yield s
    finally:
        await s.close()



async def test_markdown_report_reads_like_an_audit(store: AuditStore, capsys: pytest.CaptureFixture[str]) -> None:
    await store.append(scenario_events(RID))
    code, out, err = await cli(capsys, "audit", "support-agent", "--source", "store")
    assert code == 0, err
    assert out.startswith(f"# Audit report: {RID}\n")
    assert "- **Status**: completed" in out
    assert "- **Plan hashes** (amended):" in out and f"`{'b' * 64}` from seq 12" in out
    for section in ("## Timeline", "## Approvals", "### Stage pilot", "## Breaches and evidence",
                    "## Containment and resumes", "## Escalation", "## Handoff", "## Amendments",
                    "## Refused actions", "## Outcome"):
        assert section in out, section
    assert "| engineering | frank@example.com | approved | 2025-03-01 12:00:00 UTC | dashboards look good | 3 |" in out
    assert "- **Query**: `sum(rate(agent_errors_total[5m])) / sum(rate(agent_runs_total[5m]))`" in out
    assert "- **Threshold**: error_rate (max 0.02)" in out and "- **Observed value**: 0.031" in out
    assert '- **Scope**: `{"percent": 5, "segments": ["internal"]}`' in out
    assert "- **Containment**: `hold`" in out and "- **Escalation**:" in out
    assert "| 2025-03-01T10:01:00Z | 0.031 |" in out  # samples
    assert "carol@example.com (incident_response)" in out and "bad deploy reverted" in out
    assert "Runbook reviewed" in out and "hank@example.com (operations)" in out
    assert "the rollout owner may not approve" in out
    assert "**completed** at 2025-03-01 23:00:00 UTC" in out


async def test_json_report_is_the_stored_trail(store: AuditStore, capsys: pytest.CaptureFixture[str]) -> None:
    events = scenario_events(RID)
    await store.append(events)
    code, out, _ = await cli(capsys, "audit", RID, "--format", "json", "--source", "store")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "store" and data["status"] == "completed"
    assert data["events"] == [e.model_dump(mode="json") for e in events]
    code, out2, _ = await cli(capsys, "audit", "support-agent", "--json", "--source", "store")
    assert code == 0 and json.loads(out2) == data


async def test_auto_reads_the_store_when_temporal_is_unreachable(
    store: AuditStore, capsys: pytest.CaptureFixture[str]
) -> None:
    await store.append(make_events(RID, 3))
    code, out, err = await cli(capsys, "audit", RID, "--json")
    assert code == 0 and json.loads(out)["source"] == "store" and len(json.loads(out)["events"]) == 3
    assert "reading the audit store instead" in err
    code, _, err = await cli(capsys, "audit", RID, "--source", "temporal")
    assert code == 3 and "cannot reach Temporal" in err
    code, _, err = await cli(capsys, "audit", "no-such-plan", "--source", "store")
    assert code == 1 and "no audit trail for rollout-no-such-plan" in err


async def test_export_streams_json_lines_since(store: AuditStore, capsys: pytest.CaptureFixture[str]) -> None:
    await store.append(make_events(RID, 5))  # 2025-03-01 09:01 .. 09:05
    now = datetime.now(UTC)
    first, second = make_events("rollout-b", 2)
    await store.append(
        [first.model_copy(update={"at": now - timedelta(hours=30)}), second.model_copy(update={"at": now - timedelta(hours=2)})]
    )
    code, out, _ = await cli(capsys, "audit", "export")
    records = [json.loads(x) for x in out.splitlines()]
    assert records[0]["record"] == "export" and records[0]["since"] is None
    lines = [x for x in records if x["record"] == "row"]
    assert code == 0 and len(lines) == 7
    assert {"rollout_id", "seq", "at", "actor", "role", "action", "stage", "plan_hash", "reason", "payload",
            "prev_hash", "row_hash", "recorded_at", "id"} <= set(lines[0])
    code, out, _ = await cli(capsys, "audit", "export", "--since", "24h")
    rows = [x for x in map(json.loads, out.splitlines()) if x["record"] == "row"]
    assert code == 0 and [(x["rollout_id"], x["seq"]) for x in rows] == [("rollout-b", 2)]
    code, out, _ = await cli(capsys, "audit", "export", "--since", "2025-03-01T09:04:00Z")
    assert [x["seq"] for x in map(json.loads, out.splitlines()) if x["record"] == "row"][:2] == [4, 5]
    code, _, err = await cli(capsys, "audit", "export", "--since", "yesterday")
    assert code == 2 and "--since" in err


async def test_verify_exit_codes_name_the_first_broken_row(
    store: AuditStore, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await store.append(make_events(RID, 5))
    await store.append(make_events("rollout-other", 2))
    code, out, _ = await cli(capsys, "audit", "verify")
    assert code == 0 and f"ok      {RID}: 5 rows" in out
    row3 = {r.event.seq: r.id for r in await store.read(RID)}[3]
    await tamper(url, f"DELETE FROM audit_events WHERE id = {row3}")  # noqa: S608
    code, out, err = await cli(capsys, "audit", "verify")
    assert code == 1
    assert f"BROKEN  {RID}: first broken row: {RID} seq 3 (no row): deleted_row: row missing" in out
    assert "seq 3" in err
    code, out, _ = await cli(capsys, "audit", "verify", "other")
    assert code == 0 and "rollout-other" in out and RID not in out
    code, out, _ = await cli(capsys, "audit", "verify", RID, "--json")
    report = json.loads(out)
    assert code == 1 and report["rollouts"][0]["broken"]["seq"] == 3


async def test_usage_errors_exit_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["audit"],
        ["audit", "rebuild"],
        ["audit", "verify", "a", "b"],
        ["audit", "verify", "--since", "1h"],
        ["audit", "export", "extra"],
        ["audit", "export", "--format", "md"],
        ["audit", RID, "--format", "xml"],
        ["audit", RID, "extra"],
    ):
        code, _, _ = await cli(capsys, *argv)
        assert code == 2, argv


def test_parse_since() -> None:
    now = datetime(2025, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2025, 2, 23, 12, 0, tzinfo=UTC)
    assert parse_since("2025-03-01T10:00:00Z", now) == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    assert parse_since("2025-03-01T10:00:00", now) == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    assert parse_since("2025-03-01T11:00:00+01:00", now) == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


async def test_rebuild_from_history_and_report_from_temporal(
    dev_env: WorkflowEnvironment,
    store: AuditStore,
    url: str,
    tmp_path: Path,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = dev_env.client
    monkeypatch.setenv("TEMPORAL_ADDRESS", client.service_client.config.target_host)
    queue = f"audit-cli-{uuid.uuid4().hex[:8]}"
    name = f"audit-cli-{uuid.uuid4().hex[:8]}"
    wid = f"rollout-{name}"
    # the workflow writes into a different store; the CLI's store starts empty
    async with store_url_for("sqlite", tmp_path / "worker", pg_url) as worker_url:
        worker_store = AuditStore.from_url(worker_url)
        try:
            async with _worker(client, queue, worker_store):
                await client.execute_workflow(
                    AuditTestWorkflow.run, Spec(batches=3, per_batch=2, continue_every=2), id=wid, task_queue=queue
                )
        finally:
            await worker_store.close()

    code, out, err = await cli(capsys, "audit", name, "--json")
    assert code == 0, err
    from_history = json.loads(out)
    assert from_history["source"] == "temporal" and len(from_history["events"]) == 6

    code, out, err = await cli(capsys, "audit", "rebuild", name)
    assert code == 0, err
    assert f"{wid}: 6 decisions in history, 6 rows written, 0 already stored" in out
    code, out, _ = await cli(capsys, "audit", "rebuild", name)
    assert code == 0 and "0 rows written, 6 already stored and agreeing" in out

    code, out, _ = await cli(capsys, "audit", name, "--json", "--source", "store")
    from_store = json.loads(out)
    assert from_store["events"] == from_history["events"]  # the store and history agree
    code, _, _ = await cli(capsys, "audit", "verify", name)
    assert code == 0

    row = {r.event.seq: r.id for r in await store.read(wid)}[2]
    await tamper(url, f"UPDATE audit_events SET actor = 'mallory@example.com' WHERE id = {row}")  # noqa: S608
    code, out, err = await cli(capsys, "audit", "rebuild", name)
    assert code == 1 and "DISAGREES seq 2: store differs from history in actor" in out
    code, _, err = await cli(capsys, "audit", "rebuild", "never-started")
    assert code == 1 and "not in Temporal" in err
