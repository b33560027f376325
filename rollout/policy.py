"""Pure policy decisions of a rollout: who may act, what a containment does, what comes next.

Plain functions over the plan and a little state, unit-tested without Temporal and
called from the workflow. A function that refuses returns the reason as a string
(None means allowed), so updates, signals and the CLI all give the same words.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rollout.plan import Plan
from rollout.thresholds import ACTION_ORDER, COVERAGE_MIN, stricter

ACTIONS: tuple[str, ...] = tuple(ACTION_ORDER)  # least to most strict

__all__ = ["ACTIONS", "stricter"]


def is_stricter(candidate: str, than: str) -> bool:
    return ACTIONS.index(candidate) > ACTIONS.index(than)


# ---- who may act ---------------------------------------------------------------------


def may_contain(plan: Plan, actor: str) -> str | None:
    """hold / rollback: anyone named in the plan."""
    if actor in plan.everyone():
        return None
    return f"{actor} is not named in the plan (owners or approvers) and may not hold or roll back"


def may_resume(plan: Plan, actor: str) -> str | None:
    """resume / acknowledge an escalation: the incident-response or rollout owner."""
    if actor in (plan.owners.incident_response, plan.owners.rollout):
        return None
    return (
        f"only the incident-response owner ({plan.owners.incident_response}) or the rollout owner "
        f"({plan.owners.rollout}) may do this, not {actor}"
    )


def may_own(plan: Plan, actor: str, what: str) -> str | None:
    """amend / abort: the rollout owner only."""
    if actor == plan.owners.rollout:
        return None
    return f"only the rollout owner ({plan.owners.rollout}) may {what}, not {actor}"


def approval_refusal(
    plan: Plan,
    *,
    stage_index: int,
    role: str,
    actor: str,
    given: Mapping[str, str],
) -> str | None:
    """May `actor` approve `role` for the stage? `given` maps role -> identity already approved."""
    stage = plan.stages[stage_index]
    if actor == plan.owners.rollout:
        return f"{actor} is the rollout owner and may never approve its own rollout"
    if role not in stage.approvals.roles:
        needed = ", ".join(stage.approvals.roles) or "none"
        return f"stage '{stage.name}' does not need an approval for role '{role}' (needs: {needed})"
    if actor not in plan.approvers.get(role, []):
        listed = ", ".join(plan.approvers.get(role, [])) or "nobody"
        return f"{actor} is not listed for role '{role}' (listed: {listed})"
    if role in given:
        return f"role '{role}' is already approved in this entry (by {given[role]})"
    for other_role, who in given.items():
        if who == actor:
            return f"{actor} already approved this entry (as '{other_role}'); each identity approves once"
    owners = plan.owners.by_key()
    for other in plan.distinct_from.get(role, []):
        if other in owners and owners[other] == actor:
            return f"separation of duties: '{role}' must be approved by someone other than the {other} owner ({actor})"
        if other in given and given[other] == actor:
            return f"separation of duties: '{role}' and '{other}' need different people"
    return None


def rejection_refusal(plan: Plan, *, stage_index: int, role: str | None, actor: str) -> str | None:
    stage = plan.stages[stage_index]
    if actor == plan.owners.rollout:
        return f"{actor} is the rollout owner and may not approve or reject its own rollout"
    roles = [role] if role else [r for r in stage.approvals.roles if actor in plan.approvers.get(r, [])]
    if not roles:
        return f"{actor} is not listed for any role stage '{stage.name}' awaits ({', '.join(stage.approvals.roles) or 'none'})"
    r = roles[0]
    if r not in stage.approvals.roles:
        return f"stage '{stage.name}' does not await role '{r}' (awaits: {', '.join(stage.approvals.roles) or 'none'})"
    if actor not in plan.approvers.get(r, []):
        return f"{actor} is not listed for role '{r}'"
    return None


def handoff_refusal(plan: Plan, *, stage_index: int, item: str, actor: str) -> str | None:
    stage = plan.stages[stage_index]
    for h in stage.handoff:
        if h.item == item:
            ids = plan.role_identities(h.to)
            if actor not in ids:
                return f"handoff item '{item}' goes to '{h.to}' ({', '.join(ids)}), not {actor}"
            return None
    items = "; ".join(h.item for h in stage.handoff) or "none"
    return f"stage '{stage.name}' has no handoff item '{item}' (items: {items})"


def find_handoff_stage(plan: Plan, item: str, entered: list[int]) -> int | None:
    """The latest entered stage that has a handoff item with this text."""
    for i in sorted(entered, reverse=True):
        if any(h.item == item for h in plan.stages[i].handoff):
            return i
    return None


# ---- containment ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    stage: int | None  # index of the stage whose scope this is; None = nothing exposed
    percent: float
    segments: list[str] | None
    authority: dict[str, str]


def stage_scope(plan: Plan, index: int) -> Scope:
    s = plan.stages[index]
    return Scope(index, s.scope.percent, s.scope.segments, plan.effective_authority(index))


ZERO = Scope(None, 0.0, None, {})


def narrowed_authority(authority: Mapping[str, str]) -> dict[str, str]:
    return {verb: ("review" if level == "auto" else level) for verb, level in authority.items()}


def containment_scope(plan: Plan, exposed: int, action: str) -> Scope:
    """Scope a containment leaves in force, given the exposed stage index."""
    current = stage_scope(plan, exposed)
    if action == "hold":
        return current
    if action == "narrow":
        base = stage_scope(plan, exposed - 1) if exposed > 0 else current
        return Scope(exposed, base.percent, base.segments, narrowed_authority(current.authority))
    if action == "rollback":
        return stage_scope(plan, exposed - 1) if exposed > 0 else ZERO
    raise ValueError(f"unknown containment action {action!r}")


def breach_action(plan: Plan, exposed: int, threshold: str | None, requested: str | None) -> str:
    """The containment a reported breach takes: the threshold's action (hold if unknown),
    made stricter by the reporter's `action` only when that is stricter."""
    action = "hold"
    for t in plan.stages[exposed].thresholds:
        if t.name == threshold:
            action = t.action
            break
    if requested in ACTIONS and requested is not None and is_stricter(requested, action):
        action = requested
    return action


# ---- escalation -----------------------------------------------------------------------


def escalation_targets(plan: Plan, level: int) -> tuple[list[str], list[str]]:
    """Roles and identities paged at escalation `level` (0 = chain[0]); past the end, all."""
    chain = plan.escalation.chain
    roles = [chain[level]] if level < len(chain) else list(chain)
    ids: list[str] = []
    for r in roles:
        for ident in plan.role_identities(r):
            if ident not in ids:
                ids.append(ident)
    return roles, ids


# ---- progress -------------------------------------------------------------------------


def next_stage(plan: Plan, index: int) -> int | None:
    return index + 1 if index + 1 < len(plan.stages) else None


def coverage_ok(coverage: Mapping[str, float], minimum: float = COVERAGE_MIN) -> bool:
    return all(v >= minimum - 1e-9 for v in coverage.values())


def amendment_refusal(current: Plan, new: Plan, entered: list[int]) -> str | None:
    if new.name != current.name:
        return f"an amendment keeps the plan name '{current.name}' (got '{new.name}')"
    if entered:
        last = max(entered)
        if len(new.stages) <= last:
            return f"stages already entered ({', '.join(s.name for s in current.stages[: last + 1])}) must stay"
        for i in range(last + 1):
            if new.stages[i].model_dump() != current.stages[i].model_dump():
                return f"stage '{current.stages[i].name}' was already entered and may not change"
    return None


# ---- signed approvals ------------------------------------------------------------------


def approval_message(workflow_id: str, stage: str, role: str, plan_hash: str, actor: str) -> bytes:
    """The exact bytes an approver signs when the plan requires signed approvals."""
    return f"rollout-approval:v1:{workflow_id}:{stage}:{role}:{plan_hash}:{actor}".encode()


def signature_refusal(plan: Plan, message: bytes, actor: str, signature: str | None) -> str | None:
    if not plan.require_signed_approvals:
        return None
    if not signature:
        return "this plan requires signed approvals: pass a signature (rollout approve ... --key FILE)"
    key_b64 = plan.public_keys.get(actor)
    if not key_b64:
        return f"no public key for {actor} in the plan"
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64))
        key.verify(base64.b64decode(signature), message)
    except (InvalidSignature, ValueError):
        return f"the signature does not verify against {actor}'s public key"
    return None
