"""The worker process: the StagedRollout workflow and every activity, on task queue `rollouts`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.audit import AuditActivities
from activities.audit_store import AuditStore
from activities.monitor import monitor_thresholds
from activities.notify import send_notifications
from activities.targets import apply_exposure
from activities.watch import watch_thresholds
from worker.connect import connect, task_queue
from worker.metrics import ActivityTelemetry, CollectorSettings, WorkerTelemetry
from workflows.staged_rollout import StagedRollout

log = logging.getLogger("rollout.worker")


def activities_for(store: AuditStore) -> Sequence[Callable[..., Any]]:
    audit = AuditActivities(store)
    return [apply_exposure, send_notifications, monitor_thresholds, watch_thresholds, audit.record_audit,
            audit.audit_last_seq]


def build_worker(
    client: Client,
    store: AuditStore,
    *,
    queue: str | None = None,
    extra_activities: Sequence[Callable[..., Any]] = (),
    replace_activities: dict[str, Callable[..., Any]] | None = None,
) -> Worker:
    """A worker for the rollout workflow and its activities (all async)."""
    acts = list(activities_for(store)) + list(extra_activities)
    if replace_activities:
        from temporalio import activity as _activity

        def name_of(fn: Callable[..., Any]) -> str | None:
            defn = _activity._Definition.from_callable(fn)
            return defn.name if defn else None

        acts = [a for a in acts if name_of(a) not in replace_activities] + list(replace_activities.values())
    return Worker(
        client,
        task_queue=queue or task_queue(),
        workflows=[StagedRollout],
        activities=acts,
        # cryptography's compiled core must not be re-imported inside the sandbox
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("cryptography")
        ),
        max_concurrent_activities=200,
        interceptors=[ActivityTelemetry()],
    )


async def run_worker(
    stop: asyncio.Event | None = None,
    metrics_address: str | None = None,
    collector: CollectorSettings | None = None,
) -> int | None:
    """`rollout worker`: connect, migrate the audit store, run until SIGINT/SIGTERM.

    Returns the signal that stopped it (None when `stop` was set by the caller).

    With `metrics_address`, serve `/metrics` (Temporal SDK, activity and controller
    metrics), `/healthz` and `/readyz` there (worker/metrics.py)."""
    identity = f"rollout-worker@{socket.gethostname()}:{os.getpid()}"
    telemetry = WorkerTelemetry(task_queue(), identity, collector) if metrics_address else None
    client = await connect(identity=identity, runtime=telemetry.runtime if telemetry else None)
    store = AuditStore.from_env()
    await store.migrate()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    stopped_by: list[int] = []

    def on_signal(sig: int) -> None:
        stopped_by.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    worker = build_worker(client, store)
    log.info("worker polling task queue %s%s", task_queue(),
             f"; metrics on http://{metrics_address}/metrics" if metrics_address else "")
    try:
        async with worker, (
            telemetry.serving(metrics_address, client, worker)
            if telemetry and metrics_address
            else contextlib.nullcontext()
        ):
            await stop.wait()
    finally:
        await store.close()
    return stopped_by[0] if stopped_by else None
