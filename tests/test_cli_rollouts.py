"""Every role's job from the CLI, and updates, against a real Temporal dev server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from cli.main import main
from tests import plans
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK


def short_plan(tmp_path: Path, name: str) -> Path:
    d = plans.plan_dict(name)
    for st in d["stages"]:
        st["window"] = "2s"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


async def cli(*argv: str, capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    if capsys is not None:
        capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


async def wait_status(name: str, capsys: pytest.CaptureFixture[str], pred: Any, within: float = 20) -> dict[str, Any]:
    import json
    import time

    deadline = time.monotonic() + within
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, out, _ = await cli("status", name, "--json", capsys=capsys)
        assert code == 0
        st = json.loads(out[out.index("{\n"):])  # the log target prints changes to stdout too
        if pred(st):
            return st
        await asyncio.sleep(0.2)
    raise AssertionError(f"not reached: {st.get('status')} {st.get('stage')}")


async def test_every_role_from_the_cli(
    cli_worker: AuditStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    path = short_plan(tmp_path, name)
    wid = f"rollout-{name}"
    code, out, _ = await cli("start", str(path), "--as", OWNER, capsys=capsys)
    assert code == 0 and wid in out
    code, _, err = await cli("start", str(path), "--as", OWNER, capsys=capsys)
    assert code == 1 and "already has an open run" in err

    code, _, err = await cli("approve", name, "--stage", "pilot", "--role", "engineering", "--as", OWNER, capsys=capsys)
    assert code == 1 and "rollout owner" in err
    code, _, err = await cli("approve", name, "--stage", "pilot", "--role", "engineering", capsys=capsys)
    assert code == 2 and "--as IDENTITY" in err
    code, out, _ = await cli("approve", name, "--stage", "pilot", "--role", "engineering", "--as", ENG1,
                             "--comment", "looks good", capsys=capsys)
    assert code == 0 and "soaking" in out

    code, out, _ = await cli("list", "--status", "soaking", "--json", capsys=capsys)
    assert code == 0 and wid in out

    await wait_status(name, capsys, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
    code, _, err = await cli("hold", name, "--reason", "x", "--as", "mallory@example.com", capsys=capsys)
    assert code == 1 and "not named in the plan" in err
    code, _, _ = await cli("hold", name, "--reason", "checking a complaint", "--as", RISK, capsys=capsys)
    assert code == 0
    st = await wait_status(name, capsys, lambda s: s["status"] == "held")
    assert st["escalation"]["pages"][0]["recipients"] == [IR]
    code, _, err = await cli("resume", name, "--reason", "x", "--as", RISK, capsys=capsys)
    assert code == 1 and "incident-response owner" in err
    code, _, _ = await cli("ack", name, "--escalation", "--as", IR, capsys=capsys)
    assert code == 0
    code, _, _ = await cli("resume", name, "--reason", "complaint unrelated", "--as", IR, capsys=capsys)
    assert code == 0
    # after a resume the pilot soaks a full window again, then limited-25 is awaited
    await wait_status(name, capsys, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
    code, _, _ = await cli("approve", wid, "--stage", "limited-25", "--role", "engineering", "--as", ENG2, capsys=capsys)
    assert code == 0
    code, _, _ = await cli("reject", wid, "--stage", "limited-25", "--reason", "runbook missing", "--as", OPS,
                           capsys=capsys)
    assert code == 0
    st = await wait_status(name, capsys, lambda s: s["status"] == "held")
    assert st["approvals"]["given"] == {}
    code, _, _ = await cli("resume", name, "--reason", "runbook added", "--as", OWNER, capsys=capsys)
    assert code == 0
    for role, who in (("engineering", ENG2), ("operations", OPS)):
        code, _, _ = await cli("approve", name, "--stage", "limited-25", "--role", role, "--as", who, capsys=capsys)
        assert code == 0
    code, _, _ = await cli("ack", name, "--item", "Support leads briefed", "--as", OPS, capsys=capsys)
    assert code == 0
    code, _, err = await cli("ack", name, "--item", "Support leads briefed", "--as", OPS, capsys=capsys)
    assert code == 1 and "already acknowledged" in err
    await wait_status(name, capsys, lambda s: s["stage"] == "system-of-record")

    code, _, err = await cli("abort", name, "--reason", "x", "--as", IR, capsys=capsys)
    assert code == 1 and "only the rollout owner" in err
    code, _, _ = await cli("abort", name, "--reason", "business decision", "--as", OWNER, capsys=capsys)
    assert code == 0
    await wait_status(name, capsys, lambda s: s["status"] == "aborted" and s["exposure"]["percent"] == 0)
    code, out, _ = await cli("watch", name, capsys=capsys)  # returns at a terminal status
    assert code == 0 and "aborted" in out.splitlines()[-1]
    await asyncio.sleep(1.0)
    code, _, err = await cli("hold", name, "--reason", "x", "--as", RISK, capsys=capsys)
    assert code == 1 and ("closed" in err or "aborted" in err)
    # a closed rollout may be started again: a new run with the same id
    code, _, _ = await cli("start", str(path), "--as", OWNER, capsys=capsys)
    assert code == 0
    st = await wait_status(name, capsys, lambda s: s["status"] == "awaiting_approval")
    assert st["stage"] == "pilot"
    code, _, _ = await cli("abort", name, "--reason", "cleanup", "--as", OWNER, capsys=capsys)
    assert code == 0


async def test_rejected_update_leaves_no_history(
    cli_worker: AuditStore, dev_env: WorkflowEnvironment, cli_queue: str, tmp_path: Path
) -> None:
    from tests.wfkit import start

    h = await start(dev_env.client, plans.plan_dict(f"upd-{uuid.uuid4().hex[:6]}"), cli_queue)
    before = -1
    while True:  # let the first tasks (audit, search attributes) settle
        await asyncio.sleep(0.5)
        n = len((await h.fetch_history()).events)
        if n == before:
            break
        before = n
    for payload in (
        {"actor": OWNER, "stage": "pilot", "role": "engineering"},
        {"actor": ENG1, "stage": "limited-25", "role": "engineering"},
        {"actor": ENG1, "stage": "pilot", "role": "risk"},
    ):
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await h.execute_update("approve", payload)
        assert info.value.cause is not None
    with pytest.raises(WorkflowUpdateFailedError):
        await h.execute_update("resume", {"actor": IR, "reason": "not held"})
    after = (await h.fetch_history()).events
    assert len(after) == before, "a rejected update must leave no history"
    result = await h.execute_update("approve", {"actor": ENG1, "stage": "pilot", "role": "engineering"})
    assert result["status"] == "soaking"
    await h.execute_update("abort", {"actor": OWNER, "reason": "done"})
    final = await h.result()
    assert final["status"] == "aborted"


async def test_signed_approvals_and_amendment_from_the_cli(
    cli_worker: AuditStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    key = tmp_path / "frank.key"
    code, out, _ = await cli("keygen", "--as", ENG1, "--out", str(key), "--json", capsys=capsys)
    assert code == 0 and key.exists()
    public = json.loads(out)["public_key"]
    name = f"signed-{uuid.uuid4().hex[:6]}"
    d = plans.plan_dict(name)
    for st in d["stages"]:
        st["window"] = "2s"
    d["require_signed_approvals"] = True
    d["public_keys"] = {i: public for members in d["approvers"].values() for i in members}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(d))
    assert (await cli("start", str(path), "--as", OWNER, capsys=capsys))[0] == 0

    code, _, err = await cli("approve", name, "--stage", "pilot", "--role", "engineering", "--as", ENG1, capsys=capsys)
    assert code == 1 and "requires signed approvals" in err
    code, _, _ = await cli("approve", name, "--stage", "pilot", "--role", "engineering", "--as", ENG1,
                           "--key", str(key), capsys=capsys)
    assert code == 0

    # amendment: the rollout owner proposes, the awaited stage's roles approve it
    await wait_status(name, capsys, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
    d["stages"][2]["window"] = "3s"
    amended = tmp_path / "amended.yaml"
    amended.write_text(yaml.safe_dump(d))
    code, _, err = await cli("amend", name, str(amended), "--as", ENG1, capsys=capsys)
    assert code == 1 and "only the rollout owner" in err
    code, out, _ = await cli("amend", name, str(amended), "--as", OWNER, "--reason", "longer SoR window",
                             "--json", capsys=capsys)
    assert code == 0
    new_hash = json.loads(out[out.index("{\n"):])["amendment"]
    code, _, err = await cli("approve", name, "--amendment", new_hash, "--role", "engineering", "--as", ENG2,
                             capsys=capsys)
    assert code == 1 and "requires signed approvals" in err  # amendments are approved under the same rules
    for role, who in (("engineering", ENG2), ("operations", OPS)):
        code, _, _ = await cli("approve", name, "--amendment", new_hash, "--role", role, "--as", who,
                               "--key", str(key), capsys=capsys)
        assert code == 0
    st = await wait_status(name, capsys, lambda s: s["plan_hash"] == new_hash)
    assert st["pending_amendment"] is None
    assert (await cli("abort", name, "--reason", "done", "--as", OWNER, capsys=capsys))[0] == 0
