"""The CLI's signed payloads (cli/signing.py) against the rollout state machine (rollout/machine.py).

The CLI builds a claim from `status` and signs it; the machine rebuilds the claim from
its own state. These tests feed the CLI's exact payload fields to the real machine:
what the CLI signs is accepted, and the same signature replayed later is refused.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.signing import ack_claim, approval_claim, load_private_key, signed_fields
from rollout import policy
from rollout.errors import UsageError
from rollout.machine_model import Acknowledge, Amend, Approve, Resume, Rollback
from tests.machine_kit import Kit
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, plan_dict

KEYS = {who: Ed25519PrivateKey.generate() for who in (RISK, ENG1, ENG2, OWNER, OPS, IR)}


def _pub(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def signed_plan(**changes: Any) -> dict[str, Any]:
    d = plan_dict(**changes)
    d["require_signed_approvals"] = True
    d["public_keys"] = {who: _pub(k) for who, k in KEYS.items()}
    for st in d["stages"]:
        st["window"] = "1h"
    return d


def approve(kit: Kit, who: str, stage: str, role: str) -> Approve:
    """`rollout approve ID --stage S --role R --as WHO --key FILE`, as the CLI builds it."""
    claim = approval_claim(kit.status(), role=role, actor=who, now=kit.now, stage=stage)
    return Approve(actor=who, stage=stage, role=role, **signed_fields(KEYS[who], claim))


def test_cli_signed_approval_enters_the_stage() -> None:
    kit = Kit(signed_plan())
    ev = approve(kit, ENG1, "pilot", "engineering")
    assert kit.refusal(ev) is None
    kit.send(ev)
    st = kit.status()
    assert st["status"] == "soaking" and st["approvals"]["given"]["engineering"]["signed"] is True


def test_same_signed_payload_after_rollback_and_resume_is_refused() -> None:
    """The issue's attack: frank's approval, read from history, re-sent after a rollback."""
    kit = Kit(signed_plan())
    ev = approve(kit, ENG1, "pilot", "engineering")
    kit.send(ev)
    kit.advance(timedelta(minutes=10))
    kit.send(Rollback(actor=RISK, reason="bad replies"))
    kit.send(Resume(actor=IR, reason="fixed"))
    st = kit.status()
    assert st["status"] == "awaiting_approval" and st["approvals"]["entry"] == 2
    replay = ev.model_copy(update={"via": "signal"})
    reason = kit.refusal(replay)
    assert reason is not None and "does not verify" in reason and "entry 2" in reason
    kit.send(replay)  # as a Signal: refused, recorded in status.refused, nothing entered
    st = kit.status()
    assert st["status"] == "awaiting_approval" and st["approvals"]["given"] == {}
    assert any("does not verify" in r["reason"] for r in st["refused"])
    # frank signs again for entry 2: accepted
    kit.send(approve(kit, ENG1, "pilot", "engineering"))
    assert kit.status()["status"] == "soaking"


def test_signature_for_another_run_of_the_same_id_is_refused() -> None:
    first = Kit(signed_plan())
    ev = approve(first, ENG1, "pilot", "engineering")
    d = signed_plan()
    second = Kit(d)
    second.state.first_run_id = "run-2"  # the next run of the reused workflow id
    assert "does not verify" in (second.refusal(ev) or "")


def test_v1_signature_is_refused_with_sign_again_message() -> None:
    kit = Kit(signed_plan())
    st = kit.status()
    v1 = policy.approval_message(st["workflow_id"], "pilot", "engineering", st["plan_hash"], ENG1)
    sig = base64.b64encode(KEYS[ENG1].sign(v1)).decode()
    reason = kit.refusal(Approve(actor=ENG1, stage="pilot", role="engineering", signature=sig))
    assert reason is not None and "old v1 format" in reason and "sign again" in reason


def test_cli_signed_handoff_acknowledgement_is_accepted_and_not_reusable_by_another_actor() -> None:
    kit = Kit(signed_plan())
    kit.send(approve(kit, ENG1, "pilot", "engineering"))
    kit.advance(timedelta(hours=1, minutes=1))
    for who, role in ((ENG2, "engineering"), (OPS, "operations")):
        kit.send(approve(kit, who, "limited-25", role))
    st = kit.status()
    assert st["status"] == "soaking" and st["stage"] == "limited-25"
    item = "Support leads briefed"
    claim = ack_claim(st, item=item, actor=OPS, now=kit.now)
    assert (claim.stage, claim.role, claim.subject) == ("limited-25", "operations", item)
    fields = signed_fields(KEYS[OPS], claim)
    assert kit.refusal(Acknowledge(actor=OPS, item=item, **fields)) is None
    with pytest.raises(UsageError, match="not pending"):
        ack_claim(st, item="no such item", actor=OPS, now=kit.now)


def test_cli_signed_amendment_approval_is_accepted_and_bound_to_the_amendment() -> None:
    d = signed_plan()
    kit = Kit(d)
    kit.send(approve(kit, ENG1, "pilot", "engineering"))
    new = signed_plan()
    new["stages"][2]["window"] = "2h"
    kit.send(Amend(actor=OWNER, plan=new, reason="longer last window"))
    st = kit.status()
    pending = st["pending_amendment"]
    assert pending is not None
    role = (pending["missing"] or ["engineering"])[0]
    who = ENG2
    claim = approval_claim(st, role=role, actor=who, now=kit.now, amendment=pending["plan_hash"])
    assert claim.kind == "amend" and claim.subject == pending["plan_hash"]
    ev = Approve(actor=who, role=role, amendment=pending["plan_hash"], **signed_fields(KEYS[who], claim))
    assert kit.refusal(ev) is None
    # the same signature as a stage approval is not an amendment approval, and vice versa
    stage_claim = approval_claim(st, role=role, actor=who, now=kit.now, stage=st["stage"])
    forged = ev.model_copy(update={"signature": signed_fields(KEYS[who], stage_claim)["signature"]})
    assert "does not verify" in (kit.refusal(forged) or "")


def test_key_file_errors_never_echo_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("c2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n")  # base64, wrong length
    with pytest.raises(UsageError) as info:
        load_private_key(bad)
    assert str(bad) in str(info.value) and "c2VjcmV0" not in str(info.value)
    with pytest.raises(UsageError, match="cannot read private key"):
        load_private_key(tmp_path / "missing.key")


def test_status_without_binding_fields_cannot_be_signed() -> None:
    with pytest.raises(UsageError, match=r"first_run_id, approvals\.entry"):
        approval_claim(
            {"workflow_id": "rollout-x", "plan_hash": "h", "approvals": {}},
            role="r",
            actor=ENG1,
            now=Kit().now,
            stage="pilot",
        )
