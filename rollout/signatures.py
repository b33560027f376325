"""Signed approvals that cannot be replayed: the claim an approver signs, and its check.

When a plan sets `require_signed_approvals`, an approval (of a stage, of an
amendment) and a handoff acknowledgement carry an Ed25519 signature by the
actor over a `SignedClaim`. The claim binds the signature to exactly one use:

    kind         approve | amend | ack
    workflow_id  the rollout's workflow id
    first_run_id the rollout's first run id (stable across continue-as-new, new
                 for the next run of a reused workflow id)
    stage        the stage approved / whose roles approve the amendment / of the
                 handoff item
    entry        `approvals.entry` in status: how many times this rollout has
                 begun awaiting an approval (a rollback + resume is a new entry)
    role         the role approved for / the receiving role of a handoff item
    subject      "" for approve; the amendment's new plan hash; the handoff item text
    plan_hash    the plan hash in force
    actor        who signs
    signed_at    when (timezone-aware); refused when older than MAX_SIGNATURE_AGE
                 or more than MAX_CLOCK_SKEW in the future

The verifier never takes the claim from the message: the workflow builds it from
its own state and the message's `actor`, `role`, `signature` and `signed_at`, so
a signature read from history (another run, entry, stage, role, actor, plan,
kind or subject) verifies nothing else.

The signed bytes are `claim_message(claim)`: the line `rollout-signed:v2`, then
one line of canonical JSON: an array of the fields in the order above, with
`signed_at` in UTC as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (so an RFC 3339 time
parsed on either side gives the same bytes). JSON makes the encoding
unambiguous whatever characters a workflow id or handoff item holds.

The old v1 format (`rollout-approval:v1:...`, rollout/policy.py
`approval_message`) had no run, entry or time. Its messages carry a `signature`
without `signed_at`; `legacy_refusal` recognises them and says to sign again.
How a caller (the state machine) checks a message's signature fields:

    reason = legacy_refusal(plan, signature, signed_at, command="rollout approve ... --key FILE")
    if reason is None and plan.require_signed_approvals:
        claim = SignedClaim(..., signed_at=parse_signed_at(signed_at))
        reason = signature_refusal(plan, claim, signature, now)

`legacy_refusal` returns None when the plan does not require signatures, so the
two calls are cheap for unsigned plans. Every function here is pure: `now` is
passed in (workflow time in the workflow).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict

from rollout.plan import Plan

MESSAGE_VERSION = b"rollout-signed:v2\n"
MAX_SIGNATURE_AGE = timedelta(hours=24)
MAX_CLOCK_SKEW = timedelta(minutes=5)

SignedKind = Literal["approve", "amend", "ack"]

__all__ = [
    "MAX_CLOCK_SKEW",
    "MAX_SIGNATURE_AGE",
    "MESSAGE_VERSION",
    "SignedClaim",
    "SignedKind",
    "claim_message",
    "format_signed_at",
    "legacy_refusal",
    "parse_signed_at",
    "sign_claim",
    "signature_refusal",
]


def _load_invalid_signature_once() -> None:
    """Make cryptography's Rust core load `cryptography.exceptions` now, at import.

    It does so lazily, the first time a verification fails. Inside Temporal's workflow
    sandbox that first import would re-import the Rust extension, which aborts the
    process; after this call the exception type is cached for the process and a
    refused signature inside a workflow raises InvalidSignature like anywhere else."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    try:
        key.public_key().verify(bytes(64), b"")
    except InvalidSignature:
        return


_load_invalid_signature_once()


class SignedClaim(BaseModel):
    """What one signature vouches for. Built by the signer (the CLI) from `status`
    and by the verifier (the workflow) from its own state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SignedKind
    workflow_id: str
    first_run_id: str
    stage: str
    entry: int
    role: str
    subject: str
    plan_hash: str
    actor: str
    signed_at: AwareDatetime


def format_signed_at(when: datetime) -> str:
    """The canonical RFC 3339 text of a signing time: UTC, microseconds."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("signed_at must be timezone-aware")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def parse_signed_at(text: str) -> datetime:
    """Parse a message's `signed_at` (RFC 3339, with an offset or `Z`); ValueError if
    it is not a timezone-aware time."""
    when = datetime.fromisoformat(text.strip().upper())  # Python 3.11 reads 'Z' and 'T', not 'z' or 't'
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"signed_at {text!r} has no UTC offset")
    return when


def claim_message(claim: SignedClaim) -> bytes:
    """The exact bytes signed for `claim` (versioned; see the module docstring)."""
    fields = [
        claim.kind,
        claim.workflow_id,
        claim.first_run_id,
        claim.stage,
        claim.entry,
        claim.role,
        claim.subject,
        claim.plan_hash,
        claim.actor,
        format_signed_at(claim.signed_at),
    ]
    return MESSAGE_VERSION + json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def sign_claim(private_key: Ed25519PrivateKey, claim: SignedClaim) -> str:
    """The base64 Ed25519 signature of `claim_message(claim)`."""
    return base64.b64encode(private_key.sign(claim_message(claim))).decode()


def _describe(claim: SignedClaim) -> str:
    if claim.kind == "approve":
        return f"approval of stage '{claim.stage}' as '{claim.role}'"
    if claim.kind == "amend":
        return f"approval of amendment {claim.subject[:12]} as '{claim.role}'"
    return f"acknowledgement of handoff item '{claim.subject}'"


def signature_refusal(plan: Plan, claim: SignedClaim, signature: str | None, now: datetime) -> str | None:
    """Why `signature` does not make `claim` (built by the verifier from its own state)
    a signed act of `claim.actor`; None if it does or the plan needs no signatures."""
    if not plan.require_signed_approvals:
        return None
    what = _describe(claim)
    if not signature:
        return f"this plan requires signed approvals: the {what} needs a signature (sign it with `rollout ... --key FILE`)"
    key_b64 = plan.public_keys.get(claim.actor)
    if not key_b64:
        return (
            f"no public key for {claim.actor} in the plan (public_keys), so their signature cannot be checked"
        )
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64, validate=True))
        key.verify(base64.b64decode(signature, validate=True), claim_message(claim))
    except (InvalidSignature, ValueError, binascii.Error):
        return (
            f"the signature does not verify against {claim.actor}'s public key for the {what} "
            f"(workflow {claim.workflow_id}, run {claim.first_run_id}, entry {claim.entry}, plan {claim.plan_hash[:12]}): "
            "a signature is valid only for the exact run, entry, stage, role, actor, plan and time it was made for"
        )
    if claim.signed_at < now - MAX_SIGNATURE_AGE:
        age = now - claim.signed_at
        hours = age.total_seconds() / 3600
        return f"the signature was made {hours:.1f} h ago, more than 24 h: sign again"
    if claim.signed_at > now + MAX_CLOCK_SKEW:
        return (
            f"the signature is dated {format_signed_at(claim.signed_at)}, in the future "
            f"(more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} min ahead): check the signer's clock and sign again"
        )
    return None


def legacy_refusal(
    plan: Plan,
    signature: str | None,
    signed_at: str | datetime | None,
    *,
    command: str = "rollout approve ... --key FILE",
) -> str | None:
    """The refusal of a message whose signature fields cannot form a v2 claim:
    a signature without `signed_at` (the old v1 format), no signature at all, or a
    `signed_at` that is not an RFC 3339 time with an offset. None when the plan does
    not require signatures or the fields are usable (then call `signature_refusal`)."""
    if not plan.require_signed_approvals:
        return None
    if signed_at is None or signed_at == "":
        if signature:
            return (
                "signature is in the old v1 format (rollout-approval:v1, not bound to a run, entry or time) "
                f"and is no longer accepted; sign again with a current `rollout`: `{command}`"
            )
        return f"this plan requires signed approvals: pass a signature (`{command}`)"
    if not signature:
        return f"this plan requires signed approvals: pass a signature (`{command}`)"
    if isinstance(signed_at, datetime):
        if signed_at.tzinfo is None or signed_at.utcoffset() is None:
            return "signed_at must be an RFC 3339 time with a UTC offset"
        return None
    try:
        parse_signed_at(signed_at)
    except ValueError:
        return f"signed_at {signed_at!r} is not an RFC 3339 time with a UTC offset"
    return None
