"""The worker's `/metrics`, `/healthz` and `/readyz` (worker/metrics.py, activities/telemetry.py).

A real `rollout worker --metrics-address` process against a real Temporal dev server:
a rollout entered, held and aborted shows up in the controller's metrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment

from activities import telemetry
from rollout.errors import RefusedError
from rollout.models import AuditBatch, AuditEvent, TargetChange
from tests.promstack import free_port
from worker.metrics import bind

ROLLOUT = str(Path(sys.executable).parent / "rollout")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-reply-agent.yaml"


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def registry_value(name: str, **labels: str) -> float:
    value = telemetry.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


# ---- activity telemetry, in-process ------------------------------------------------------------


def _change(kind: str = "promote", seconds_ago: float = 2.0) -> TargetChange:
    return TargetChange(
        rollout_id="rollout-x", plan_name="x", seq=3, idempotency_key="rollout-x:3", kind=kind,
        stage="pilot", percent=5, plan_hash="h", reason="r",
        decided_at=datetime.now(UTC) - timedelta(seconds=seconds_ago), target={"kind": "webhook"},
    )


def test_applied_change_observes_decision_to_target_latency() -> None:
    count = registry_value("rollout_decision_to_target_seconds_count", change="narrow")
    total = registry_value("rollout_decision_to_target_seconds_sum", change="narrow")
    telemetry.observe_activity("apply_exposure", (_change("narrow", 2.0),), None)
    assert registry_value("rollout_decision_to_target_seconds_count", change="narrow") == count + 1
    assert 2.0 <= registry_value("rollout_decision_to_target_seconds_sum", change="narrow") - total < 10


def test_target_failures_are_counted_by_reason() -> None:
    from activities.targets.base import TargetUnavailable, rejected

    before = registry_value("rollout_target_failures_total", target="webhook", reason="rejected")
    telemetry.observe_activity("apply_exposure", (_change(),), None, rejected("409 from the target"))
    telemetry.observe_activity("apply_exposure", (_change(),), None, TargetUnavailable("503"))
    assert registry_value("rollout_target_failures_total", target="webhook", reason="rejected") == before + 1
    assert registry_value("rollout_target_failures_total", target="webhook", reason="unavailable") >= 1


def _event(seq: int, action: str, payload: dict[str, Any] | None = None) -> AuditEvent:
    return AuditEvent(rollout_id="rollout-audit-test", seq=seq, at=datetime.now(UTC) - timedelta(seconds=1), action=action,
                      plan_hash="h", payload=payload or {})


def test_audit_rows_count_breaches_containments_and_pages_once() -> None:
    batch = AuditBatch(events=[
        _event(1, "breach", {"breach": {"action": "rollback", "applied": True}}),
        _event(2, "contained_rollback"),
        _event(3, "escalation_page"),
    ])
    b = registry_value("rollout_breaches_total", action="rollback", applied="true")
    c = registry_value("rollout_containments_total", action="rollback")
    p = registry_value("rollout_pages_total")
    rows = registry_value("rollout_audit_rows_total")
    telemetry.observe_activity("record_audit", (batch,), None)
    telemetry.observe_activity("record_audit", (batch,), None)  # a retried batch counts once
    assert registry_value("rollout_breaches_total", action="rollback", applied="true") == b + 1
    assert registry_value("rollout_containments_total", action="rollback") == c + 1
    assert registry_value("rollout_pages_total") == p + 1
    assert registry_value("rollout_audit_rows_total") == rows + 3


def test_telemetry_never_raises_on_unexpected_arguments() -> None:
    telemetry.observe_activity("record_audit", ("not a batch",), "nonsense")
    telemetry.observe_activity("apply_exposure", (), None, RuntimeError("x"))


def test_bind_refuses_a_port_in_use_and_bad_addresses() -> None:
    sock = bind("127.0.0.1:0")
    try:
        port = sock.getsockname()[1]
        with pytest.raises(OSError):
            bind(f"127.0.0.1:{port}").close()
    finally:
        sock.close()
    with pytest.raises(ValueError, match="HOST:PORT"):
        bind("127.0.0.1")


# ---- a real worker process -----------------------------------------------------------------------


async def _until(predicate: Any, what: str, within: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {str(last)[:500]}")


async def test_worker_serves_controller_metrics_health_and_readiness(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    from rollout.plan import load_plan
    from worker import client as rc

    address = f"127.0.0.1:{free_port()}"
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLOUT_TASK_QUEUE": queue, "ROLLOUT_DB_URL": f"sqlite:///{tmp_path / 'audit.db'}",
           "ROLLOUT_COLLECT_INTERVAL": "0.5"}
    proc = subprocess.Popen([ROLLOUT, "worker", "--metrics-address", address], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://{address}"
    plan = load_plan(EXAMPLE)
    wid = f"rollout-{plan.name}-{uuid.uuid4().hex[:6]}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await _until(ready, "/readyz 200")
            assert (await http.get("/healthz")).json() == {"ok": True}

            os.environ["ROLLOUT_TASK_QUEUE"] = queue
            try:
                handle = await rc.start(dev_env.client, plan, workflow_id=wid, started_by=plan.owners.rollout)
            finally:
                del os.environ["ROLLOUT_TASK_QUEUE"]

            async def approved() -> bool:
                try:
                    await rc.act(dev_env.client, handle.id, "approve",
                                 {"actor": "frank@example.com", "stage": "pilot", "role": "engineering"})
                except RefusedError as exc:  # "the rollout is starting; try again in a moment"
                    assert "starting" in str(exc), exc
                    return False
                return True

            await _until(approved, "the pilot approved")

            async def exposed() -> str | None:
                text = (await http.get("/metrics")).text
                ok = sample(text, "rollout_exposure_info", rollout=plan.name, stage="pilot") == 1.0
                return text if ok else None

            text = await _until(exposed, "rollout_exposure_info for the pilot")
            assert (sample(text, "rollout_decision_to_target_seconds_count", change="promote") or 0) >= 1
            assert (sample(text, "rollout_audit_rows_total") or 0) >= 2
            assert (sample(text, "rollout_task_queue_pollers", task_queue=queue, type="workflow") or 0) >= 1
            assert (sample(text, "rollout_collector_last_success_timestamp_seconds") or 0) > 0
            assert 'activity_type="apply_exposure"' in text  # the SDK's own metrics, and those deploy/ uses
            from tests.test_deploy import SDK_METRICS_USED

            for name in SDK_METRICS_USED:
                assert sample(text, name) is not None, name

            async def by_status() -> str | None:
                text = (await http.get("/metrics")).text
                ok = (sample(text, "rollout_rollouts", status="soaking", stage="pilot") or 0) >= 1
                return text if ok else None

            await _until(by_status, "rollout_rollouts{status=soaking,stage=pilot}")

            await rc.act(dev_env.client, handle.id, "hold", {"actor": "erin@example.com", "reason": "metrics test"})

            async def held() -> str | None:
                text = (await http.get("/metrics")).text
                ok = (sample(text, "rollout_containments_total", action="hold") or 0) >= 1
                return text if ok and (sample(text, "rollout_pages_total") or 0) >= 1 else None

            await _until(held, "a hold counted as a containment and a page")

            await rc.act(dev_env.client, handle.id, "abort", {"actor": "alice@example.com", "reason": "test done"})

            async def gone() -> bool:
                text = (await http.get("/metrics")).text
                return sample(text, "rollout_exposure_info", rollout=plan.name, stage="pilot") is None

            await _until(gone, "rollout_exposure_info gone after abort")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc_ = proc.wait(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    assert rc_ == 0, err[-2000:]
