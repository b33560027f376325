"""The worker's metrics, health and readiness, on `rollout worker --metrics-address`.

One HTTP server on that address serves:

- `/metrics`: Temporal's SDK metrics (`temporal_*`: task latencies, slots, pollers,
  activity and workflow counters; durations in seconds, drained in-process from a
  `MetricBuffer`), the activity counters of activities/telemetry.py, and the
  controller's own gauges, refreshed by a collector task every `interval` seconds
  (default 30): it lists open StagedRollout executions through visibility (search
  attributes `RolloutStatus`, `RolloutStage`) and, bounded in concurrency and count,
  queries each one's `status` for `exposure_stage`:
  - `rollout_exposure_info{rollout, stage} 1` for each open rollout with a scope in
    force (the generated alert rules join on it);
  - `rollout_rollouts{status, stage}`: open rollouts by status and stage;
  - `rollout_task_queue_pollers{task_queue, type}`: pollers Temporal has seen recently
    on the task queue (workflow, activity);
  - `rollout_collector_last_success_timestamp_seconds`, `rollout_collector_errors_total`,
    `rollout_collector_truncated` (1 when more open rollouts than `max_rollouts`);
- `/healthz`: the process is alive;
- `/readyz`: connected to Temporal (its frontend answers) and polling (the worker runs
  and Temporal lists this process's identity among the task queue's pollers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from activities import telemetry

log = logging.getLogger("rollout.metrics")

WORKFLOW_TYPE = "StagedRollout"


class Running(Protocol):
    """What readiness asks of the worker (worker.main.RolloutWorker)."""

    @property
    def is_running(self) -> bool: ...

RPC_TIMEOUT = timedelta(seconds=5)
SDK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


# ---- activity counters -------------------------------------------------------------------------


class ActivityTelemetry(Interceptor):
    """Counts what each activity attempt did (activities/telemetry.py); never changes it."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        try:
            result = await super().execute_activity(input)
        except BaseException as exc:
            if isinstance(exc, Exception):
                telemetry.observe_activity(name, tuple(input.args), None, exc)
            raise
        telemetry.observe_activity(name, tuple(input.args), result)
        return result


# ---- Temporal SDK metrics, drained from a buffer ---------------------------------------------


class SdkMetrics(Collector):
    """Temporal core's metrics, kept from a `MetricBuffer` and exposed as Prometheus families."""

    def __init__(self, buffer: MetricBuffer) -> None:
        self.buffer = buffer
        # name -> (kind, description, {labels tuple -> value or [bucket counts..., sum, count]})
        self._series: dict[str, tuple[int, str, dict[tuple[tuple[str, str], ...], Any]]] = {}
        self._attrs: dict[int, tuple[Any, tuple[tuple[str, str], ...]]] = {}

    def drain(self) -> None:
        try:
            updates = self.buffer.retrieve_updates()
        except RuntimeError:  # the runtime is not created yet
            return
        for u in updates:
            m = u.metric
            key = id(u.attributes)
            cached = self._attrs.get(key)
            if cached is None or cached[0] is not u.attributes:
                labels = tuple(sorted((str(k), str(v)) for k, v in u.attributes.items()))
                self._attrs[key] = (u.attributes, labels)
            else:
                labels = cached[1]
            kind, _, series = self._series.setdefault(m.name, (m.kind, m.description or m.name, {}))
            if kind == BUFFERED_METRIC_KIND_COUNTER:
                series[labels] = series.get(labels, 0) + u.value
            elif kind == BUFFERED_METRIC_KIND_GAUGE:
                series[labels] = u.value
            else:
                h = series.setdefault(labels, [0] * len(SDK_BUCKETS) + [0.0, 0])
                for i, bound in enumerate(SDK_BUCKETS):
                    if u.value <= bound:
                        h[i] += 1
                h[-2] += u.value
                h[-1] += 1

    def collect(self) -> Iterable[Metric]:
        self.drain()
        for name, (kind, doc, series) in sorted(self._series.items()):
            names = sorted({k for labels in series for k, _ in labels})
            fam: Metric
            if kind == BUFFERED_METRIC_KIND_COUNTER:
                fam = CounterMetricFamily(name, doc, labels=names)
            elif kind == BUFFERED_METRIC_KIND_GAUGE:
                fam = GaugeMetricFamily(name, doc, labels=names)
            else:
                fam = HistogramMetricFamily(name, doc, labels=names)
            for labels, value in series.items():
                d = dict(labels)
                values = [d.get(n, "") for n in names]
                if isinstance(fam, HistogramMetricFamily):
                    buckets = [(str(b), float(value[i])) for i, b in enumerate(SDK_BUCKETS)]
                    buckets.append(("+Inf", float(value[-1])))
                    fam.add_metric(values, buckets, float(value[-2]))
                else:
                    fam.add_metric(values, float(value))
            yield fam


# ---- the collector: what the workflows hold, through visibility and queries -----------------


@dataclass(frozen=True)
class CollectorSettings:
    interval: float = 30.0  # seconds between collections
    max_rollouts: int = 1000  # open rollouts listed (and queried) per collection
    concurrency: int = 8  # status queries in flight at once

    @classmethod
    def from_env(cls) -> CollectorSettings:
        """ROLLOUT_COLLECT_INTERVAL (seconds), ROLLOUT_COLLECT_MAX, ROLLOUT_COLLECT_CONCURRENCY."""
        d = cls()
        try:
            return cls(
                interval=max(0.1, float(os.environ.get("ROLLOUT_COLLECT_INTERVAL", d.interval))),
                max_rollouts=max(1, int(os.environ.get("ROLLOUT_COLLECT_MAX", d.max_rollouts))),
                concurrency=max(1, int(os.environ.get("ROLLOUT_COLLECT_CONCURRENCY", d.concurrency))),
            )
        except ValueError as exc:
            raise ValueError(f"bad ROLLOUT_COLLECT_* setting: {exc}") from None


class WorkerTelemetry:
    """Everything `rollout worker --metrics-address` serves."""

    def __init__(self, queue: str, identity: str, settings: CollectorSettings | None = None) -> None:
        self.queue = queue
        self.identity = identity
        self.settings = settings or CollectorSettings.from_env()
        self.buffer = MetricBuffer(200_000, MetricBufferDurationFormat.SECONDS)
        self.runtime = Runtime(telemetry=TelemetryConfig(metrics=self.buffer))
        self.sdk = SdkMetrics(self.buffer)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.sdk)
        r = self.registry
        self.exposure_info = Gauge(
            "rollout_exposure_info", "1 for each open rollout and the stage whose scope is in force",
            ["rollout", "stage"], registry=r,
        )
        self.rollouts = Gauge("rollout_rollouts", "Open rollouts by status and stage", ["status", "stage"], registry=r)
        self.pollers = Gauge(
            "rollout_task_queue_pollers", "Pollers Temporal has seen recently on the task queue",
            ["task_queue", "type"], registry=r,
        )
        self.last_success = Gauge(
            "rollout_collector_last_success_timestamp_seconds", "When the collector last completed", registry=r
        )
        self.errors = Counter("rollout_collector_errors", "Failed collections and status queries", ["what"], registry=r)
        self.truncated = Gauge(
            "rollout_collector_truncated", "1 when more rollouts were open than the collector lists", registry=r
        )
        for what in ("list", "query", "pollers"):
            self.errors.labels(what)
        self.worker: Running | None = None
        self.client: Client | None = None
        self.polling = False  # our identity seen among the task queue's pollers

    # -- collection --

    async def collect_once(self, client: Client) -> None:
        """One collection: list open rollouts, query their exposure, count the pollers."""
        s = self.settings
        listed: list[Any] = []
        query = f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
        try:
            async for wf in client.list_workflows(query, limit=s.max_rollouts + 1, rpc_timeout=RPC_TIMEOUT):
                listed.append(wf)
        except Exception as exc:
            self.errors.labels("list").inc()
            log.warning("collector: cannot list rollouts: %s", exc)
            raise
        truncated = len(listed) > s.max_rollouts
        listed = listed[: s.max_rollouts]
        sem = asyncio.Semaphore(max(1, s.concurrency))

        async def exposure(wf: Any) -> tuple[str, str] | None:
            async with sem:
                try:
                    st = await client.get_workflow_handle(wf.id, run_id=wf.run_id).query(
                        "status", rpc_timeout=RPC_TIMEOUT
                    )
                except Exception as exc:
                    self.errors.labels("query").inc()
                    log.info("collector: status of %s not answered: %s", wf.id, exc)
                    return None
            if not isinstance(st, dict):
                return None
            name, stage = st.get("name"), st.get("exposure_stage")
            if isinstance(name, str) and isinstance(stage, str) and stage:
                return name, stage
            return None

        exposures = await asyncio.gather(*(exposure(wf) for wf in listed))
        counts: dict[tuple[str, str], int] = {}
        for wf in listed:
            attrs = wf.search_attributes or {}
            status = (attrs.get("RolloutStatus") or ["unknown"])[0]
            stage = (attrs.get("RolloutStage") or ["unknown"])[0]
            counts[(str(status), str(stage))] = counts.get((str(status), str(stage)), 0) + 1
        pollers = await self._pollers(client)
        # set everything at once (no await below): a scrape never sees half a collection
        self.exposure_info.clear()
        for found in {e for e in exposures if e is not None}:
            self.exposure_info.labels(*found).set(1)
        self.rollouts.clear()
        for (status, stage), n in counts.items():
            self.rollouts.labels(status, stage).set(n)
        if pollers is not None:
            for kind, n in pollers.items():
                self.pollers.labels(self.queue, kind).set(n)
        self.truncated.set(1 if truncated else 0)
        self.last_success.set(time.time())

    async def _pollers(self, client: Client) -> dict[str, int] | None:
        out: dict[str, int] = {}
        seen_self = False
        try:
            for kind, tq_type in (("workflow", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
                                  ("activity", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)):
                resp = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace, task_queue=TaskQueue(name=self.queue), task_queue_type=tq_type
                    ),
                    timeout=RPC_TIMEOUT,
                )
                out[kind] = len(resp.pollers)
                seen_self = seen_self or any(p.identity == self.identity for p in resp.pollers)
        except Exception as exc:
            self.errors.labels("pollers").inc()
            log.info("collector: cannot describe task queue %s: %s", self.queue, exc)
            return None
        self.polling = seen_self
        return out

    async def run_collector(self, client: Client) -> None:
        """Collect every `interval` seconds until cancelled; a failed round is logged and retried."""
        while True:
            with contextlib.suppress(Exception):
                await self.collect_once(client)
            await asyncio.sleep(self.settings.interval)

    # -- health --

    async def readiness(self) -> tuple[bool, str]:
        if self.worker is None or not self.worker.is_running:
            return False, "the worker is not running"
        if self.client is None:
            return False, "not connected to Temporal"
        try:
            if not await self.client.service_client.check_health(timeout=RPC_TIMEOUT):
                return False, "Temporal's workflow service is not serving"
        except Exception as exc:
            return False, f"Temporal unreachable: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
        if not self.polling:
            await self._pollers(self.client)
        if not self.polling:
            return False, f"not yet seen polling task queue {self.queue}"
        return True, f"polling task queue {self.queue}"

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(telemetry.REGISTRY)

    def app(self) -> Starlette:
        async def metrics(request: Request) -> Response:
            return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)

        async def healthz(request: Request) -> Response:
            return JSONResponse({"ok": True})

        async def readyz(request: Request) -> Response:
            ok, reason = await self.readiness()
            return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

        return Starlette(routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ])

    @contextlib.asynccontextmanager
    async def serving(self, address: str, client: Client, worker: Running) -> AsyncIterator[None]:
        """Serve on `address` (HOST:PORT) and run the collector while the block runs.
        The socket is bound here, so a port in use raises OSError at once."""
        import uvicorn

        self.client, self.worker = client, worker
        sock = bind(address)
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", access_log=False)

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        server = _Server(config)
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        drain_task = asyncio.create_task(self._drain_loop())
        collect_task = asyncio.create_task(self.run_collector(client))
        try:
            yield
        finally:
            server.should_exit = True
            for t in (collect_task, drain_task):
                t.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(serve_task, timeout=5)
            for t in (collect_task, drain_task):
                with contextlib.suppress(BaseException):
                    await t
            sock.close()

    async def _drain_loop(self) -> None:
        while True:  # keep the SDK's buffer from filling between scrapes
            self.sdk.drain()
            await asyncio.sleep(1.0)


def bind(address: str) -> socket.socket:
    """A listening socket for HOST:PORT (`[::1]:9464` for IPv6)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # an explicit ":PORT" means every interface
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["ActivityTelemetry", "CollectorSettings", "SdkMetrics", "WorkerTelemetry", "bind"]
