"""End to end from the CLI to real targets: a signed webhook receiver, a flagd file, Unleash.

Each scenario starts a rollout with `rollout start`, drives it with the CLI's approvals,
handoffs, holds, resumes and rollbacks (`cli.main.main` in a thread, as a person
would), against a real Temporal dev server and a worker from `build_worker`, with 2s
windows. Then it reads the target back the way its consumers do: the example webhook
receiver's applied changes and notifications, the OpenFeature flagd in-process provider
evaluating thousands of users, Unleash's admin API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from activities.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignatureError, sign, verify_signature
from cli.main import main
from tests import plans
from tests.flagd_support import flagd_clients
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK
from tests.unleash_support import TOKEN, TOKEN_ENV, Unleash, read_back, unleash_server
from worker.example_target import create_app, running

WINDOW = "2s"
SECRET_ENV = "ROLLOUT_E2E_WEBHOOK_SECRET"
USERS = [f"user-{i}@example.com" for i in range(3000)]

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def unleash(pg_url: str) -> AsyncIterator[Unleash]:
    async with unleash_server(pg_url, database=f"rollout_unleash_e2e_{uuid.uuid4().hex[:8]}") as server:
        yield server


@pytest.fixture
def flagd() -> Iterator[Callable[[Path], OpenFeatureClient]]:
    yield from flagd_clients("e2e-file")


@pytest.fixture
def timed(capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints the seconds the scenario took (past pytest's capture, so `-q` shows it)."""
    began = time.monotonic()
    yield
    with capsys.disabled():
        print(f"\n[e2e-targets] {request.node.name}: {time.monotonic() - began:.1f}s", flush=True)


# ---------------------------------------------------------------------------- helpers


class Cli:
    """Runs `rollout ...` as a person would, in a thread; a failure shows its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, *argv: str) -> str:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = self.capsys.readouterr()
        assert code == 0, f"rollout {' '.join(argv)} exited {code}: {err.strip() or out.strip()}"
        return out


async def wait_status(
    handle: WorkflowHandle[Any, Any], pred: Callable[[dict[str, Any]], bool], within: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = await handle.query("status", result_type=dict)
        if pred(st):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"not reached within {within}s: {st.get('status')} at {st.get('stage')}, exposure {st.get('exposure')}, "
        f"target_pending {st.get('target_pending')}"
    )


def applied(stage: str | None, status: str, percent: float) -> Callable[[dict[str, Any]], bool]:
    """The target acknowledged `stage`'s scope at `percent` and the rollout is in `status`."""
    return lambda st: (
        st["status"] == status
        and st["exposure_stage"] == stage
        and st["exposure"]["percent"] == percent
        and st["target_pending"] is None
    )


def awaiting(stage: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: st["stage"] == stage and st["status"] == "awaiting_approval"


def write_plan(tmp_path: Path, d: dict[str, Any]) -> Path:
    for st in d["stages"]:
        st["window"] = WINDOW
    path = tmp_path / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


async def start(cli: Cli, env: WorkflowEnvironment, path: Path, name: str) -> WorkflowHandle[Any, Any]:
    out = await cli("start", str(path), "--as", OWNER)
    assert f"rollout-{name}" in out
    return env.client.get_workflow_handle(f"rollout-{name}")


async def enter_pilot(cli: Cli, handle: WorkflowHandle[Any, Any], name: str) -> dict[str, Any]:
    await cli("approve", name, "--stage", "pilot", "--role", "engineering", "--as", ENG1, "--comment", "go")
    return await wait_status(handle, applied("pilot", "soaking", 5))


async def enter_limited(cli: Cli, handle: WorkflowHandle[Any, Any], name: str) -> dict[str, Any]:
    await wait_status(handle, awaiting("limited-25"))
    await cli("approve", name, "--stage", "limited-25", "--role", "engineering", "--as", ENG2)
    await cli("approve", name, "--stage", "limited-25", "--role", "operations", "--as", OPS)
    return await wait_status(handle, applied("limited-25", "soaking", 25))


# ---------------------------------------------------------------------------- 1. webhook


def readable_history(history_json: str) -> str:
    """The history JSON plus every payload's data decoded (payloads are base64 in it)."""
    decoded: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                decoded.append(base64.b64decode(node["data"]).decode("utf-8", errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history_json))
    return "\n".join([history_json, *decoded])


@dataclass
class Delivery:
    path: str
    key: str | None
    signed: bool
    verified: bool
    status: int = 0


@dataclass
class SignatureCheck:
    """An ASGI wrapper in front of the receiver: checks each request's signature on its
    own (with the documented verifier) and records the answer, then passes it on."""

    app: Any
    secret: str
    deliveries: list[Delivery] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        header = headers.get(SIGNATURE_HEADER.lower())
        try:
            verify_signature(body, header, self.secret)
            verified = True
        except SignatureError:
            verified = False
        delivery = Delivery(scope["path"], headers.get(IDEMPOTENCY_HEADER.lower()), header is not None, verified)
        self.deliveries.append(delivery)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            result: dict[str, Any] = await receive()
            return result

        async def record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                delivery.status = message["status"]
            await send(message)

        await self.app(scope, replay, record)


async def test_webhook_target_and_notifications_from_the_cli(
    cli_worker: AuditStore,
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    timed: None,
) -> None:
    secret = secrets.token_hex(24)
    monkeypatch.setenv(SECRET_ENV, secret)  # the worker signs with it; the plan names only the variable
    receiver = create_app(secret)
    checked = SignatureCheck(receiver, secret)
    example = receiver.state.example
    cli = Cli(capsys)
    async with running(checked) as base:
        # the receiver really checks: a forged request is refused and changes nothing
        async with httpx.AsyncClient() as http:
            forged = await http.post(
                f"{base}/exposure",
                content=b'{"rollout":"x","seq":1}',
                headers={SIGNATURE_HEADER: sign(b'{"rollout":"x","seq":1}', "not-the-secret"),
                         IDEMPOTENCY_HEADER: "x:1"},
            )
        assert forged.status_code == 401 and example.applied == []
        checked.deliveries.clear()

        name = f"e2e-webhook-{uuid.uuid4().hex[:6]}"
        d = plans.plan_dict(name)
        d["target"] = {"kind": "webhook", "url": f"{base}/exposure", "secret_env": SECRET_ENV, "timeout": "5s"}
        d["notify"] = [{"kind": "webhook", "url": f"{base}/notify", "secret_env": SECRET_ENV}]
        path = write_plan(tmp_path, d)
        handle = await start(cli, dev_env, path, name)
        wid = handle.id

        await enter_pilot(cli, handle, name)
        # an approver holds (erin cannot acknowledge: carol, chain[0], is paged), carol resumes
        await cli("hold", name, "--reason", "customer complaint under review", "--as", RISK)
        st = await wait_status(handle, lambda s: s["status"] == "held" and s["exposure"]["frozen"]
                               and s["target_pending"] is None)
        assert st["escalation"]["pages"][0]["recipients"] == [IR]
        assert st["escalation"]["acknowledged_by"] is None
        await cli("resume", name, "--reason", "complaint unrelated", "--as", IR)
        await wait_status(handle, lambda s: s["status"] == "soaking" and not s["exposure"]["frozen"]
                          and s["target_pending"] is None)

        await enter_limited(cli, handle, name)
        await cli("ack", name, "--item", "Support leads briefed", "--as", OPS)
        await wait_status(handle, awaiting("system-of-record"))
        for role, who in (("risk", RISK), ("engineering", ENG1), ("operations", OPS)):
            await cli("approve", name, "--stage", "system-of-record", "--role", role, "--as", who)
        await cli("ack", name, "--item", "On-call rota includes the agent", "--as", OPS)
        await cli("ack", name, "--item", "Runbook reviewed", "--as", IR)
        final: dict[str, Any] = await asyncio.wait_for(
            dev_env.client.get_workflow_handle(wid, result_type=dict).result(), 20
        )
        assert final["status"] == "completed" and final["exposure"]["percent"] == 100

    # the receiver applied each decided change exactly once, in decision order
    changes = [c for c in example.applied if c["rollout"] == wid]
    assert [(c["kind"], c["stage"]) for c in changes] == [
        ("promote", "pilot"),
        ("hold", "pilot"),
        ("resume", "pilot"),
        ("promote", "limited-25"),
        ("promote", "system-of-record"),
    ]
    assert [c["frozen"] for c in changes] == [False, True, False, False, False]
    assert [c["scope"]["percent"] for c in changes] == [5, 5, 5, 25, 100]
    seqs = [c["seq"] for c in changes]
    assert seqs == list(range(seqs[0], seqs[0] + 5)) and final["decisions"] == seqs[-1]
    keys = [c["idempotency_key"] for c in changes]
    assert keys == [f"{wid}:{seq}" for seq in seqs] and len(set(keys)) == len(keys)
    assert len({c["run_id"] for c in changes}) == 1
    # every request the controller sent (changes and notifications) was signed and verified
    assert checked.deliveries, "nothing reached the receiver"
    assert all(x.signed and x.verified and x.status == 200 for x in checked.deliveries), checked.deliveries
    assert {x.key for x in checked.deliveries if x.path == "/exposure"} == set(keys)

    # every decision reached the notification receiver
    notes = [n for n in example.notifications if n["rollout_id"] == wid]
    events = [n["event"] for n in notes]
    entered = [n["stage"] for n in notes if n["event"] == "stage_entered"]
    assert entered == ["pilot", "limited-25", "system-of-record"]
    for event in ("started", "hold", "escalation_page", "resumed", "completed"):
        assert event in events, f"no {event} notification: {events}"
    [page] = [n for n in notes if n["event"] == "escalation_page"]
    assert page["page"] is True and page["recipients"] == [IR] and "--escalation" in page["ack_command"]
    assert events.index("hold") < events.index("resumed") < events.index("completed")
    assert len({(n["seq"], n["event"]) for n in notes}) == len(notes)  # no notification twice

    # the secret travels only from the worker's environment to the receiver
    history = readable_history((await handle.fetch_history()).to_json())
    assert SECRET_ENV in history and "stage_entered" in history  # payloads are decoded here
    assert secret not in history
    assert secret not in json.dumps(example.notifications) and secret not in json.dumps(final)


# ---------------------------------------------------------------------------- 2. file (flagd)


def ctx(user: str, segment: str | None) -> EvaluationContext:
    return EvaluationContext(targeting_key=user, attributes={"segment": segment} if segment else {})


def on_for(client: OpenFeatureClient, flag: str, segment: str | None) -> set[str]:
    return {u for u in USERS if client.get_boolean_value(flag, False, ctx(u, segment))}


async def flagd_at(client: OpenFeatureClient, flag: str, path: Path) -> dict[str, Any]:
    """Waits until the provider has loaded the change now in the file; returns its metadata."""
    want = json.loads(path.read_text())["flags"][flag]["metadata"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        details = client.get_boolean_details(flag, False, ctx("probe", "internal"))
        if details.flag_metadata.get("seq") == want["seq"]:
            return dict(details.flag_metadata)
        await asyncio.sleep(0.05)
    raise AssertionError(f"flagd did not pick up change #{want['seq']}")


async def exposure(client: OpenFeatureClient, flag: str) -> dict[str, set[str]]:
    """Who is on, per segment (`None`: no segment attribute)."""

    def evaluate() -> dict[str, set[str]]:
        return {str(seg): on_for(client, flag, seg) for seg in ("internal", "smb", "external", None)}

    return await asyncio.to_thread(evaluate)  # the worker keeps running in this event loop


def about(users: set[str], percent: float) -> bool:
    share = len(users) / len(USERS)
    return abs(share - percent / 100) <= 0.03


async def test_file_target_evaluated_by_flagd_from_the_cli(
    cli_worker: AuditStore,
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flagd: Callable[[Path], OpenFeatureClient],
    timed: None,
) -> None:
    cli = Cli(capsys)
    name = f"e2e-file-{uuid.uuid4().hex[:6]}"
    flag = "support-agent"
    flags = tmp_path / "flags" / "support-agent.flagd.json"
    d = plans.plan_dict(name)
    d["target"] = {"kind": "file", "path": str(flags), "flag": flag}
    handle = await start(cli, dev_env, write_plan(tmp_path, d), name)

    await enter_pilot(cli, handle, name)
    client = flagd(flags)
    meta = await flagd_at(client, flag, flags)
    assert (meta["kind"], meta["stage"], meta["percent"]) == ("promote", "pilot", 5)
    pilot = await exposure(client, flag)
    assert about(pilot["internal"], 5), len(pilot["internal"])
    # users outside the pilot's segments (or without one) are off
    assert pilot["smb"] == pilot["external"] == pilot["None"] == set()
    inside = sorted(pilot["internal"])[0]
    assert client.get_object_value(f"{flag}-authority", {}, ctx(inside, "internal")) == d["stages"][0]["authority"]

    st = await enter_limited(cli, handle, name)
    meta = await flagd_at(client, flag, flags)
    assert (meta["stage"], meta["percent"]) == ("limited-25", 25)
    limited = await exposure(client, flag)
    assert about(limited["internal"], 25) and about(limited["smb"], 25), (len(limited["internal"]), len(limited["smb"]))
    assert limited["internal"] == limited["smb"]  # one bucketing for every listed segment
    assert limited["external"] == limited["None"] == set()
    assert pilot["internal"] <= limited["internal"]  # nobody in the pilot dropped out
    authority = client.get_object_value(f"{flag}-authority", {}, ctx(inside, "smb"))
    assert isinstance(authority, dict) and authority == st["exposure"]["authority"]
    assert authority["send_customer_message"] == "auto"

    await cli("rollback", name, "--reason", "complaints from smb", "--as", IR)
    st = await wait_status(handle, applied("pilot", "rolled_back", 5))
    assert st["stage"] == "pilot"
    meta = await flagd_at(client, flag, flags)
    assert (meta["kind"], meta["stage"], meta["percent"]) == ("rollback", "pilot", 5)
    after = await exposure(client, flag)
    assert after == pilot  # exactly the pilot's users again, nobody else

    await cli("abort", name, "--reason", "done", "--as", OWNER)
    await asyncio.wait_for(handle.result(), 20)
    meta = await flagd_at(client, flag, flags)
    assert (meta["kind"], meta["percent"]) == ("abort", 0)
    assert not await asyncio.to_thread(on_for, client, flag, "internal")


# ---------------------------------------------------------------------------- 3. unleash


def strategy_of(env: dict[str, Any]) -> tuple[str, list[tuple[str, str, list[str]]], bool]:
    [strategy] = env["strategies"]
    assert strategy["title"] == "rollout-controller" and strategy["name"] == "flexibleRollout"
    constraints = [(c["contextName"], c["operator"], c["values"]) for c in strategy["constraints"]]
    return strategy["parameters"]["rollout"], constraints, env["enabled"]


async def test_unleash_target_from_the_cli(
    cli_worker: AuditStore,
    dev_env: WorkflowEnvironment,
    unleash: Unleash,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    timed: None,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    cli = Cli(capsys)
    name = f"e2e-unleash-{uuid.uuid4().hex[:6]}"
    feature = f"support-agent-{uuid.uuid4().hex[:6]}"
    d = plans.plan_dict(name)
    d["target"] = {"kind": "unleash", "url": unleash.url, "token_env": TOKEN_ENV, "feature": feature}
    handle = await start(cli, dev_env, write_plan(tmp_path, d), name)

    async def unleash_shows() -> tuple[str, list[tuple[str, str, list[str]]], bool]:
        return strategy_of(await read_back(unleash, feature))

    steps: list[tuple[Callable[[], Awaitable[Any]], tuple[str, list[tuple[str, str, list[str]]], bool]]] = [
        (lambda: enter_pilot(cli, handle, name), ("5", [("segment", "IN", ["internal"])], True)),
        (lambda: enter_limited(cli, handle, name), ("25", [("segment", "IN", ["internal", "smb"])], True)),
    ]
    for step, expected in steps:
        await step()
        assert await unleash_shows() == expected

    await cli("rollback", name, "--reason", "error budget spent", "--as", IR)
    await wait_status(handle, applied("pilot", "rolled_back", 5))
    assert await unleash_shows() == ("5", [("segment", "IN", ["internal"])], True)

    await cli("abort", name, "--reason", "done", "--as", OWNER)
    await asyncio.wait_for(handle.result(), 20)
    assert await unleash_shows() == ("0", [], False)
