"""A whole rollout through StagedRollout: the audit store equals the trail in Temporal
history (across continue-as-new), its chain verifies, and the report reads as an audit."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from activities.history_trail import read_history_trail
from cli.main import main
from rollout.audit_report import render_json, render_markdown
from tests import plans
from tests.audit_support import store_url_for
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK
from tests.wfkit import hours, signal, start, wait_for
from worker.main import build_worker


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[AuditStore]:
    async with store_url_for(request.param, tmp_path, pg_url) as url:
        s = AuditStore.from_url(url)
        await s.migrate()
        try:
            yield s
        finally:
            await s.close()


async def approve(h: Any, stage: str, role: str, actor: str) -> None:
    await signal(h, "approve", actor=actor, stage=stage, role=role, comment=f"{role} ok")


async def test_full_rollout_audit_matches_history(
    ts_env: WorkflowEnvironment, store: AuditStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = ts_env
    queue = f"q-{uuid.uuid4().hex[:8]}"
    # No plan thresholds: a live monitor would keep the time-skipping server from skipping
    # (it never skips while an activity runs); the breach comes from Alertmanager's signal,
    # the threshold paths are tested against real Prometheus in real time elsewhere.
    plan = plans.plan_dict()
    async with build_worker(env.client, store, queue=queue):
        h = await start(env.client, plan, queue, continue_as_new_after=100)  # two runs
        await wait_for(h, lambda s: s["status"] == "awaiting_approval")
        await approve(h, "pilot", "engineering", OWNER)  # refused: the rollout owner
        await approve(h, "pilot", "engineering", ENG1)
        await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
        await env.sleep(hours(10))
        await signal(h, "report_breach", source="alertmanager", threshold="error_rate", value=0.031,
                     detail={"alertname": "AgentErrors"})
        await wait_for(h, lambda s: s["status"] == "held")
        await env.sleep(timedelta(minutes=6))  # unacknowledged: the next in the chain is paged
        await wait_for(h, lambda s: s["escalation"]["level"] == 1)
        await signal(h, "acknowledge", actor=IR, escalation=True)
        await signal(h, "resume", actor=IR, reason="bad deploy reverted")
        await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
        await env.sleep(hours(73))
        await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
        await approve(h, "limited-25", "engineering", ENG2)
        await approve(h, "limited-25", "operations", OPS)
        await wait_for(h, lambda s: s["stage"] == "limited-25" and s["status"] == "soaking")
        await signal(h, "acknowledge", actor=OPS, item="Support leads briefed")
        await env.sleep(hours(24 * 7 + 1))
        await wait_for(h, lambda s: s["stage"] == "system-of-record" and s["status"] == "awaiting_approval")
        for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
            await approve(h, "system-of-record", role, who)
        await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
        await signal(h, "acknowledge", actor=OPS, item="On-call rota includes the agent")
        await signal(h, "acknowledge", actor=IR, item="Runbook reviewed")
        await env.sleep(hours(24 * 14 + 1))
        result = await h.result()
        assert result["status"] == "completed"

    trail = await read_history_trail(env.client, h.id)
    assert trail is not None and trail.complete and not trail.conflicts
    assert len(trail.run_ids) >= 2, "the scenario should cross continue-as-new"
    stored = await store.events(h.id)
    assert stored == trail.events  # every decision in history is in the store, nothing else
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert (await store.verify(h.id)).ok

    actions = [e.action for e in stored]
    assert actions[0] == "started" and actions[-1] == "completed"
    assert "refused" in actions and "breach" in actions and "resumed" in actions
    breach = next(e for e in stored if e.action == "breach")
    bundle = breach.payload["breach"]["bundle"]
    assert breach.payload["breach"]["evidence"]["value"] == 0.031
    assert bundle["plan_hash"] == breach.plan_hash and bundle["containment"] == "hold"
    assert bundle["scope"]["in_force"]["percent"] == 5

    md = render_markdown(stored, h.id, "store")
    assert "- **Status**: completed" in md
    assert "| engineering | frank@example.com | approved |" in md
    assert "### Breach at" in md and "error_rate" in md and "0.031" in md
    assert "- **Containment**: hold" in md and "- **Authority in force**:" in md
    assert "escalation_page" in md and f"{IR} (incident_response)" in md
    assert "| Runbook reviewed |" in md and "Support leads briefed" in md
    assert "rollout owner" in md  # the refused self-approval, with its reason

    # the CLI reads the same trail from Temporal history, and its JSON matches it
    monkeypatch.setenv("TEMPORAL_ADDRESS", env.client.service_client.config.target_host)
    monkeypatch.setenv("ROLLOUT_DB_URL", store.engine.url.render_as_string(hide_password=False))
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["audit", h.id, "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(render_json(trail.events, h.id, "temporal")))
