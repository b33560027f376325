"""The worker process: the StagedRollout workflow and every activity, on task queue `rollouts`
(audit batches, notifications and monitors on `rollouts-audit`, `rollouts-notify` and
`rollouts-monitors`, workflows/queues.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.audit import AuditActivities
from activities.audit_store import AuditStore
from activities.monitor import monitor_thresholds
from activities.notify import send_notification_batch, send_notifications
from activities.targets import apply_exposure
from activities.watch import watch_thresholds
from rollout.errors import UsageError
from worker.connect import connect, task_queue
from worker.metrics import ActivityTelemetry, CollectorSettings, WorkerTelemetry
from workflows import queues
from workflows.staged_rollout import StagedRollout

log = logging.getLogger("rollout.worker")


def activities_for(store: AuditStore) -> Sequence[Callable[..., Any]]:
    audit = AuditActivities(store)
    return [apply_exposure, send_notifications, send_notification_batch, monitor_thresholds, watch_thresholds,
            audit.record_audit, audit.audit_last_seq]


@dataclass(frozen=True)
class WorkerSettings:
    """The worker options that matter under load (README, "Running many workers")."""

    audit_slots: int = 20  # audit batches (`<queue>-audit`)
    notify_slots: int = 20  # notifications (`<queue>-notify`)
    delivery_slots: int = 100  # target deliveries, and every activity of runs before `own-queues` (`<queue>`)
    monitor_slots: int = 2000  # threshold monitors (`<queue>-monitors`), one per monitored soaking rollout
    max_cached_workflows: int = 1000  # open rollouts kept in memory (the SDK's default)

    @classmethod
    def from_env(cls, given: dict[str, int | None] | None = None) -> WorkerSettings:
        """Each setting from `given` (the `rollout worker` flags) when there, else from
        ROLLOUT_DELIVERY_SLOTS, ROLLOUT_AUDIT_SLOTS, ROLLOUT_NOTIFY_SLOTS, ROLLOUT_MONITOR_SLOTS
        or ROLLOUT_MAX_CACHED_WORKFLOWS when set, else the default; each a whole number from 1
        (from 0 for the cache) to 100,000."""
        base = cls()
        values: dict[str, int] = {}
        for name in ("delivery_slots", "audit_slots", "notify_slots", "monitor_slots", "max_cached_workflows"):
            env = "ROLLOUT_" + name.upper()
            lowest = 0 if name == "max_cached_workflows" else 1
            flag = (given or {}).get(name)
            raw = os.environ.get(env, "").strip()
            where = f"--{name.replace('_', '-')} {flag}" if flag is not None else f"{env}={raw!r}"
            if flag is not None:
                n = flag
            elif raw:
                try:
                    n = int(raw)
                except ValueError:
                    raise UsageError(f"{where} is not a whole number: set it to one (at least {lowest}) "
                                     "or unset it") from None
            else:
                n = getattr(base, name)
            if not lowest <= n <= 100_000:
                raise UsageError(f"{where} is out of range: give a number between {lowest} and 100000")
            values[name] = n
        return cls(**values)


class RolloutWorker:
    """The Temporal workers of one process, run and stopped together: workflow tasks and
    target deliveries on the rollouts' queue; audit batches, notifications and threshold
    monitors each on a queue of its own (workflows/queues.py). If one stops, all stop."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = list(workers)
        self._running: asyncio.Task[None] | None = None

    @property
    def is_running(self) -> bool:
        return all(w.is_running for w in self.workers)

    async def run(self) -> None:
        runs = [asyncio.create_task(w.run()) for w in self.workers]
        try:
            await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in self.workers:
                if w.is_running:
                    with contextlib.suppress(Exception):
                        await w.shutdown()
            results = await asyncio.gather(*runs, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers if w.is_running))
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def __aenter__(self) -> RolloutWorker:
        self._running = asyncio.create_task(self.run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


def _name_of(fn: Callable[..., Any]) -> str | None:
    from temporalio import activity as _activity

    defn = _activity._Definition.from_callable(fn)
    return defn.name if defn else None


def build_worker(
    client: Client,
    store: AuditStore,
    *,
    queue: str | None = None,
    extra_activities: Sequence[Callable[..., Any]] = (),
    replace_activities: dict[str, Callable[..., Any]] | None = None,
    settings: WorkerSettings | None = None,
) -> RolloutWorker:
    """The rollout workflow and its activities (all async), on `queue` and its audit,
    notify and monitors queues (workflows/queues.py)."""
    settings = settings or WorkerSettings()
    queue = queue or task_queue()
    acts = list(activities_for(store)) + list(extra_activities)
    if replace_activities:
        acts = [a for a in acts if _name_of(a) not in replace_activities] + list(replace_activities.values())
    by_name = {_name_of(a): a for a in acts}
    interceptors = [ActivityTelemetry()]
    main = Worker(
        client,
        task_queue=queue,
        workflows=[StagedRollout],
        activities=acts,  # deliveries, and every activity of runs started before `own-queues`
        # cryptography's compiled core must not be re-imported inside the sandbox
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("cryptography")
        ),
        max_concurrent_activities=settings.delivery_slots,
        max_cached_workflows=settings.max_cached_workflows,
        interceptors=interceptors,
    )
    audit = Worker(client, task_queue=queues.audit(queue), activities=[by_name["record_audit"]],
                   max_concurrent_activities=settings.audit_slots, interceptors=interceptors)
    notify = Worker(client, task_queue=queues.notify(queue), activities=[by_name["send_notification_batch"]],
                    max_concurrent_activities=settings.notify_slots, interceptors=interceptors)
    monitors = Worker(client, task_queue=queues.monitors(queue), activities=[by_name["watch_thresholds"]],
                      max_concurrent_activities=settings.monitor_slots, interceptors=interceptors)
    return RolloutWorker([main, audit, notify, monitors])


async def run_worker(
    stop: asyncio.Event | None = None,
    metrics_address: str | None = None,
    collector: CollectorSettings | None = None,
    settings: WorkerSettings | None = None,
) -> int | None:
    """`rollout worker`: connect, migrate the audit store, run until SIGINT/SIGTERM.

    Returns the signal that stopped it (None when `stop` was set by the caller).

    With `metrics_address`, serve `/metrics` (Temporal SDK, activity and controller
    metrics), `/healthz` and `/readyz` there (worker/metrics.py)."""
    settings = settings or WorkerSettings.from_env()
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
    worker = build_worker(client, store, settings=settings)
    q = task_queue()
    log.info("worker polling task queues %s (delivery slots %d), %s (%d), %s (%d) and %s (%d); %d cached workflows%s",
             q, settings.delivery_slots, queues.audit(q), settings.audit_slots, queues.notify(q), settings.notify_slots,
             queues.monitors(q), settings.monitor_slots, settings.max_cached_workflows,
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
