"""End to end with real components: Prometheus, Alertmanager, the receiver, a worker, StagedRollout.

- alert path: exporter -> Prometheus rule (`for: 0s`) -> Alertmanager (group_wait 1s)
  -> webhook with a bearer token -> receiver (uvicorn) -> `report_breach` -> held;
- threshold path: exporter -> Prometheus <- `monitor_thresholds` (1s interval) -> held;
- a worker restart in the middle of a window: the monitor resumes and a breach
  after the restart still holds.
Each path prints the seconds from the error-rate change to the hold.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from rollout.plan import validate_plan_data
from tests.promstack import Alertmanager, Exporter, Prometheus, free_port, running_exporter
from worker.main import RolloutWorker, build_worker
from worker.receiver import serve
from workflows.messages import RolloutInput
from workflows.staged_rollout import StagedRollout

REPO = Path(__file__).resolve().parent.parent
TOKEN = "alert-path-token"
GROUP_WAIT = 1.0
INTERVAL = 1.0  # plan metrics.interval and Prometheus scrape/evaluation interval
SUFFIX = uuid.uuid4().hex[:6]
ALERT_PLAN = f"alert-path-{SUFFIX}"
STAGE_PLAN = f"alert-stage-{SUFFIX}"  # its alert is labelled for limited-25 while the pilot is exposed
APPROVER = "frank@example.com"  # engineering approver in examples/support-reply-agent.yaml


def q(case: str) -> str:
    return f'rollout_test_error_rate{{case="{case}"}}'


def plan_for(name: str, prom_url: str, thresholds: list[dict[str, Any]]) -> dict[str, Any]:
    """The example plan, renamed, with metrics and the given pilot thresholds."""
    plan: dict[str, Any] = yaml.safe_load((REPO / "examples" / "support-reply-agent.yaml").read_text())
    plan["name"] = name
    plan["metrics"] = {"prometheus_url": prom_url, "interval": f"{INTERVAL:g}s"}
    plan["target"] = {"kind": "log"}
    plan["notify"] = []
    plan["stages"][0]["window"] = "1h"
    plan["stages"][0]["thresholds"] = thresholds
    return plan


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    yield from running_exporter()


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def alertmanager(receiver_port: int) -> Iterator[Alertmanager]:
    am = Alertmanager(
        {
            "route": {
                "receiver": "staged-rollout",
                "group_by": ["rollout", "threshold"],
                "group_wait": f"{GROUP_WAIT:g}s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "staged-rollout",
                    "webhook_configs": [
                        {
                            "url": f"http://127.0.0.1:{receiver_port}/alertmanager",
                            "send_resolved": True,
                            "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
                        }
                    ],
                }
            ],
        }
    )
    try:
        yield am
    finally:
        am.close()


@pytest.fixture(scope="module")
def prom(exporter: Exporter, alertmanager: Alertmanager) -> Iterator[Prometheus]:
    rules = {
        "groups": [
            {
                "name": "rollout-test",
                "interval": f"{INTERVAL:g}s",
                "rules": [
                    {
                        "alert": "RolloutErrorRateHigh",
                        "expr": f"{q('alert')} > 0.05",
                        "for": "0s",
                        "labels": {"rollout": ALERT_PLAN, "threshold": "error_rate", "severity": "page"},
                        "annotations": {"value": "{{ $value }}", "summary": "error rate high"},
                    },
                    {
                        "alert": "RolloutErrorRateHighLimited25",
                        "expr": f"{q('alert-stage')} > 0.05",
                        "for": "0s",
                        "labels": {"rollout": STAGE_PLAN, "threshold": "error_rate", "stage": "limited-25",
                                   "severity": "page"},
                        "annotations": {"value": "{{ $value }}", "summary": "error rate high in limited-25"},
                    },
                ],
            }
        ]
    }
    exporter.set("ready", 1.0)
    exporter.set("alert", 0.0)
    exporter.set("alert-stage", 0.0)
    p = Prometheus([exporter.target], rules=rules, alertmanager=alertmanager.address, interval=f"{INTERVAL:g}s")
    try:
        p.wait_for_value(q("ready"), lambda v: v == 1.0, timeout=30)
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuditStore]:
    st = AuditStore.from_url(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('audit') / 'audit.db'}")
    await st.migrate()
    yield st
    await st.close()


@pytest.fixture(scope="module")
def queue() -> str:
    return f"alert-path-{SUFFIX}"


@pytest.fixture(scope="module")
async def worker(dev_env: WorkflowEnvironment, store: AuditStore, queue: str) -> AsyncIterator[RolloutWorker]:
    w = build_worker(dev_env.client, store, queue=queue)
    async with w:
        yield w


@pytest.fixture(scope="module")
async def receiver(dev_env: WorkflowEnvironment, receiver_port: int) -> AsyncIterator[str]:
    task = asyncio.create_task(serve(dev_env.client, TOKEN, "127.0.0.1", receiver_port))
    url = f"http://127.0.0.1:{receiver_port}"
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            try:
                if (await c.get(f"{url}/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    try:
        yield url
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def status(h: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    st: dict[str, Any] = await h.query("status")
    return st


async def wait_status(
    h: WorkflowHandle[Any, Any], want: str, within: float = 20.0, poll: float = 0.02, exposed: bool = False
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = await status(h)
        if st["status"] == want and (not exposed or (st["exposure_stage"] and st["window_ends_at"])):
            return st
        await asyncio.sleep(poll)
    raise AssertionError(f"rollout never became {want}; last: {st.get('status')} {st}")


async def start_soaking(client: Client, queue: str, plan: dict[str, Any]) -> WorkflowHandle[Any, Any]:
    p = validate_plan_data(plan)
    h = await client.start_workflow(StagedRollout.run, RolloutInput(plan=p, started_by=p.owners.rollout), id=f"rollout-{p.name}", task_queue=queue)
    await wait_status(h, "awaiting_approval")
    await h.signal("approve", {"actor": APPROVER, "stage": "pilot", "role": "engineering", "comment": "test"})
    st = await wait_status(h, "soaking", exposed=True)
    assert st["exposure_stage"] == "pilot"
    return h


async def test_alert_holds_rollout(
    dev_env: WorkflowEnvironment, prom: Prometheus, alertmanager: Alertmanager, receiver: str, worker: RolloutWorker, queue: str, exporter: Exporter
) -> None:
    plan = plan_for(
        ALERT_PLAN,
        prom.url,
        [{"name": "error_rate", "query": q("alert-monitor"), "max": 0.05, "for": 3, "on_no_data": "ignore", "action": "hold"}],
    )
    exporter.set("alert-monitor", 0.0)
    h = await start_soaking(dev_env.client, queue, plan)
    await asyncio.sleep(1.0)
    assert (await status(h))["status"] == "soaking"

    t0 = time.monotonic()
    exporter.set("alert", 0.5)
    st = await wait_status(h, "held", within=30)
    held_at = time.time()
    elapsed = time.monotonic() - t0
    (breach,) = st["open_breaches"]
    ev = breach["evidence"]
    assert ev["source"] == "alertmanager"
    assert ev["threshold"] == "error_rate" and breach["action"] == "hold"
    assert ev["value"] == 0.5
    fired = datetime.fromisoformat(ev["observed_at"]).timestamp()
    after_fire = held_at - fired
    print(
        f"\nalert -> hold: {elapsed:.2f}s from the error-rate change; {after_fire:.2f}s after the alert fired "
        f"(group_wait {GROUP_WAIT:g}s, scrape and rule interval {INTERVAL:g}s)"
    )
    # from the firing alert: Alertmanager's group wait plus one second
    assert after_fire < GROUP_WAIT + 1.0 + 0.5, f"{after_fire:.2f}s after the alert fired"
    # from the change: one scrape, one rule evaluation, the group wait, the delivery
    assert elapsed < 2 * INTERVAL + GROUP_WAIT + 1.5

    # Alertmanager re-sends and the alert resolves: recorded (report_resolved), nothing resumes, nothing doubles
    exporter.set("alert", 0.0)
    deadline = time.monotonic() + 30
    while not (st := await status(h))["open_breaches"][0]["evidence"].get("resolved"):
        assert time.monotonic() < deadline, f"the resolved alert never reached the rollout: {st['open_breaches']}"
        await asyncio.sleep(0.2)
    (resolved,) = st["open_breaches"][0]["evidence"]["resolved"]
    assert resolved["source"] == "alertmanager"
    assert datetime.fromisoformat(resolved["observed_at"]).timestamp() >= fired  # Alertmanager's endsAt
    assert st["open_breaches"][0]["resolved_at"] is not None
    assert st["status"] == "held"
    assert len(st["open_breaches"]) == 1
    exporter.set("alert", 0.0)
    await h.signal("abort", {"actor": "alice@example.com", "reason": "test done"})


async def test_alert_for_another_stage_is_recorded_not_acted_on(
    dev_env: WorkflowEnvironment, prom: Prometheus, alertmanager: Alertmanager, receiver: str, worker: RolloutWorker,
    queue: str, exporter: Exporter
) -> None:
    """An alert labelled `stage: limited-25` while the pilot is exposed (as `rollout plan
    rules` writes them, the join on rollout_exposure_info aside) reaches the rollout through
    Prometheus, Alertmanager and the receiver, and is recorded without any containment."""
    plan = plan_for(
        STAGE_PLAN,
        prom.url,
        [{"name": "error_rate", "query": q("stage-monitor"), "max": 0.05, "for": 3, "on_no_data": "ignore",
          "action": "hold"}],
    )
    exporter.set("stage-monitor", 0.0)
    h = await start_soaking(dev_env.client, queue, plan)
    exporter.set("alert-stage", 0.5)
    deadline = time.monotonic() + 30
    while not (st := await status(h))["open_breaches"]:
        assert time.monotonic() < deadline, "the limited-25 alert never reached the rollout"
        await asyncio.sleep(0.2)
    (breach,) = st["open_breaches"]
    assert breach["evidence"]["source"] == "alertmanager" and breach["threshold"] == "error_rate"
    assert breach["applied"] is False
    assert "for stage 'limited-25', not the exposed stage 'pilot'" in breach["note"]
    await asyncio.sleep(GROUP_WAIT + 2 * INTERVAL)  # repeats change nothing either
    st = await status(h)
    assert (st["status"], st["exposure_stage"], st["hold"]) == ("soaking", "pilot", None)
    exporter.set("alert-stage", 0.0)
    await h.signal("abort", {"actor": "alice@example.com", "reason": "test done"})


async def test_threshold_holds_rollout(
    dev_env: WorkflowEnvironment, prom: Prometheus, worker: RolloutWorker, queue: str, exporter: Exporter
) -> None:
    case = f"threshold-{SUFFIX}"
    exporter.set(case, 0.01)
    prom.wait_for_value(q(case), lambda v: v == 0.01)
    plan = plan_for(
        f"threshold-path-{SUFFIX}",
        prom.url,
        [{"name": "error_rate", "query": q(case), "max": 0.05, "for": 1, "on_no_data": "hold", "action": "hold"}],
    )
    h = await start_soaking(dev_env.client, queue, plan)
    await asyncio.sleep(2.5 * INTERVAL)
    assert (await status(h))["status"] == "soaking"
    t0 = time.monotonic()
    exporter.set(case, 0.5)
    st = await wait_status(h, "held", within=30)
    elapsed = time.monotonic() - t0
    print(f"\nthreshold -> hold (whole rollout): {elapsed:.2f}s (interval {INTERVAL:g}s)")
    assert elapsed < 2 * INTERVAL + 1.0
    ev = st["open_breaches"][0]["evidence"]
    assert ev["source"] == "prometheus" and ev["query"] == q(case)
    assert ev["value"] == 0.5 and ev["max"] == 0.05
    assert ev["samples"][-1][1] == 0.5  # [evaluated at, value]
    await h.signal("abort", {"actor": "alice@example.com", "reason": "test done"})


async def test_worker_restart_mid_window(
    dev_env: WorkflowEnvironment, prom: Prometheus, store: AuditStore, exporter: Exporter
) -> None:
    """The monitor's worker goes away mid-window; the next one resumes from the heartbeat."""
    queue = f"restart-{SUFFIX}"
    case = f"restart-{SUFFIX}"
    exporter.set(case, 0.01)
    prom.wait_for_value(q(case), lambda v: v == 0.01)
    plan = plan_for(
        f"restart-{SUFFIX}",
        prom.url,
        [{"name": "error_rate", "query": q(case), "max": 0.05, "for": 3, "on_no_data": "hold", "action": "rollback"}],
    )
    first = build_worker(dev_env.client, store, queue=queue)
    async with first:
        h = await start_soaking(dev_env.client, queue, plan)
        await asyncio.sleep(3 * INTERVAL)
    # the first worker is gone: its monitor was cancelled mid-window
    stopped_at = datetime.now(UTC)
    exporter.set(case, 0.5)
    restarted = time.monotonic()
    second = build_worker(dev_env.client, store, queue=queue)
    async with second:
        st = await wait_status(h, "rolled_back", within=30)
        print(f"\nworker restart -> breach after restart: {time.monotonic() - restarted:.2f}s")
        ev = st["open_breaches"][0]["evidence"]
        assert ev["source"] == "prometheus" and ev["for"] == 3
        assert [v for _, v in ev["samples"]] == [0.5, 0.5, 0.5]  # the `for` evaluations that breached
        # the window the rollback interrupted was counted across the restart: its summary in
        # the audit trail has the evaluations from before the restart and after it
        summary: dict[str, Any] = {}
        for _ in range(100):
            rows = [r.event for r in await store.read(h.id) if r.event.action == "window_summary"]
            if rows:
                summary = rows[-1].payload["thresholds"]["error_rate"]
                break
            await asyncio.sleep(0.1)
        samples = [(datetime.fromisoformat(at), v) for at, v in summary["samples"]]
        before = [v for at, v in samples if at < stopped_at]
        assert before and set(before) == {0.01} and [v for _, v in samples][-3:] == [0.5, 0.5, 0.5]
        assert summary["evaluations"] == len(samples) > 3 and summary["failing"] == 3
        await h.signal("abort", {"actor": "alice@example.com", "reason": "test done"})
        await asyncio.sleep(0.5)
