"""Approval inbox render time.

1. Template cost with 1,000 open rollouts: `build_view` + the full `/inbox` page for one
   approver, from 1,000 synthetic `status` objects (a tenth awaiting an approval the
   approver may give, the rest soaking, held or awaiting others), repeated `--repeat`
   times.
2. Against a real Temporal dev server (127.0.0.1, free port) with the real worker and
   `--rollouts` rollouts: the first read (listing + `status` queries + plans read from
   history), a full refresh with plans cached, and the page over HTTP from the
   receiver's app as a person gets it (served from the last read while the next one
   runs in the background).

Prints one JSON object.

    .venv/bin/python -m bench.inbox_render [--synthetic 1000] [--rollouts 30] [--repeat 20]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import copy
import os
import tempfile
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from bench.common import emit, machine, stdout_to_stderr, summary_ms, tool_path
from rollout.plan import Plan, validate_plan_data
from tests import plans
from worker import client as rollout_client
from worker.example_target import running
from worker.inbox import TEMPLATES, Inbox, InboxConfig, RolloutInfo, RolloutReader, build_view, sign_in_link
from worker.main import build_worker
from worker.receiver import create_app
from workflows import search_attrs

ME = plans.ENG1


def synthetic(p: Plan, i: int) -> dict[str, Any]:
    """A status object of the shape the workflow's `status` query returns."""
    kind = i % 10
    stage = p.stages[1 if kind in (1, 2, 3) else 0]
    st: dict[str, Any] = {
        "workflow_id": f"rollout-bench-{i:04d}",
        "name": f"bench-{i:04d}",
        "plan_hash": p.plan_hash(),
        "owners": p.owners.by_key(),
        "stage": stage.name,
        "status": "awaiting_approval" if kind in (0, 1) else ("held" if kind == 2 else "soaking"),
        "exposure": {"percent": 5, "segments": ["internal"], "authority": p.effective_authority(0)},
        "exposure_stage": "pilot" if kind != 0 else None,
        "window_ends_at": "2030-01-04T00:00:00+00:00" if kind >= 3 else None,
        "window_coverage": {"error_rate": 0.97},
        "exposure_clean": True,
        "approvals": {"stage": stage.name, "entry": 1, "awaiting_since": "2030-01-01T00:00:00+00:00", "given": {},
                      "missing": list(stage.approvals.roles)},
        "pending_handoff": [],
        "open_breaches": [],
        "escalation": None,
        "pending_amendment": None,
        "target_pending": None,
        "refused": [],
    }
    if kind == 1:  # ENG1 already approved this entry: not theirs any more
        st["approvals"]["given"] = {"engineering": {"role": "engineering", "actor": ME, "at": "2030-01-01T00:00:00Z"}}
        st["approvals"]["missing"] = ["operations"]
    if kind == 2:
        st["hold"] = {"kind": "hold", "reason": "error_rate", "interrupted": "soaking"}
        st["escalation"] = {"reason": "error_rate 0.05 > 0.02", "level": 1, "acknowledged_by": None,
                            "pages": [{"recipients": [plans.IR], "at": "2030-01-01T00:00:00Z"}]}
        st["open_breaches"] = [{"threshold": "error_rate", "action": "hold",
                                "evidence": {"source": "prometheus", "value": 0.05}}]
    return st


def template_cost(count: int, repeat: int) -> dict[str, Any]:
    p = validate_plan_data(plans.plan_dict())
    infos = [RolloutInfo(f"rollout-bench-{i:04d}", synthetic(p, i), plan=p) for i in range(count)]
    template = TEMPLATES.get_template("inbox.html")
    me = {"name": ME, "via": "link"}
    view_s: list[float] = []
    render_s: list[float] = []
    size = 0
    waiting = 0
    for _ in range(repeat):
        t = time.perf_counter()
        view = build_view(ME, copy.copy(infos))
        t1 = time.perf_counter()
        html = template.render(view=view, me=me, csrf="x" * 40, flashes=[], public_url="http://127.0.0.1:9095",
                               generated_at="now", elapsed_ms=0.0, poll_seconds=5)
        t2 = time.perf_counter()
        view_s.append(t1 - t)
        render_s.append(t2 - t1)
        size, waiting = len(html), view.waiting
    total = [a + b for a, b in zip(view_s, render_s, strict=True)]
    return {"rollouts": count, "waiting_on_identity": waiting, "html_bytes": size,
            "build_view": summary_ms(view_s), "render": summary_ms(render_s), "total": summary_ms(total)}


async def dev_server(count: int, repeat: int) -> dict[str, Any]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, search_attributes=search_attrs.ALL,
        dev_server_existing_path=tool_path("temporal"), dev_server_log_level="error", ip="127.0.0.1",
    )
    tmp = tempfile.TemporaryDirectory(prefix="bench-inbox-")
    store = AuditStore.from_url(f"sqlite+aiosqlite:///{Path(tmp.name) / 'audit.db'}")
    try:
        await store.migrate()
        queue = f"bench-inbox-{uuid.uuid4().hex[:8]}"
        os.environ["ROLLOUT_TASK_QUEUE"] = queue
        client = env.client
        run = uuid.uuid4().hex[:6]
        async with build_worker(client, store, queue=queue):
            for i in range(count):
                p = validate_plan_data(plans.plan_dict(name=f"bench-{run}-{i}"))
                await rollout_client.start(client, p, started_by=p.owners.rollout)
            deadline = time.monotonic() + 60
            while True:  # every rollout visible to the listing
                listed = [wf async for wf in client.list_workflows("WorkflowType = 'StagedRollout' AND ExecutionStatus = 'Running'")]
                if len(listed) >= count or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            reader = RolloutReader(client)
            t = time.perf_counter()
            await reader.snapshot()
            cold_s = time.perf_counter() - t
            warm_s: list[float] = []
            for _ in range(repeat):  # a full refresh (list + every status query), plans cached
                reader.invalidate()
                t = time.perf_counter()
                await reader.snapshot()
                warm_s.append(time.perf_counter() - t)
            secret = uuid.uuid4().hex.encode()
            config = InboxConfig(secret=secret, trusted_proxy=None, public_url=None, state_dir=Path(tmp.name), poll_seconds=5)
            app = create_app(client, "bench", routes=Inbox(client, config).routes())
            page_s: list[float] = []
            async with running(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
                link = sign_in_link(secret, ME, timedelta(minutes=5), base)
                await http.post("/inbox/login", data={"token": parse_qs(urlsplit(link).query)["token"][0]})
                for _ in range(repeat):
                    await asyncio.sleep(0.5)  # as a person polling: refreshes run in the background
                    t = time.perf_counter()
                    r = await http.get("/inbox")
                    page_s.append(time.perf_counter() - t)
                    r.raise_for_status()
        return {"rollouts": count, "listed": len(listed), "first_read_ms": round(cold_s * 1000, 1),
                "full_refresh": summary_ms(warm_s), "page_over_http": summary_ms(page_s)}
    finally:
        await store.close()
        await env.shutdown()
        tmp.cleanup()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "inbox_render", "machine": machine(),
                              "template_cost": template_cost(args.synthetic, args.repeat)}
    if args.rollouts > 0:
        result["dev_server"] = await dev_server(args.rollouts, args.repeat)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", type=int, default=1000)
    parser.add_argument("--rollouts", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with stdout_to_stderr():  # the dev server's banner must not mix with the JSON
        result = asyncio.run(main_async(args))
    emit(result)


if __name__ == "__main__":
    main()
