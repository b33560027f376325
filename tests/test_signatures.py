"""Signed claims (rollout/signatures.py): a signature approves exactly the claim it was made for."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rollout import policy
from rollout.plan import Plan
from rollout.signatures import (
    MAX_SIGNATURE_AGE,
    SignedClaim,
    claim_message,
    format_signed_at,
    legacy_refusal,
    parse_signed_at,
    sign_claim,
    signature_refusal,
)
from tests.plans import ENG1, ENG2, OPS, RISK, plan_dict

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
KEYS = {who: Ed25519PrivateKey.generate() for who in (ENG1, ENG2, OPS, RISK)}


def _pub(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _plan(signed: bool = True) -> Plan:
    d = plan_dict()
    d["require_signed_approvals"] = signed
    d["public_keys"] = {who: _pub(k) for who, k in KEYS.items()}
    return Plan.model_validate(d)


PLAN = _plan()
CLAIM = SignedClaim(
    kind="approve",
    workflow_id="rollout-support-agent",
    first_run_id="0193a1b2-run-1",
    stage="pilot",
    entry=1,
    role="engineering",
    subject="",
    plan_hash="a" * 64,
    actor=ENG1,
    signed_at=NOW - timedelta(minutes=3),
)
SIG = sign_claim(KEYS[ENG1], CLAIM)


def test_signature_made_for_the_claim_verifies() -> None:
    assert signature_refusal(PLAN, CLAIM, SIG, NOW) is None


def test_plan_without_signed_approvals_needs_no_signature() -> None:
    assert signature_refusal(_plan(signed=False), CLAIM, None, NOW) is None
    assert legacy_refusal(_plan(signed=False), "c2ln", None) is None


def test_missing_signature_is_refused() -> None:
    assert "requires signed approvals" in (signature_refusal(PLAN, CLAIM, None, NOW) or "")
    assert "requires signed approvals" in (signature_refusal(PLAN, CLAIM, "", NOW) or "")


def test_actor_without_public_key_is_refused() -> None:
    plan = _plan()
    plan.public_keys.pop(ENG1)
    assert f"no public key for {ENG1}" in (signature_refusal(plan, CLAIM, SIG, NOW) or "")


def test_garbage_signature_is_refused_not_raised() -> None:
    for bad in ("not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(64)).decode()):
        assert "does not verify" in (signature_refusal(PLAN, CLAIM, bad, NOW) or "")


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("same entry after a rollback and resume: the next entry number", {"entry": 2}),
        ("next run of the same workflow id", {"first_run_id": "0193a1b2-run-2"}),
        ("another workflow", {"workflow_id": "rollout-other-agent"}),
        ("another stage", {"stage": "limited-25"}),
        ("another role", {"role": "operations"}),
        ("another plan hash", {"plan_hash": "b" * 64}),
        ("another kind: an approval is not an amendment approval", {"kind": "amend"}),
        ("another subject", {"subject": "c" * 64}),
        ("another signing time", {"signed_at": NOW - timedelta(minutes=2)}),
    ],
)
def test_signature_replayed_into_another_claim_is_refused(case: str, change: dict[str, object]) -> None:
    replay = CLAIM.model_copy(update=change)
    reason = signature_refusal(PLAN, replay, SIG, NOW)
    assert reason is not None, case
    assert "does not verify" in reason


def test_signature_forwarded_as_another_actor_is_refused() -> None:
    """ENG2 sends ENG1's signature as their own: it is checked against ENG2's key."""
    forwarded = CLAIM.model_copy(update={"actor": ENG2})
    assert f"does not verify against {ENG2}'s public key" in (
        signature_refusal(PLAN, forwarded, SIG, NOW) or ""
    )


def test_signature_older_than_24h_is_refused() -> None:
    old = CLAIM.model_copy(update={"signed_at": NOW - MAX_SIGNATURE_AGE - timedelta(seconds=1)})
    reason = signature_refusal(PLAN, old, sign_claim(KEYS[ENG1], old), NOW)
    assert reason is not None and "more than 24 h" in reason and "sign again" in reason


def test_signature_just_under_24h_is_accepted() -> None:
    recent = CLAIM.model_copy(update={"signed_at": NOW - MAX_SIGNATURE_AGE + timedelta(seconds=1)})
    assert signature_refusal(PLAN, recent, sign_claim(KEYS[ENG1], recent), NOW) is None


def test_signature_dated_in_the_future_beyond_clock_skew_is_refused() -> None:
    ahead = CLAIM.model_copy(update={"signed_at": NOW + timedelta(minutes=6)})
    reason = signature_refusal(PLAN, ahead, sign_claim(KEYS[ENG1], ahead), NOW)
    assert reason is not None and "in the future" in reason
    slight = CLAIM.model_copy(update={"signed_at": NOW + timedelta(minutes=1)})
    assert signature_refusal(PLAN, slight, sign_claim(KEYS[ENG1], slight), NOW) is None


def test_old_v1_signature_without_signed_at_is_refused_with_sign_again_message() -> None:
    v1 = policy.approval_message("rollout-support-agent", "pilot", "engineering", "a" * 64, ENG1)
    v1_sig = base64.b64encode(KEYS[ENG1].sign(v1)).decode()
    reason = legacy_refusal(PLAN, v1_sig, None, command="rollout approve ID --stage pilot --key FILE")
    assert reason is not None
    assert "old v1 format" in reason
    assert "sign again" in reason and "rollout approve ID --stage pilot --key FILE" in reason


def test_old_v1_signature_does_not_verify_as_a_v2_claim() -> None:
    """Even if a caller attached a signed_at to a v1 signature, the v2 bytes differ."""
    v1 = policy.approval_message(CLAIM.workflow_id, CLAIM.stage, CLAIM.role, CLAIM.plan_hash, ENG1)
    v1_sig = base64.b64encode(KEYS[ENG1].sign(v1)).decode()
    assert "does not verify" in (signature_refusal(PLAN, CLAIM, v1_sig, NOW) or "")


def test_legacy_refusal_passes_usable_fields_and_refuses_unusable_ones() -> None:
    assert legacy_refusal(PLAN, SIG, format_signed_at(CLAIM.signed_at)) is None
    assert legacy_refusal(PLAN, SIG, CLAIM.signed_at) is None
    assert "requires signed approvals" in (legacy_refusal(PLAN, None, None) or "")
    assert "requires signed approvals" in (legacy_refusal(PLAN, None, "2026-12-02T10:00:00Z") or "")
    assert "not an RFC 3339 time" in (legacy_refusal(PLAN, SIG, "yesterday") or "")
    assert "not an RFC 3339 time" in (legacy_refusal(PLAN, SIG, "2026-12-02T10:00:00") or "")
    assert "UTC offset" in (legacy_refusal(PLAN, SIG, datetime(2026, 12, 2, 10, 0)) or "")


def test_signed_at_text_round_trips_to_the_same_message() -> None:
    """The CLI sends signed_at as RFC 3339; the workflow parses it; both sign the same bytes."""
    cest = timezone(timedelta(hours=2))
    local = CLAIM.model_copy(update={"signed_at": CLAIM.signed_at.astimezone(cest)})
    assert claim_message(local) == claim_message(CLAIM)
    for text in (format_signed_at(CLAIM.signed_at), local.signed_at.isoformat(), "2026-12-02T09:57:00Z"):
        parsed = CLAIM.model_copy(update={"signed_at": parse_signed_at(text)})
        assert signature_refusal(PLAN, parsed, SIG, NOW) is None


def test_claim_message_is_versioned_and_unambiguous() -> None:
    msg = claim_message(CLAIM)
    assert msg.startswith(b"rollout-signed:v2\n")
    a = CLAIM.model_copy(update={"kind": "ack", "subject": "Runbook reviewed", "role": "operations"})
    b = CLAIM.model_copy(update={"kind": "ack", "subject": "Runbook", "role": 'reviewed","operations'})
    assert claim_message(a) != claim_message(b)


def test_claim_is_frozen_and_needs_an_aware_time() -> None:
    with pytest.raises(ValidationError):
        CLAIM.model_copy(update={}).__setattr__("entry", 3)
    with pytest.raises(ValidationError):
        SignedClaim.model_validate({**CLAIM.model_dump(), "signed_at": datetime(2026, 12, 2)})


_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "kind": st.sampled_from(["approve", "amend", "ack"]),
    "workflow_id": st.sampled_from(["rollout-a", "rollout-b"]) | _text,
    "first_run_id": st.sampled_from(["run-1", "run-2"]) | _text,
    "stage": st.sampled_from(["pilot", "limited-25", "system-of-record"]),
    "entry": st.integers(min_value=0, max_value=4),
    "role": st.sampled_from(["engineering", "operations", "risk"]),
    "subject": st.sampled_from(["", "c" * 64, "Runbook reviewed"]),
    "plan_hash": st.sampled_from(["a" * 64, "b" * 64]),
    "actor": st.sampled_from([ENG1, ENG2, OPS, RISK]),
    "signed_at": st.integers(min_value=0, max_value=3).map(lambda m: NOW - timedelta(minutes=m)),
}
_claims = st.fixed_dictionaries(_FIELDS).map(SignedClaim.model_validate)
# the presented claim: the signed one with any subset of its fields redrawn (often none)
_changes = st.fixed_dictionaries({}, optional=_FIELDS)


@settings(max_examples=400, deadline=None)
@given(signed=_claims, changes=_changes)
def test_a_signature_verifies_for_exactly_the_claim_it_signs(
    signed: SignedClaim, changes: dict[str, object]
) -> None:
    """Over (run, entry, stage, role, actor, plan hash, kind, subject, time): a signature by the
    signed claim's actor is accepted for a presented claim if and only if the two are equal."""
    presented = SignedClaim.model_validate({**signed.model_dump(), **changes})
    sig = sign_claim(KEYS[signed.actor], signed)
    accepted = signature_refusal(PLAN, presented, sig, NOW) is None
    assert accepted == (presented == signed)
