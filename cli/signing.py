"""Signing approvals and handoff acknowledgements in the CLI (`--key FILE`).

The claim (rollout/signatures.py) is built from the rollout's `status`, read just
before signing: `workflow_id`, `first_run_id`, `approvals.entry`, `plan_hash`, and
for an amendment approval the stage whose roles approve it (`pending_amendment.roles_stage`,
else the current `stage`), for a
handoff acknowledgement the item's stage and receiving role from `pending_handoff`.
The payload then carries `signature` (base64) and `signed_at` (RFC 3339); the
workflow rebuilds the same claim from its own state, so a status read a moment
before an entry changes gives a signature the workflow refuses (sign again).

The key file is what `rollout keygen --out FILE` writes: the base64 raw Ed25519
private key on one line. Its contents never leave this process: only the
signature is sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import Client

from rollout.errors import RefusedError, UsageError
from rollout.signatures import SignedClaim, format_signed_at, sign_claim
from worker import client as rc

__all__ = ["ack_claim", "approval_claim", "load_private_key", "sign_payload", "signed_fields"]


def load_private_key(key_file: Path) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(key_file.read_text().strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (OSError, ValueError, binascii.Error) as exc:
        # the message names the file and the problem, never the key material
        raise UsageError(f"cannot read private key {key_file}: {type(exc).__name__}") from None


def _binding(st: Mapping[str, Any]) -> tuple[str, str, int, str]:
    if st.get("status") == "starting":
        raise RefusedError("the rollout is starting; try again in a moment")
    approvals = st.get("approvals") or {}
    missing = [
        k
        for k, v in (
            ("workflow_id", st.get("workflow_id")),
            ("first_run_id", st.get("first_run_id")),
            ("approvals.entry", approvals.get("entry")),
            ("plan_hash", st.get("plan_hash")),
        )
        if v is None or v == ""
    ]
    if missing:
        raise UsageError(
            f"cannot sign: the rollout's status has no {', '.join(missing)} "
            "(its worker predates signed approvals v2; upgrade the worker)"
        )
    return str(st["workflow_id"]), str(st["first_run_id"]), int(approvals["entry"]), str(st["plan_hash"])


def approval_claim(
    st: Mapping[str, Any],
    *,
    role: str,
    actor: str,
    now: datetime,
    stage: str | None = None,
    amendment: str | None = None,
) -> SignedClaim:
    """The claim of a stage approval (`stage`) or an amendment approval (`amendment`)."""
    wid, first_run, entry, plan_hash = _binding(st)
    if amendment:
        pending = st.get("pending_amendment") or {}
        return SignedClaim(
            kind="amend",
            workflow_id=wid,
            first_run_id=first_run,
            stage=str(pending.get("roles_stage") or st.get("stage") or ""),
            entry=entry,
            role=role,
            subject=amendment,
            plan_hash=plan_hash,
            actor=actor,
            signed_at=now,
        )
    if not stage:
        raise UsageError("approve needs --stage STAGE (or --amendment PLAN_HASH)")
    return SignedClaim(
        kind="approve",
        workflow_id=wid,
        first_run_id=first_run,
        stage=stage,
        entry=entry,
        role=role,
        subject="",
        plan_hash=plan_hash,
        actor=actor,
        signed_at=now,
    )


def ack_claim(
    st: Mapping[str, Any], *, item: str, actor: str, now: datetime, stage: str | None = None
) -> SignedClaim:
    """The claim of a handoff acknowledgement: the item's stage and receiving role come
    from `pending_handoff` in status."""
    wid, first_run, entry, plan_hash = _binding(st)
    pending = [h for h in st.get("pending_handoff") or [] if h.get("item") == item]
    if stage:
        pending = [h for h in pending if h.get("stage") == stage]
    if not pending:
        listed = (
            "; ".join(f"{h.get('item')} ({h.get('stage')})" for h in st.get("pending_handoff") or [])
            or "none"
        )
        where = f" of stage '{stage}'" if stage else ""
        raise UsageError(
            f"handoff item '{item}'{where} is not pending, so there is nothing to sign (pending: {listed})"
        )
    h = pending[0]
    return SignedClaim(
        kind="ack",
        workflow_id=wid,
        first_run_id=first_run,
        stage=str(h["stage"]),
        entry=entry,
        role=str(h["to"]),
        subject=item,
        plan_hash=plan_hash,
        actor=actor,
        signed_at=now,
    )


def signed_fields(key: Ed25519PrivateKey, claim: SignedClaim) -> dict[str, str]:
    """The payload fields that carry a signature: `signature` and `signed_at`."""
    return {"signature": sign_claim(key, claim), "signed_at": format_signed_at(claim.signed_at)}


async def sign_payload(
    client: Client,
    ident: str,
    action: str,
    payload: dict[str, Any],
    key_file: Path,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`payload` of an `approve` or `acknowledge` (handoff item) with `signature` and
    `signed_at` added, the claim built from the rollout's status read now."""
    key = load_private_key(key_file)  # a bad key file fails before any network call
    st = await rc.status(client, ident)
    when = now or datetime.now(UTC)
    actor = str(payload["actor"])
    if action == "approve":
        claim = approval_claim(
            st,
            role=str(payload.get("role") or ""),
            actor=actor,
            now=when,
            stage=payload.get("stage"),
            amendment=payload.get("amendment"),
        )
    elif action == "acknowledge" and payload.get("item"):
        claim = ack_claim(st, item=str(payload["item"]), actor=actor, now=when, stage=payload.get("stage"))
    else:
        raise UsageError(f"--key signs approvals and handoff acknowledgements, not {action}")
    return {**payload, **signed_fields(key, claim)}
