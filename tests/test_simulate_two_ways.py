"""One series, two ways: a real workflow and `rollout simulate` decide the same things.

The same plan runs as a StagedRollout under the time-skipping test server (time
skipping off, so the server's clock is the wall clock) with the real
`watch_thresholds` monitor querying a real Prometheus that scrapes a test exporter.
The test moves the exporter's values half-way between evaluation slots (Prometheus
scrapes every 100 ms, so each change lands at least 0.4 s from any slot). Then
`rollout simulate` runs over the period the workflow ran, on what Prometheus
recorded, with `--from` the workflow's start and `--approve-after` the time its pilot
scope came in force, so both evaluate on the same grid. Their decisions (stage,
kind, threshold, evaluation time) must be the same sequence.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from cli.main import main
from rollout.models import AuditEvent
from rollout.simulate import from_ms, to_ms
from rollout.timefmt import rfc3339
from tests.promstack import Exporter, Prometheus, running_exporter
from tests.wfkit import bounded_shutdown, signal, start, wait_for
from worker.main import build_worker

WINDOW = 30  # seconds; interval 1 s
DECISIONS = (
    "stage_entered", "window_started", "window_clean", "window_insufficient_data", "breach",
    "contained_hold", "contained_narrow", "contained_rollback", "completed",
)
EVALUATED = ("breach", "contained_hold", "contained_narrow", "contained_rollback")


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    yield from running_exporter()


@pytest.fixture(scope="module")
def prom(exporter: Exporter) -> Iterator[Prometheus]:
    exporter.set("tw-err", 0.01)
    exporter.set("tw-q", 0.9)
    p = Prometheus([exporter.target], interval="100ms")
    try:
        p.wait_for_value('rollout_test_error_rate{case="tw-q"}', lambda v: v == 0.9, timeout=30)
        yield p
    finally:
        p.close()


def plan_dict(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "rollout/v1",
        "name": f"two-ways-{uuid.uuid4().hex[:6]}",
        "owners": {"rollout": "alice@example.com", "incident_response": "carol@example.com"},
        "approvers": {"engineering": ["frank@example.com"], "operations": ["hank@example.com"]},
        "target": {"kind": "log"},
        "metrics": {"prometheus_url": url, "interval": "1s"},
        "fallback": "humans answer every ticket",
        "escalation": {"ack_within": "5m", "chain": ["incident_response", "rollout"]},
        "stages": [
            {
                "name": "pilot", "tier": "pilot", "scope": {"percent": 5},
                "approvals": {"roles": ["engineering"]}, "window": f"{WINDOW}s",
                "thresholds": [
                    {"name": "error_rate", "query": 'rollout_test_error_rate{case="tw-err"}', "max": 0.02,
                     "for": 3, "on_no_data": "hold", "action": "hold"},
                    {"name": "quality", "query": 'rollout_test_error_rate{case="tw-q"}', "min": 0.5,
                     "for": 2, "on_no_data": "hold", "action": "rollback"},
                ],
            },
            {
                "name": "sor", "tier": "system_of_record", "scope": {"percent": 100}, "window": f"{WINDOW}s",
                "handoff": [{"item": "Runbook reviewed", "to": "operations"}],
            },
        ],
    }


def _iso(t: datetime) -> str:
    return rfc3339(from_ms(to_ms(t)))  # millisecond precision, the simulation's


def workflow_decisions(events: list[AuditEvent]) -> list[tuple[str | None, str, str | None, str | None]]:
    """(stage, kind, threshold, evaluation time) of the decisions in a workflow's audit trail."""
    observed: dict[int, tuple[str | None, str]] = {}
    for e in events:
        if e.action == "breach":
            b = e.payload["breach"]
            observed[b["id"]] = (b["threshold"], _iso(datetime.fromisoformat(b["observed_at"])))
    out = []
    for e in events:
        if e.action not in DECISIONS:
            continue
        threshold = at = None
        if e.action == "breach":
            threshold, at = observed[e.payload["breach"]["id"]]
        elif e.action in EVALUATED and e.payload.get("breach") is not None:
            threshold = ",".join(e.payload.get("thresholds") or []) or None
            at = observed[e.payload["breach"]][1]
        out.append((e.stage, e.action, threshold, at))
    return out


def simulated_decisions(result: dict[str, Any]) -> list[tuple[str | None, str, str | None, str | None]]:
    """The same from `rollout simulate --json`: there every decision is taken at its evaluation's time."""
    return [
        (e["stage"], e["kind"], e["threshold"], e["at"] if e["kind"] in EVALUATED else None)
        for e in result["events"]
        if e["kind"] in DECISIONS
    ]


async def sleep_until(t: datetime) -> None:
    await asyncio.sleep(max(0.0, (t - datetime.now(UTC)).total_seconds()))


async def test_one_series_two_ways_the_workflow_and_simulate_take_the_same_decisions(
    ts_env: WorkflowEnvironment,
    sqlite_store: AuditStore,
    prom: Prometheus,
    exporter: Exporter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = plan_dict(prom.url)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    worker = build_worker(ts_env.client, sqlite_store, queue=queue)
    run = asyncio.create_task(worker.run())
    try:
        with ts_env.auto_time_skipping_disabled():
            h = await start(ts_env.client, plan, queue)
            await signal(h, "approve", actor="frank@example.com", stage="pilot", role="engineering")
            st = await wait_for(h, lambda s: s["status"] == "soaking" and s["window_ends_at"] is not None)
            anchor = datetime.fromisoformat(st["window_ends_at"]) - timedelta(seconds=WINDOW)
            # evaluation k is at anchor + k s: error_rate fails at k = 6..9 (breach at 8: hold),
            # quality from k = 13 (breach at 14: rollback, stricter than the hold)
            await sleep_until(anchor + timedelta(seconds=5.5))
            exporter.set("tw-err", 0.5)
            await sleep_until(anchor + timedelta(seconds=9.5))
            exporter.set("tw-err", 0.01)
            await sleep_until(anchor + timedelta(seconds=12.5))
            exporter.set("tw-q", 0.1)
            await wait_for(h, lambda s: s["status"] == "rolled_back", within=30)
            deadline = time.monotonic() + 15
            while True:  # audit rows are written in batches, a little after the decisions
                events = await sqlite_store.events(h.id)
                if any(e.action == "contained_rollback" for e in events) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    finally:
        await bounded_shutdown(worker, run)
        exporter.set("tw-q", 0.9)
    wf = workflow_decisions(events)
    started = next(e.at for e in events if e.action == "started")
    begin = from_ms(to_ms(started))
    approve_after_ms = to_ms(anchor) - to_ms(begin)

    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    await asyncio.sleep(1.0)  # let Prometheus hold the last scrapes up to --to
    end = datetime.now(UTC)
    argv = ["simulate", str(path), "--from", rfc3339(begin), "--to", rfc3339(end),
            "--approve-after", f"{approve_after_ms}ms", "--json"]
    capsys.readouterr()  # drop what the worker printed (the log target's lines)
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    sim = simulated_decisions(json.loads(out.out))

    a = anchor
    expected = [
        ("pilot", "stage_entered", None, None),
        ("pilot", "window_started", None, None),
        ("pilot", "contained_hold", "error_rate", _iso(a + timedelta(seconds=8))),
        ("pilot", "breach", "error_rate", _iso(a + timedelta(seconds=8))),
        ("pilot", "contained_rollback", "quality", _iso(a + timedelta(seconds=14))),
        ("pilot", "breach", "quality", _iso(a + timedelta(seconds=14))),
    ]
    assert wf == expected
    assert sim == wf
