"""No secret value ever leaves the process that holds it.

A scripted rollout on a real Temporal dev server, driven from the CLI as people
would: signed approvals (`rollout approve --key FILE`), a breach from the
Alertmanager receiver (bearer token), a containment and its acknowledgement,
a resume, a hold and another resume. Along the way the worker signs its webhook
deliveries and notifications with a secret from its environment, signs audit
heads with a key file, and the CLI connects with a `TEMPORAL_API_KEY`.

Afterwards none of the secret values (webhook secret, receiver token, API key,
approvers' private keys, audit signing key) appears in the workflow history
(payloads decoded), its search attributes and memo, the `status` query, the
audit rows, or anything logged or printed during the run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AUDIT_KEY_ENV, AuditStore
from cli.main import main
from tests import plans
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK
from worker import receiver as alert_receiver
from worker.example_target import create_app, running
from worker.main import build_worker

WEBHOOK_SECRET_ENV = "ROLLOUT_LEAK_TEST_WEBHOOK_SECRET"


def raw_b64(key: Ed25519PrivateKey, public: bool) -> str:
    if public:
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    return base64.b64encode(raw).decode()


def decoded_history(history_json: str) -> str:
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


def alertmanager_body(wid: str) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": f'{{}}:{{rollout="{wid}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "staged-rollout",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "RolloutErrorRateHigh", "rollout": wid, "threshold": "error_rate"},
                "annotations": {"value": "0.31", "summary": "error rate above 2%"},
                "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
                "fingerprint": "c0ffee0123456789",
            }
        ],
    }


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
    raise AssertionError(f"not reached within {within}s: {st.get('status')} at {st.get('stage')}: {st}")


@pytest.mark.parametrize("signed", [True, False], ids=["signed-approvals", "unsigned-plan"])
async def test_no_secret_in_history_search_attributes_status_audit_rows_or_logs(
    signed: bool,
    dev_env: WorkflowEnvironment,
    cli_queue: str,
    sqlite_store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    webhook_secret = "whsec-" + secrets.token_hex(20)
    receiver_token = "rcvtok-" + secrets.token_hex(20)
    api_key = "tmprl-apikey-" + secrets.token_hex(20)
    audit_key = Ed25519PrivateKey.generate()
    approver_keys = {who: Ed25519PrivateKey.generate() for who in (RISK, ENG1, ENG2, OWNER, OPS)}
    key_files: dict[str, Path] = {}
    for who, key in approver_keys.items():
        key_files[who] = tmp_path / f"{who.split('@')[0]}.key"
        key_files[who].write_text(raw_b64(key, public=False) + "\n")
    audit_key_file = tmp_path / "audit.key"
    audit_key_file.write_text(raw_b64(audit_key, public=False) + "\n")
    secret_values = {
        "webhook secret": webhook_secret,
        "receiver token": receiver_token,
        "TEMPORAL_API_KEY": api_key,
        "audit signing key": raw_b64(audit_key, public=False),
        **{f"private key of {who}": raw_b64(k, public=False) for who, k in approver_keys.items()},
    }

    monkeypatch.setenv(WEBHOOK_SECRET_ENV, webhook_secret)
    monkeypatch.setenv(AUDIT_KEY_ENV, str(audit_key_file))
    # the CLI connects with an API key (the dev server accepts any; TLS off on loopback)
    monkeypatch.setenv("TEMPORAL_API_KEY", api_key)
    monkeypatch.setenv("TEMPORAL_TLS", "false")

    async def cli(*argv: str) -> str:
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        printed.append(out + err)
        assert code == 0, f"rollout {' '.join(argv)} exited {code}: {err.strip() or out.strip()}"
        return out

    def key_args(who: str) -> list[str]:
        return ["--key", str(key_files[who])] if signed else []

    printed: list[str] = []
    target = create_app(webhook_secret)
    alerts = alert_receiver.create_app(dev_env.client, receiver_token)
    name = f"leak-{uuid.uuid4().hex[:6]}"
    wid = f"rollout-{name}"
    async with (
        build_worker(dev_env.client, sqlite_store, queue=cli_queue),
        running(target) as target_url,
        running(alerts) as receiver_url,
    ):
        d = plans.plan_dict(name)
        d["target"] = {"kind": "webhook", "url": f"{target_url}/exposure", "secret_env": WEBHOOK_SECRET_ENV}
        d["notify"] = [{"kind": "webhook", "url": f"{target_url}/notify", "secret_env": WEBHOOK_SECRET_ENV}]
        d["stages"][0]["window"] = "1h"
        if signed:
            d["require_signed_approvals"] = True
            d["public_keys"] = {who: raw_b64(k, public=True) for who, k in approver_keys.items()}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))

        await cli("start", str(path), "--as", OWNER)
        handle = dev_env.client.get_workflow_handle(wid)
        await wait_status(handle, lambda s: s["status"] == "awaiting_approval")
        await cli("approve", name, "--stage", "pilot", "--role", "engineering", "--as", ENG1, *key_args(ENG1))
        await wait_status(handle, lambda s: s["status"] == "soaking" and s["target_pending"] is None)

        # a breach from Alertmanager through the receiver, with its bearer token
        async with httpx.AsyncClient() as http:
            sent = await http.post(
                f"{receiver_url}/alertmanager",
                json=alertmanager_body(wid),
                headers={"Authorization": f"Bearer {receiver_token}"},
            )
        assert sent.status_code == 200, sent.text
        st = await wait_status(handle, lambda s: s["status"] == "held" and s["open_breaches"])
        assert st["escalation"]["pages"][0]["recipients"] == [IR]
        await cli("ack", name, "--escalation", "--as", IR)
        await cli("resume", name, "--reason", "error rate explained", "--as", IR)
        await wait_status(handle, lambda s: s["status"] == "soaking" and s["target_pending"] is None)
        await cli("hold", name, "--reason", "odd replies", "--as", RISK)
        await wait_status(handle, lambda s: s["status"] == "held" and s["target_pending"] is None)
        await cli("resume", name, "--reason", "replies fine", "--as", IR)
        st = await wait_status(handle, lambda s: s["status"] == "soaking" and s["target_pending"] is None)
        printed.append(await cli("status", name, "--json"))

        # the audit rows have caught up with the workflow's decisions
        deadline = time.monotonic() + 20
        rows = await sqlite_store.read(wid)
        while (not rows or rows[-1].event.seq < st["audit_seq"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            st = await handle.query("status", result_type=dict)
            rows = await sqlite_store.read(wid)

        desc = await handle.describe()
        history = decoded_history((await handle.fetch_history()).to_json())
        memo = await desc.memo()
        await cli("abort", name, "--reason", "end of test", "--as", OWNER)

    # the run really happened and the carriers were really used
    assert rows and rows[-1].event.seq >= st["audit_seq"] > 0
    assert target.state.example.applied and target.state.example.notifications
    assert WEBHOOK_SECRET_ENV in history and "report_breach" in history  # payloads are decoded here
    if signed:
        assert '"signature"' in history and '"signed_at"' in history
        # the search finds key material when it is there: the public halves are in the plan
        assert all(raw_b64(k, public=True) in history for k in approver_keys.values())

    places = {
        "workflow history": history,
        "search attributes": repr(desc.typed_search_attributes) + repr(desc.search_attributes),
        "memo": json.dumps(memo, default=str),
        "status query": json.dumps(st, default=str),
        "audit rows": json.dumps([r.to_json() for r in rows], default=str),
        "logs": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "printed output": "\n".join(printed) + "".join(capsys.readouterr()),
        "target and notifications": json.dumps(
            [target.state.example.applied, target.state.example.notifications], default=str
        ),
    }
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, value in secret_values.items()
        if value in text
    ]
    assert leaks == []
