"""Pure policy decisions, without Temporal."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollout import policy
from rollout.plan import Plan, validate_plan_data
from tests import plans
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, WORKFLOW_OWNER


@pytest.fixture
def plan() -> Plan:
    return validate_plan_data(plans.plan_dict())


def test_stricter_orders_hold_narrow_rollback() -> None:
    assert policy.stricter("hold", "narrow") == "narrow"
    assert policy.stricter("rollback", "narrow") == "rollback"
    assert policy.is_stricter("rollback", "hold") and not policy.is_stricter("hold", "hold")


def test_who_may_approve(plan: Plan) -> None:
    ok = policy.approval_refusal(plan, stage_index=0, role="engineering", actor=ENG1, given={})
    assert ok is None
    assert "rollout owner" in (policy.approval_refusal(plan, stage_index=0, role="engineering", actor=OWNER, given={}) or "")
    assert "not listed" in (policy.approval_refusal(plan, stage_index=0, role="engineering", actor=OPS, given={}) or "")
    assert "does not need" in (policy.approval_refusal(plan, stage_index=0, role="risk", actor=RISK, given={}) or "")
    dup_role = policy.approval_refusal(plan, stage_index=1, role="engineering", actor=ENG2, given={"engineering": ENG1})
    assert "already approved in this entry" in (dup_role or "")


def test_identity_approves_once_and_distinct_from() -> None:
    d = plans.plan_dict()
    d["approvers"]["operations"] = [OPS, ENG1]
    d["approvers"]["risk"] = [RISK, WORKFLOW_OWNER]
    p = validate_plan_data(d)
    twice = policy.approval_refusal(p, stage_index=1, role="operations", actor=ENG1, given={"engineering": ENG1})
    assert "already approved this entry" in (twice or "")
    sod = policy.approval_refusal(p, stage_index=2, role="risk", actor=WORKFLOW_OWNER, given={})
    assert "separation of duties" in (sod or "")


def test_who_may_act(plan: Plan) -> None:
    assert policy.may_contain(plan, RISK) is None and policy.may_contain(plan, OWNER) is None
    assert policy.may_contain(plan, "mallory@example.com") is not None
    assert policy.may_resume(plan, IR) is None and policy.may_resume(plan, OWNER) is None
    assert policy.may_resume(plan, RISK) is not None
    assert policy.may_own(plan, OWNER, "abort") is None and policy.may_own(plan, IR, "abort") is not None


def test_rejection(plan: Plan) -> None:
    assert policy.rejection_refusal(plan, stage_index=1, role=None, actor=OPS) is None
    assert policy.rejection_refusal(plan, stage_index=1, role=None, actor=RISK) is not None  # not awaited
    assert policy.rejection_refusal(plan, stage_index=1, role="operations", actor=OWNER) is not None


def test_handoff(plan: Plan) -> None:
    assert policy.handoff_refusal(plan, stage_index=2, item="Runbook reviewed", actor=IR) is None
    assert "goes to" in (policy.handoff_refusal(plan, stage_index=2, item="Runbook reviewed", actor=OPS) or "")
    assert "no handoff item" in (policy.handoff_refusal(plan, stage_index=2, item="nope", actor=OPS) or "")
    assert policy.find_handoff_stage(plan, "Support leads briefed", [0, 1]) == 1
    assert policy.find_handoff_stage(plan, "Support leads briefed", [0]) is None


def test_containment_scopes(plan: Plan) -> None:
    hold = policy.containment_scope(plan, 1, "hold")
    assert hold.percent == 25 and hold.stage == 1
    narrow = policy.containment_scope(plan, 1, "narrow")
    assert narrow.percent == 5 and narrow.segments == ["internal"] and narrow.stage == 1
    assert narrow.authority["send_customer_message"] == "review" and narrow.authority["refund"] == "review"
    assert narrow.authority["read"] == "review"
    pilot_narrow = policy.containment_scope(plan, 0, "narrow")
    assert pilot_narrow.percent == 5 and pilot_narrow.authority["draft"] == "review"
    back = policy.containment_scope(plan, 2, "rollback")
    assert back.stage == 1 and back.percent == 25
    assert policy.containment_scope(plan, 0, "rollback") == policy.ZERO


def test_breach_action_uses_threshold_and_only_stricter_requests() -> None:
    d = plans.with_thresholds(plans.plan_dict(), 1, {"name": "lat", "query": "q", "max": 1, "action": "narrow"})
    p = validate_plan_data(d)
    assert policy.breach_action(p, 1, "lat", None) == "narrow"
    assert policy.breach_action(p, 1, "lat", "hold") == "narrow"  # a weaker request does not apply
    assert policy.breach_action(p, 1, "lat", "rollback") == "rollback"
    assert policy.breach_action(p, 1, "unknown", None) == "hold"
    assert policy.breach_action(p, 1, None, "bogus") == "hold"


def test_escalation_steps(plan: Plan) -> None:
    assert policy.escalation_targets(plan, 0) == (["incident_response"], [IR])
    assert policy.escalation_targets(plan, 1) == (["rollout"], [OWNER])
    roles, ids = policy.escalation_targets(plan, 2)
    assert roles == ["incident_response", "rollout"] and ids == [IR, OWNER]
    assert policy.escalation_targets(plan, 7)[1] == [IR, OWNER]


def test_next_stage_and_coverage(plan: Plan) -> None:
    assert policy.next_stage(plan, 0) == 1 and policy.next_stage(plan, 2) is None
    assert policy.coverage_ok({"a": 0.9, "b": 1.0}) and not policy.coverage_ok({"a": 0.89})
    assert policy.coverage_ok({})


def test_amendment_rules(plan: Plan) -> None:
    same = validate_plan_data(plans.plan_dict())
    assert policy.amendment_refusal(plan, same, [0]) is None
    renamed = validate_plan_data(plans.plan_dict("other"))
    assert "keeps the plan name" in (policy.amendment_refusal(plan, renamed, []) or "")
    d = plans.plan_dict()
    d["stages"][0]["window"] = "1h"
    changed = validate_plan_data(d)
    assert policy.amendment_refusal(plan, changed, []) is None
    assert "already entered" in (policy.amendment_refusal(plan, changed, [0]) or "")


def test_signed_approvals() -> None:
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    d = plans.plan_dict()
    d["require_signed_approvals"] = True
    ids = {i for members in d["approvers"].values() for i in members}
    d["public_keys"] = dict.fromkeys(ids, pub)
    p = validate_plan_data(d)
    msg = policy.approval_message("rollout-x", "pilot", "engineering", "h", ENG1)
    sig = base64.b64encode(key.sign(msg)).decode()
    assert policy.signature_refusal(p, msg, ENG1, sig) is None
    assert "requires signed approvals" in (policy.signature_refusal(p, msg, ENG1, None) or "")
    other = policy.approval_message("rollout-x", "pilot", "engineering", "h2", ENG1)
    assert "does not verify" in (policy.signature_refusal(p, other, ENG1, sig) or "")
