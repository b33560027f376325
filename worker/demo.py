"""`make demo`: a whole rollout on the embedded stack, narrated, in about a minute.

Starts Temporal's dev server, the worker and the Alertmanager receiver (as `rollout dev`
does, on free ports and a throw-away database), an example exposure target (a signed
webhook receiver) and runs examples/support-reply-agent.yaml with short windows:
approvals by the named approvers (and a refused self-approval), an alert from
"Alertmanager" that holds the rollout, the incident-response owner's resume, handoffs,
completion, then the audit trail and its verification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from rollout import timefmt
from rollout.errors import RefusedError
from rollout.plan import load_plan, validate_plan_data
from rollout.status_view import status_line
from worker import client as rc
from worker.devstack import PortInUse, Stack, embedded_stack, free_ports
from worker.example_target import create_app, running

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-reply-agent.yaml"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}>> {text}{RESET}", flush=True)


async def live_view(client: Any, wid: str, stop: asyncio.Event) -> None:
    last = ""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            st = await rc.status(client, wid)
            line = status_line(st)  # changes with the state only
            if line != last:
                now = datetime.now(UTC)
                zone = now.astimezone().tzinfo
                print(f"   {DIM}[{timefmt.local(now, now, zone)}]{RESET} {status_line(st, now, zone)}", flush=True)
                last = line
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.4)


async def until(client: Any, wid: str, pred: Any, within: float = 120) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        st = await rc.status(client, wid)
        if pred(st):
            return st
        await asyncio.sleep(0.3)
    raise TimeoutError(f"the demo rollout did not reach the expected state in {within}s")


async def act(client: Any, wid: str, action: str, **payload: Any) -> None:
    who = payload.get("actor")
    await rc.act(client, wid, action, payload)
    what = payload.get("role") or payload.get("item") or payload.get("reason") or ""
    print(f"   {who}: {action} {what}".rstrip(), flush=True)


@contextlib.asynccontextmanager
async def demo_stack(tmp: Path, attempts: int = 3) -> AsyncIterator[Stack]:
    """The embedded stack on free ports. The receiver's port is bound by the stack itself;
    the dev server binds its own, so a port taken in between is retried on fresh ones."""
    for attempt in range(1, attempts + 1):
        port, ui_port = free_ports(2)
        try:
            cm = embedded_stack(db=tmp / "temporal.db", port=port, ui_port=ui_port, http_port=0)
            stack = await cm.__aenter__()
        except PortInUse as exc:
            if attempt == attempts:
                raise
            print(f"   ({exc.message}; retrying on other ports)", flush=True)
            continue
        try:
            yield stack
        except BaseException:
            if not await cm.__aexit__(*sys.exc_info()):
                raise
        else:
            await cm.__aexit__(None, None, None)
        return


async def demo(window: str) -> int:
    secret = secrets.token_hex(16)
    os.environ["ROLLOUT_WEBHOOK_SECRET"] = secret
    tmp = Path(tempfile.mkdtemp(prefix="rollout-demo-"))
    os.environ.setdefault("ROLLOUT_DB_URL", f"sqlite+aiosqlite:///{tmp / 'audit.db'}")
    async with running(create_app(secret)) as target_url, demo_stack(tmp) as stack:
        client = stack.client
        print(f"Temporal UI:     {stack.ui}   (open it to see the workflow and its history)")
        print(f"Example target:  {target_url}/   (the scope in force, as the target sees it)")
        print(f"Receiver:        http://127.0.0.1:{stack.http_port}/alertmanager")

        base = load_plan(EXAMPLE).model_dump(mode="json", by_alias=True)
        base["target"] = {"kind": "webhook", "url": f"{target_url}/exposure", "secret_env": "ROLLOUT_WEBHOOK_SECRET"}
        base["notify"] = [{"kind": "webhook", "url": f"{target_url}/notify", "secret_env": "ROLLOUT_WEBHOOK_SECRET"}]
        for stage in base["stages"]:
            stage["window"] = window
        plan = validate_plan_data(base)
        owners = plan.owners

        say(f"alice (rollout owner) starts {plan.name}: pilot 5% -> limited 25% -> system of record, windows {window}")
        handle = await rc.start(client, plan, workflow_id=f"rollout-{plan.name}-{secrets.token_hex(3)}",
                                started_by=owners.rollout)
        wid = handle.id
        stop = asyncio.Event()
        viewer = asyncio.create_task(live_view(client, wid, stop))
        try:
            await until(client, wid, lambda s: s["status"] == "awaiting_approval")
            say("alice tries to approve her own rollout (she is also listed as an engineer elsewhere): refused")
            try:
                await rc.act(client, wid, "approve", {"actor": owners.rollout, "stage": "pilot", "role": "engineering"})
            except RefusedError as exc:
                print(f"   refused: {exc.message}")
            say("frank approves the pilot for engineering: the pilot's scope goes to the target")
            await act(client, wid, "approve", actor="frank@example.com", stage="pilot", role="engineering",
                      comment="eval suite green")
            await until(client, wid, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")

            say("the pilot's window was clean: gina (engineering) and hank (operations) approve limited-25")
            await act(client, wid, "approve", actor="gina@example.com", stage="limited-25", role="engineering")
            await act(client, wid, "approve", actor="hank@example.com", stage="limited-25", role="operations")
            await until(client, wid, lambda s: s["stage"] == "limited-25" and s["window_ends_at"] is not None)

            say("Alertmanager fires AgentErrorRate for the rollout: the receiver turns it into a breach -> hold")
            alert = {
                "version": "4", "groupKey": "{}:{rollout=\"demo\"}", "status": "firing", "receiver": "rollout",
                "alerts": [{
                    "status": "firing",
                    "labels": {"alertname": "AgentErrorRate", "rollout": wid, "threshold": "error_rate"},
                    "annotations": {"value": "0.07", "summary": "error rate 7% > 2%"},
                    "startsAt": datetime.now(UTC).isoformat(), "fingerprint": "demo",
                }],
            }
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{stack.http_port}/alertmanager", json=alert,
                                    headers={"Authorization": f"Bearer {stack.token}"})
                print(f"   receiver answered {r.status_code}")
            st = await until(client, wid, lambda s: s["status"] == "held" and s["escalation"] is not None)
            print(f"   paged {', '.join(st['escalation']['pages'][0]['recipients'])}; window stopped")

            say("carol (incident response) acknowledges, finds a bad deploy upstream, and resumes")
            await act(client, wid, "acknowledge", actor=owners.incident_response, escalation=True)
            await act(client, wid, "resume", actor=owners.incident_response, reason="upstream fix deployed")
            say("the window restarts from zero; hank acknowledges the stage's handoff meanwhile")
            await act(client, wid, "acknowledge", actor="hank@example.com", item="Support leads briefed on agent replies")
            await until(client, wid, lambda s: s["stage"] == "system-of-record", within=180)

            say("system of record needs risk, engineering and operations: erin, frank, hank approve")
            for role, who in (("risk", "erin@example.com"), ("engineering", "frank@example.com"),
                              ("operations", "hank@example.com")):
                await act(client, wid, "approve", actor=who, stage="system-of-record", role=role)
            say("ownership handoff: operations takes the on-call rota and the runbook")
            await act(client, wid, "acknowledge", actor="hank@example.com", item="On-call rota includes the agent")
            await act(client, wid, "acknowledge", actor="hank@example.com", item="Runbook reviewed")
            st = await until(client, wid, lambda s: s["status"] == "completed", within=180)
        finally:
            stop.set()
            await viewer

        say("completed. What the target has in force:")
        async with httpx.AsyncClient() as http:
            seen = (await http.get(f"{target_url}/exposure")).json()
        print(f"   {seen}")
        say("the audit trail (also in Temporal history); `rollout audit ID --format md` prints the full report")
        from activities.audit_store import AuditStore

        store = AuditStore.from_env()
        try:
            for _ in range(50):
                rows = await store.read(wid)
                if rows and rows[-1].event.action == "completed":
                    break
                await asyncio.sleep(0.2)
            for row in rows:
                ev = row.event
                print(f"   {ev.seq:>3} {ev.at:%H:%M:%S} {ev.action:<24} {ev.actor or '':<22} {ev.stage or ''}")
            report = await store.verify(wid)
            print(f"   hash chain intact: {report.ok}")
        finally:
            await store.close()
        print(f"\nDone. Status: {st['status']}, exposure {st['exposure']['percent']:g}%.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="run the narrated example rollout")
    parser.add_argument("--window", default="6s", help="reliability window of every stage (default 6s)")
    args = parser.parse_args()
    try:
        code = asyncio.run(demo(args.window))
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
