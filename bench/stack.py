"""What the issue-13 benchmarks share: the Temporal side, the webhook target they serve,
the plan, and getting N rollouts soaking.

- `BenchTarget`: the exposure target (`POST /exposure`, signed as activities/targets/webhook.py
  sends it) and notification sink (`POST /notify`) served by the benchmark on 127.0.0.1. It
  records when each request arrived and lets a caller wait for a rollout's containment
  request (a change of kind `hold`, `narrow` or `rollback`).
- `Stack`: without `TEMPORAL_ADDRESS`, Temporal's dev server, a worker from `build_worker`
  (temporary SQLite audit store) and the Alertmanager receiver (`worker.receiver.create_app`),
  all started here and stopped on exit; with it, that server and the worker found on its task
  queue (`ROLLOUT_TASK_QUEUE`, default `rollouts`), and the receiver at `ROLLOUT_RECEIVER_URL`
  (token `ROLLOUT_RECEIVER_TOKEN`; without a URL one is served here, on that server).
- `soak`: start rollouts of the 3-stage test plan as their owner, approve the pilot, and wait
  until each target acknowledged the pilot's scope (window running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from activities.signing import SIGNATURE_HEADER, SignatureError, verify_signature
from bench.common import tool_path
from rollout.plan import Plan, validate_plan_data
from tests import plans
from worker import client as rollout_client
from worker.connect import connect, task_queue
from worker.example_target import running
from worker.main import build_worker
from workflows import search_attrs

_T0 = time.perf_counter()


def progress(msg: str) -> None:
    """One progress line on stderr (stdout is for the JSON)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


SECRET_ENV = "ROLLOUT_WEBHOOK_SECRET"  # noqa: S105 - the env var's name
CONTAINMENT = ("hold", "narrow", "rollback")


@dataclass
class Arrival:
    at: float  # time.perf_counter() when the request arrived
    doc: dict[str, Any]


@dataclass
class BenchTarget:
    """The webhook target and notification sink, in memory."""

    secret: str | None
    changes: dict[str, list[Arrival]] = field(default_factory=dict)  # rollout id -> requests, in order
    notes: list[Arrival] = field(default_factory=list)
    bad_signatures: int = 0
    _waiters: dict[str, list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[float]]]] = field(
        default_factory=dict
    )

    def app(self) -> Starlette:
        async def exposure(request: Request) -> Response:
            at = time.perf_counter()
            body = await request.body()
            if self.secret is not None:
                try:
                    verify_signature(body, request.headers.get(SIGNATURE_HEADER), self.secret)
                except SignatureError as exc:
                    self.bad_signatures += 1
                    return JSONResponse({"error": f"signature: {exc}"}, status_code=401)
            doc = json.loads(body)
            rid = str(doc.get("rollout"))
            self.changes.setdefault(rid, []).append(Arrival(at, doc))
            for pred, fut in list(self._waiters.get(rid, [])):
                if not fut.done() and pred(doc):
                    fut.set_result(at)
                    self._waiters[rid].remove((pred, fut))
            return JSONResponse({"applied": True})

        async def notify(request: Request) -> Response:
            self.notes.append(Arrival(time.perf_counter(), json.loads(await request.body())))
            return JSONResponse({"received": True})

        return Starlette(routes=[Route("/exposure", exposure, methods=["POST"]),
                                 Route("/notify", notify, methods=["POST"])])

    def expect(self, rollout_id: str, pred: Callable[[dict[str, Any]], bool]) -> asyncio.Future[float]:
        """A future set to the arrival time of the next request for `rollout_id` matching `pred`."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(rollout_id, []).append((pred, fut))
        return fut

    def contained(self, rollout_id: str) -> list[Arrival]:
        """Containment requests received for a rollout (distinct idempotency keys)."""
        seen: dict[str, Arrival] = {}
        for a in self.changes.get(rollout_id, []):
            if a.doc.get("kind") in CONTAINMENT:
                seen.setdefault(str(a.doc.get("idempotency_key")), a)
        return list(seen.values())

    def pages(self) -> list[Arrival]:
        return [n for n in self.notes if n.doc.get("page")]


def is_containment(doc: dict[str, Any]) -> bool:
    return doc.get("kind") in CONTAINMENT


def plan_for(name: str, target_url: str, *, stage_thresholds: list[dict[str, Any]] | None = None,
             metrics: dict[str, Any] | None = None, pilot_window: str | None = None) -> Plan:
    """The 3-stage test plan (tests/plans.py) with the bench's webhook target and notifier."""
    d = plans.plan_dict(name=name)
    d["target"] = {"kind": "webhook", "url": f"{target_url}/exposure", "secret_env": SECRET_ENV}
    d["notify"] = [{"kind": "webhook", "url": f"{target_url}/notify"}]
    if stage_thresholds is not None:
        d["metrics"] = metrics or {}
        d["stages"][0]["thresholds"] = stage_thresholds
    if pilot_window is not None:
        d["stages"][0]["window"] = pilot_window
    return validate_plan_data(d)


async def bounded(n: int, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


@dataclass
class Stack:
    client: Client
    queue: str
    target: BenchTarget
    target_url: str
    receiver_url: str
    receiver_token: str
    external: bool  # TEMPORAL_ADDRESS: the server and worker were found, not started
    address: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    store: AuditStore | None = None


def _ensure_secret() -> str:
    if not os.environ.get(SECRET_ENV):
        os.environ[SECRET_ENV] = secrets.token_hex(16)  # our own worker reads it from here
    return os.environ[SECRET_ENV]


@contextlib.asynccontextmanager
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        search_attributes=search_attrs.ALL,
        dev_server_existing_path=tool_path("temporal"),
        dev_server_log_level="error",
        ip="127.0.0.1",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def stack(*, own_worker: bool = True, receiver: bool = False) -> AsyncIterator[Stack]:
    """The Temporal side plus the bench target (and the receiver when asked).

    `own_worker=False` starts the dev server but no worker (a caller running worker
    processes of its own)."""
    secret = _ensure_secret()
    target = BenchTarget(secret=secret)
    async with contextlib.AsyncExitStack() as es:
        target_url = await es.enter_async_context(running(target.app()))
        external = bool(os.environ.get("TEMPORAL_ADDRESS"))
        store: AuditStore | None = None
        if external:
            client = await connect(identity=f"bench@{os.getpid()}")
            queue = task_queue()
            address = os.environ["TEMPORAL_ADDRESS"]
        else:
            env = await es.enter_async_context(dev_server())
            client = env.client
            address = client.service_client.config.target_host
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            os.environ["ROLLOUT_TASK_QUEUE"] = queue  # worker.client.start reads it
            if own_worker:
                tmp = es.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
                store = AuditStore.from_url(f"sqlite+aiosqlite:///{Path(tmp) / 'audit.db'}")
                es.push_async_callback(store.close)
                await store.migrate()
                await es.enter_async_context(build_worker(client, store, queue=queue))
        receiver_url = os.environ.get("ROLLOUT_RECEIVER_URL", "") if external else ""
        token = os.environ.get("ROLLOUT_RECEIVER_TOKEN", "") if receiver_url else secrets.token_hex(16)
        if receiver and not receiver_url:
            from worker.receiver import create_app

            receiver_url = await es.enter_async_context(running(create_app(client, token)))
        yield Stack(client=client, queue=queue, target=target, target_url=target_url, receiver_url=receiver_url,
                    receiver_token=token, external=external, address=address, store=store)


def soaking(st: dict[str, Any]) -> bool:
    return (st.get("status") == "soaking" and st.get("exposure_stage") == "pilot"
            and st.get("window_ends_at") is not None and st.get("target_pending") is None)


async def soak(
    s: Stack,
    n: int,
    *,
    concurrency: int = 20,
    budget_s: float = 300.0,
    plan_kwargs: dict[str, Any] | None = None,
    prefix: str = "b",
) -> tuple[list[WorkflowHandle[Any, Any]], dict[str, float]]:
    """Start n rollouts as their owner, approve each pilot, wait until every one is soaking with
    its pilot scope acknowledged by the target. Returns the handles and phase times."""
    handles: list[WorkflowHandle[Any, Any]] = []
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def starter(i: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            plan = plan_for(f"bench-{s.run}-{prefix}{i}", s.target_url, **(plan_kwargs or {}))
            h = await rollout_client.start(s.client, plan, started_by=plan.owners.rollout)
            entered = s.target.expect(h.id, lambda d: d.get("kind") == "promote" and d.get("stage") == "pilot")
            await h.execute_update("approve", {"actor": plans.ENG1, "stage": "pilot", "role": "engineering",
                                               "comment": "bench"}, result_type=dict)
            await asyncio.wait_for(entered, budget_s)
            handles.append(h)
            if len(handles) % 100 == 0:
                progress(f"{len(handles)}/{n} rollouts entered the pilot")

        return job

    await asyncio.wait_for(bounded(concurrency, [starter(i) for i in range(n)]), budget_s)
    times["start_and_enter_s"] = round(time.perf_counter() - t0, 2)
    progress(f"{n} rollouts entered the pilot in {times['start_and_enter_s']} s; confirming the windows run")
    # the target's answer lands in the workflow a moment after it was sent: wait for the window
    t1 = time.perf_counter()
    pending = list(handles)
    deadline = time.monotonic() + budget_s
    while pending and time.monotonic() < deadline:
        left: list[WorkflowHandle[Any, Any]] = []

        def checker(h: WorkflowHandle[Any, Any], out: list[WorkflowHandle[Any, Any]]) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                st: dict[str, Any] = await h.query("status", result_type=dict)
                if not soaking(st):
                    out.append(h)

            return job

        await bounded(50, [checker(h, left) for h in pending])
        pending = left
        if pending:
            await asyncio.sleep(0.2)
    if pending:
        raise RuntimeError(f"{len(pending)} rollouts not soaking within {budget_s:.0f}s")
    times["confirm_soaking_s"] = round(time.perf_counter() - t1, 2)
    progress(f"{n} rollouts soaking (confirmed in {times['confirm_soaking_s']} s)")
    handles.sort(key=lambda h: h.id)
    return handles, times


def breach_payload(threshold: str = "error_rate", source: str = "bench") -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"source": source, "threshold": threshold, "value": 0.5, "action": "hold",
            "observed_at": datetime.now(UTC).isoformat(), "detail": {"bench": True}}



async def activity_timings(handles: list[WorkflowHandle[Any, Any]], signal_name: str = "report_breach",
                           sample: int = 30) -> dict[str, Any]:
    """Where the time goes after a signal, from the histories of up to `sample` rollouts: per
    activity type, scheduled→started (waiting for a worker slot or poller) and started→closed
    (running), and signal→first workflow task completed, in milliseconds (p50 / max)."""
    from temporalio.api.enums.v1 import EventType as ET

    waits: dict[str, list[float]] = {}
    runs: dict[str, list[float]] = {}
    first_task: list[float] = []
    for h in handles[:sample]:
        hist = await h.fetch_history()
        sig_at: float | None = None
        sched: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        for ev in hist.events:
            t = ev.event_time.ToDatetime().timestamp()
            if ev.event_type == ET.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED and sig_at is None:
                if ev.workflow_execution_signaled_event_attributes.signal_name == signal_name:
                    sig_at = t
                continue
            if sig_at is None:
                continue
            if ev.event_type == ET.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                sched[ev.event_id] = (ev.activity_task_scheduled_event_attributes.activity_type.name, t)
            elif ev.event_type == ET.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started[ev.activity_task_started_event_attributes.scheduled_event_id] = t
            elif ev.event_type in (ET.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, ET.EVENT_TYPE_ACTIVITY_TASK_FAILED):
                attrs = (ev.activity_task_completed_event_attributes
                         if ev.event_type == ET.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                         else ev.activity_task_failed_event_attributes)
                sid = attrs.scheduled_event_id
                if sid in sched and sid in started:
                    name, st = sched[sid]
                    waits.setdefault(name, []).append(started[sid] - st)
                    runs.setdefault(name, []).append(t - started[sid])
        for ev in hist.events:
            if sig_at is not None and ev.event_type == ET.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                t = ev.event_time.ToDatetime().timestamp()
                if t >= sig_at:
                    first_task.append(t - sig_at)
                    break

    def pct(v: list[float]) -> dict[str, Any]:
        v = sorted(v)
        return {"n": len(v), "p50_ms": round(v[len(v) // 2] * 1000, 1) if v else None,
                "max_ms": round(v[-1] * 1000, 1) if v else None}

    return {
        "rollouts_sampled": min(sample, len(handles)),
        "signal_to_workflow_task_completed": pct(first_task),
        "scheduled_to_started": {k: pct(v) for k, v in sorted(waits.items())},
        "started_to_closed": {k: pct(v) for k, v in sorted(runs.items())},
    }


class StackSampler:
    """A poor man's profiler for this process (client, worker, receiver, target): every
    `every` seconds, the innermost frame of the repository's own code (or of a library,
    when no own frame is on the stack) of each thread, counted. `top()` lists the places
    where this process spends its time, busy threads only (idle event loops and pollers
    are waiting in selectors and are left out)."""

    IDLE = ("selectors.py", "threading.py", "queue.py", "base_events.py:_run_once")

    def __init__(self, every: float = 0.005) -> None:
        import threading

        self.every = every
        self.counts: dict[str, int] = {}
        self.libs: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import threading

        root = str(Path(__file__).resolve().parent.parent)
        me = threading.get_ident()
        while not self._stop.wait(self.every):
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                leaf = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
                if any(leaf.startswith(i) or leaf == i for i in self.IDLE) or "select" in frame.f_code.co_name:
                    continue
                self.samples += 1
                own = None
                lib = None
                f: Any = frame
                while f is not None:
                    fn = f.f_code.co_filename
                    if lib is None and "site-packages" in fn:
                        lib = fn.split("site-packages/")[1].split("/")[0]
                    if own is None and fn.startswith(root) and "/.venv/" not in fn:
                        own = f"{Path(fn).relative_to(root)}:{f.f_code.co_name}"
                    f = f.f_back
                if own is None and lib in (None, "aiosqlite"):
                    continue  # an idle pool or connection thread waiting on its queue
                key = own or f"<{lib}> {leaf}"
                self.counts[key] = self.counts.get(key, 0) + 1
                self.libs[lib or "stdlib"] = self.libs.get(lib or "stdlib", 0) + 1

    def top(self, n: int = 15) -> dict[str, Any]:
        total = max(1, self.samples)
        return {
            "busy_samples": self.samples,
            "innermost_own_frame": [{"where": k, "share": round(v / total, 3)}
                                    for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]],
            "innermost_library": [{"lib": k, "share": round(v / total, 3)}
                                  for k, v in sorted(self.libs.items(), key=lambda kv: -kv[1])[:8]],
        }
