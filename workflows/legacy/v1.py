"""The StagedRollout workflow as it was before the state machine: frozen for running rollouts.

StagedRollout (workflows/staged_rollout.py) delegates to this class for runs recorded
without the `state-machine-v2` patch marker. Do not change its behaviour.

Original docstring: one durable workflow per rollout (deterministic code only).

Handlers decide (and answer at once); the main loop makes decisions so, in order:
target changes go out one at a time in decision order, audit rows go out in
batches in sequence order, notifications never block. Pure rules live in
rollout.policy; this module only sequences them.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from rollout import policy
    from rollout.durations import parse_duration
    from rollout.errors import PlanError
    from rollout.models import (
        AuditBatch,
        AuditEvent,
        BreachEvidence,
        MonitorRequest,
        MonitorResult,
        Notification,
        NotifyResult,
        TargetChange,
        TargetResult,
    )
    from rollout.plan import Plan, validate_plan_data
    from workflows import search_attrs
    from workflows.legacy.state import (
        AckRecord,
        ApprovalRecord,
        BreachRecord,
        EscalationState,
        HoldInfo,
        Page,
        PendingAmendment,
        Refusal,
        RolloutState,
        TargetPending,
    )
    from workflows.messages import ActionInput, BreachReport, RolloutInput

FINAL = ("completed", "aborted")
CONTAINED = ("held", "rolled_back")
SYSTEM = "system"


def _secs(d: str) -> float:
    return parse_duration(d).total_seconds()


class LegacyStagedRollout:
    @workflow.init
    def __init__(self, inp: RolloutInput) -> None:
        self._wake = False
        self._monitor: workflow.ActivityHandle[MonitorResult] | None = None
        self._monitor_key: tuple[Any, ...] | None = None
        self._window_result: MonitorResult | None = None
        self._monitor_finished: tuple[Any, ...] | None = None  # a watch that ended without a breach
        self._audit_busy = False
        self._audit_paused = False
        self._notify_tasks: set[asyncio.Task[Any]] = set()
        self._sa: tuple[str, str] | None = None
        self._can_after = inp.continue_as_new_after
        self._fresh = inp.state is None
        if inp.state is not None:
            self.s: RolloutState | None = inp.state
            self.s.runs += 1
            return
        plan = inp.plan
        now = workflow.now()
        self.s = RolloutState(
            plan=plan,
            plan_hash=plan.plan_hash(),
            workflow_id=workflow.info().workflow_id,
            started_at=now,
            awaiting_since=now,
        )
        self._set_remind()

    # ------------------------------------------------------------------ run loop

    @workflow.run
    async def run(self, inp: RolloutInput) -> dict[str, Any]:
        s = self._state()
        if self._fresh:
            # a new run of a rollout id continues that id's audit trail (one hash chain per id)
            base = await workflow.execute_activity(
                "audit_last_seq",
                s.workflow_id,
                result_type=int,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            early = list(s.audit_outbox)  # decisions taken while the base was fetched
            s.audit_outbox.clear()
            s.audit_seq = base
            # decisions continue after the id's earlier runs too, so `<workflow id>:<seq>`
            # idempotency keys never repeat (every decision has an audit row: seq <= base)
            for ch in s.pending_changes:  # decided while the base was fetched
                if s.awaiting_window_seq == ch.seq:
                    s.awaiting_window_seq = ch.seq + base
                ch.seq += base
                ch.idempotency_key = f"{s.workflow_id}:{ch.seq}"
            s.decision_seq += base
            self._audit(
                "started",
                actor=s.plan.owners.rollout,
                role="rollout",
                payload={"plan": s.plan.model_dump(mode="json", by_alias=True), "plan_name": s.plan.name,
                         "run_id": workflow.info().run_id},
            )
            for ev in early:
                s.audit_seq += 1
                ev.seq = s.audit_seq
                s.audit_outbox.append(ev)
            self._notify("started", f"rollout {s.plan.name} started; awaiting approval of {s.plan.stages[0].name}")
        workflow.upsert_search_attributes(
            [
                search_attrs.OWNER.value_set(s.plan.owners.rollout),
                search_attrs.PLAN.value_set(s.plan.name),
            ]
        )
        audit_task = asyncio.get_running_loop().create_task(self._audit_loop())
        while True:
            self._wake = False
            self._progress()
            self._sync_monitor()
            self._upsert_sa()
            if s.pending_changes:
                await self._deliver()
                continue
            if s.status in FINAL:
                break
            if self._should_continue_as_new():
                await self._continue_as_new(inp)
            if self._wake:
                continue
            try:
                await workflow.wait_condition(lambda: self._wake, timeout=self._next_deadline())
            except TimeoutError:
                pass
            self._on_time()
        # closing: stop watching, flush audit and notifications
        self._stop_monitor()
        await workflow.wait_condition(lambda: not s.audit_outbox and not self._audit_busy)
        if self._notify_tasks:
            await workflow.wait(list(self._notify_tasks))
        await workflow.wait_condition(workflow.all_handlers_finished)
        audit_task.cancel()
        return self._status()

    def _state(self) -> RolloutState:
        assert self.s is not None
        return self.s

    @property
    def plan(self) -> Plan:
        return self._state().plan

    def _now(self) -> datetime:
        return workflow.now()

    def _poke(self) -> None:
        self._wake = True

    # ------------------------------------------------------------------ queries

    @workflow.query
    def status(self) -> dict[str, Any]:
        return self._status()

    def _status(self) -> dict[str, Any]:
        s = self._state()
        plan = s.plan
        stage = plan.stages[s.stage_index]
        given = s.approvals.get(stage.name, {})
        pending_handoff = []
        if s.stage_index in s.entered:
            acks = s.handoff_acks.get(stage.name, {})
            pending_handoff = [
                {"stage": stage.name, "item": h.item, "to": h.to, "identities": plan.role_identities(h.to)}
                for h in stage.handoff
                if h.item not in acks
            ]
        exposure: dict[str, Any] = {
            "percent": s.exposure_percent,
            "segments": s.exposure_segments,
            "authority": s.exposure_authority,
            "frozen": s.exposure_frozen,
        }
        return {
            "workflow_id": s.workflow_id,
            "name": plan.name,
            "plan_hash": s.plan_hash,
            "owners": plan.owners.by_key(),
            "stage": stage.name,
            "stage_index": s.stage_index,
            "tier": stage.tier,
            "stages": [x.name for x in plan.stages],
            "status": s.status,
            "exposure": exposure,
            "exposure_stage": None if s.exposure_stage is None else plan.stages[s.exposure_stage].name,
            "window_started_at": _iso(s.window_started_at) if s.status == "soaking" else None,
            "window_ends_at": _iso(s.window_ends_at) if s.status == "soaking" else None,
            "window_coverage": s.window_coverage,
            "exposure_clean": s.exposure_clean,  # the exposed stage soaked a full clean window since entry/resume
            "approvals": {
                "stage": stage.name,
                "awaiting_since": _iso(s.awaiting_since) if self._awaited() is not None else None,
                "given": {r: a.model_dump(mode="json") for r, a in given.items()},
                "missing": [r for r in stage.approvals.roles if r not in given],
            },
            "handoff_acknowledged": {
                st: {i: a.model_dump(mode="json") for i, a in items.items()} for st, items in s.handoff_acks.items()
            },
            "pending_handoff": pending_handoff,
            "hold": s.hold.model_dump(mode="json") if s.hold else None,
            "open_breaches": [b.model_dump(mode="json", by_alias=True) for b in s.breaches],
            "escalation": s.escalation.model_dump(mode="json") if s.escalation else None,
            "pending_amendment": (
                {
                    "plan_hash": s.pending_amendment.plan_hash,
                    "proposed_by": s.pending_amendment.proposed_by,
                    "proposed_at": _iso(s.pending_amendment.proposed_at),
                    "approvals": {r: a.model_dump(mode="json") for r, a in s.pending_amendment.approvals.items()},
                    "missing": [r for r in stage.approvals.roles if r not in s.pending_amendment.approvals],
                }
                if s.pending_amendment
                else None
            ),
            "target_pending": s.target_pending.model_dump(mode="json") if s.target_pending else None,
            "refused": [r.model_dump(mode="json") for r in s.refused],
            "started_at": _iso(s.started_at),
            "final_reason": s.final_reason,
            "decisions": s.decision_seq,
            "audit_seq": s.audit_seq,
            "runs": s.runs,
        }

    # ------------------------------------------------------------------ updates + signals

    @workflow.update
    def approve(self, a: ActionInput) -> dict[str, Any]:
        return self._act("approve", a, "update")

    @approve.validator
    def _v_approve(self, a: ActionInput) -> None:
        self._validate("approve", a)

    @workflow.update
    def reject(self, a: ActionInput) -> dict[str, Any]:
        return self._act("reject", a, "update")

    @reject.validator
    def _v_reject(self, a: ActionInput) -> None:
        self._validate("reject", a)

    @workflow.update
    def hold(self, a: ActionInput) -> dict[str, Any]:
        return self._act("hold", a, "update")

    @hold.validator
    def _v_hold(self, a: ActionInput) -> None:
        self._validate("hold", a)

    @workflow.update
    def resume(self, a: ActionInput) -> dict[str, Any]:
        return self._act("resume", a, "update")

    @resume.validator
    def _v_resume(self, a: ActionInput) -> None:
        self._validate("resume", a)

    @workflow.update
    def rollback(self, a: ActionInput) -> dict[str, Any]:
        return self._act("rollback", a, "update")

    @rollback.validator
    def _v_rollback(self, a: ActionInput) -> None:
        self._validate("rollback", a)

    @workflow.update
    def acknowledge(self, a: ActionInput) -> dict[str, Any]:
        return self._act("acknowledge", a, "update")

    @acknowledge.validator
    def _v_acknowledge(self, a: ActionInput) -> None:
        self._validate("acknowledge", a)

    @workflow.update
    def amend(self, a: ActionInput) -> dict[str, Any]:
        return self._act("amend", a, "update")

    @amend.validator
    def _v_amend(self, a: ActionInput) -> None:
        self._validate("amend", a)

    @workflow.update
    def abort(self, a: ActionInput) -> dict[str, Any]:
        return self._act("abort", a, "update")

    @abort.validator
    def _v_abort(self, a: ActionInput) -> None:
        self._validate("abort", a)

    @workflow.signal(name="approve")
    def approve_signal(self, a: ActionInput) -> None:
        self._act("approve", a, "signal")

    @workflow.signal(name="reject")
    def reject_signal(self, a: ActionInput) -> None:
        self._act("reject", a, "signal")

    @workflow.signal(name="hold")
    def hold_signal(self, a: ActionInput) -> None:
        self._act("hold", a, "signal")

    @workflow.signal(name="resume")
    def resume_signal(self, a: ActionInput) -> None:
        self._act("resume", a, "signal")

    @workflow.signal(name="rollback")
    def rollback_signal(self, a: ActionInput) -> None:
        self._act("rollback", a, "signal")

    @workflow.signal(name="acknowledge")
    def acknowledge_signal(self, a: ActionInput) -> None:
        self._act("acknowledge", a, "signal")

    @workflow.signal(name="amend")
    def amend_signal(self, a: ActionInput) -> None:
        self._act("amend", a, "signal")

    @workflow.signal(name="abort")
    def abort_signal(self, a: ActionInput) -> None:
        self._act("abort", a, "signal")

    @workflow.signal
    def report_breach(self, r: BreachReport) -> None:
        if self.s is None:
            return
        observed = r.observed()
        requested = r.action if isinstance(r.action, str) else None
        evidence = BreachEvidence(
            source=str(r.source) if r.source else "unknown",
            threshold=r.threshold if isinstance(r.threshold, str) and r.threshold else None,
            value=_float(r.value),
            observed_at=observed or self._now(),
            action="hold",
            detail={
                "detail": r.detail,
                "requested_action": r.action,
                **({"value_raw": r.value} if _float(r.value) is None and r.value is not None else {}),
                **({"observed_at_raw": r.observed_at} if observed is None and r.observed_at is not None else {}),
                **(r.model_extra or {}),
            },
        )
        self._breach(evidence, requested=requested)
        self._poke()

    # ---- action plumbing

    def _validate(self, action: str, a: ActionInput) -> None:
        if self.s is None:
            raise ApplicationError("the rollout is starting; try again", type="Refused", non_retryable=True)
        reason = self._check(action, a)
        if reason:
            raise ApplicationError(reason, type="Refused", non_retryable=True)

    def _act(self, action: str, a: ActionInput, via: str) -> dict[str, Any]:
        if self.s is None:
            raise ApplicationError("the rollout is starting; try again", type="Refused", non_retryable=True)
        reason = self._check(action, a)  # re-checked: preconditions may have changed since validation
        if reason:
            if via == "update":
                raise ApplicationError(reason, type="Refused", non_retryable=True)
            self._refuse(action, a, reason)
            return {"refused": reason}
        getattr(self, f"_do_{action}")(a)
        self._progress()  # decisions that follow at once (e.g. entry on the last approval)
        self._poke()
        return {"ok": True, "status": self.s.status, "stage": self.plan.stages[self.s.stage_index].name}

    def _refuse(self, action: str, a: ActionInput, reason: str) -> None:
        s = self._state()
        s.refused.append(Refusal(at=self._now(), action=action, actor=a.actor or None, reason=reason))
        del s.refused[:-100]
        self._audit(
            "refused",
            actor=a.actor or None,
            reason=reason,
            payload={"action": action, "request": a.model_dump(mode="json", exclude={"plan"}), "via": "signal"},
        )

    def _awaited(self) -> int | None:
        """Index of the stage whose entry approvals are being collected, if any."""
        s = self._state()
        if s.status == "awaiting_approval":
            return s.stage_index
        if s.status == "held" and s.hold is not None and s.hold.interrupted == "awaiting_approval":
            return s.stage_index
        return None

    def _check(self, action: str, a: ActionInput) -> str | None:
        s = self._state()
        plan = s.plan
        if s.status in FINAL:
            return f"the rollout is {s.status}; start a new run to act on it"
        if not a.actor:
            return "actor is required (who is acting?)"
        if action == "approve":
            return self._check_approve(a)
        if action == "reject":
            idx = self._awaited()
            if idx is None:
                return f"no stage is awaiting approval (status {s.status})"
            if a.stage and a.stage != plan.stages[idx].name:
                if plan.stage_index(a.stage) is None:
                    return f"unknown stage '{a.stage}' (stages: {', '.join(x.name for x in plan.stages)})"
                return f"stage '{a.stage}' is not awaiting approval (awaiting: {plan.stages[idx].name})"
            if not a.reason:
                return "a rejection needs a reason"
            return policy.rejection_refusal(plan, stage_index=idx, role=a.role, actor=a.actor)
        if action == "hold":
            if r := policy.may_contain(plan, a.actor):
                return r
            if s.status in CONTAINED:
                return f"the rollout is already {s.status}; resume it first"
            return None
        if action == "rollback":
            if r := policy.may_contain(plan, a.actor):
                return r
            if s.status == "rolled_back":
                return "the rollout is already rolled back; resume it first"
            if s.decided_stage is None:
                return "nothing is exposed yet, so there is nothing to roll back (use hold)"
            return None
        if action == "resume":
            if r := policy.may_resume(plan, a.actor):
                return r
            if s.status not in CONTAINED:
                return f"the rollout is not held or rolled back (status {s.status})"
            return None
        if action == "acknowledge":
            if a.escalation:
                if r := policy.may_resume(plan, a.actor):
                    return r
                if s.escalation is None or s.escalation.acknowledged_by is not None:
                    return "there is no open escalation to acknowledge"
                return None
            if not a.item:
                return "acknowledge needs an `item` (handoff) or `escalation: true`"
            hidx = self._handoff_stage(a)
            if isinstance(hidx, str):
                return hidx
            if a.item in s.handoff_acks.get(plan.stages[hidx].name, {}):
                prev = s.handoff_acks[plan.stages[hidx].name][a.item]
                return f"handoff item '{a.item}' was already acknowledged by {prev.actor}"
            return policy.handoff_refusal(plan, stage_index=hidx, item=a.item, actor=a.actor)
        if action == "amend":
            if r := policy.may_own(plan, a.actor, "amend the plan"):
                return r
            if not a.plan:
                return "amend needs the full new plan"
            try:
                new = validate_plan_data(a.plan)
            except PlanError as exc:
                return "the amended plan is invalid: " + "; ".join(exc.problems)
            return policy.amendment_refusal(plan, new, s.entered)
        if action == "abort":
            return policy.may_own(plan, a.actor, "abort the rollout")
        return f"unknown action {action}"

    def _check_approve(self, a: ActionInput) -> str | None:
        s = self._state()
        plan = s.plan
        if a.amendment:
            pa = s.pending_amendment
            if pa is None:
                return "there is no pending amendment to approve"
            if a.amendment != pa.plan_hash:
                return f"the pending amendment is {pa.plan_hash}, not {a.amendment}"
            if not a.role:
                return "an approval needs a role"
            given = {r: x.actor for r, x in pa.approvals.items()}
            if r := policy.approval_refusal(plan, stage_index=s.stage_index, role=a.role, actor=a.actor, given=given):
                return r
            msg = policy.approval_message(s.workflow_id, f"amendment:{pa.plan_hash}", a.role, s.plan_hash, a.actor)
            return policy.signature_refusal(plan, msg, a.actor, a.signature)
        if not a.stage:
            return "an approval needs the stage it approves"
        idx = plan.stage_index(a.stage)
        if idx is None:
            return f"unknown stage '{a.stage}' (stages: {', '.join(x.name for x in plan.stages)})"
        awaited = self._awaited()
        if awaited is None or awaited != idx:
            waiting = f"awaiting: {plan.stages[awaited].name}" if awaited is not None else f"status {s.status}"
            return f"stage '{a.stage}' is not awaiting approval ({waiting})"
        if not a.role:
            return "an approval needs a role"
        given = {r: x.actor for r, x in s.approvals.get(a.stage, {}).items()}
        if r := policy.approval_refusal(plan, stage_index=idx, role=a.role, actor=a.actor, given=given):
            return r
        msg = policy.approval_message(s.workflow_id, a.stage, a.role, s.plan_hash, a.actor)
        return policy.signature_refusal(plan, msg, a.actor, a.signature)

    def _handoff_stage(self, a: ActionInput) -> int | str:
        s = self._state()
        plan = s.plan
        if a.stage:
            idx = plan.stage_index(a.stage)
            if idx is None:
                return f"unknown stage '{a.stage}'"
            if idx not in s.entered or idx > s.stage_index:
                return f"stage '{a.stage}' has not been entered yet"
            return idx
        # stages entered and not rolled back from (their acknowledgements were voided)
        live = [i for i in s.entered if i <= s.stage_index]
        found = policy.find_handoff_stage(plan, a.item or "", live)
        if found is None:
            items = [h.item for i in live for h in plan.stages[i].handoff]
            if any(h.item == a.item for st in plan.stages for h in st.handoff):
                return f"the stage with handoff item '{a.item}' has not been entered yet"
            return f"no entered stage has handoff item '{a.item}' (items: {'; '.join(items) or 'none'})"
        return found

    # ---- the actions

    def _do_approve(self, a: ActionInput) -> None:
        s = self._state()
        assert a.role is not None
        rec = ApprovalRecord(
            role=a.role, actor=a.actor, at=self._now(), comment=a.comment, signed=bool(a.signature)
        )
        if a.amendment:
            pa = s.pending_amendment
            assert pa is not None
            pa.approvals[a.role] = rec
            self._audit(
                "amendment_approved",
                actor=a.actor,
                role=a.role,
                reason=a.comment,
                payload={"amendment": pa.plan_hash},
            )
            self._maybe_apply_amendment()
            return
        assert a.stage is not None
        s.approvals.setdefault(a.stage, {})[a.role] = rec
        self._audit("approved", actor=a.actor, role=a.role, stage=a.stage, reason=a.comment, payload={})

    def _do_reject(self, a: ActionInput) -> None:
        s = self._state()
        stage = self.plan.stages[s.stage_index]
        role = a.role or next(r for r in stage.approvals.roles if a.actor in self.plan.approvers.get(r, []))
        voided = {r: x.actor for r, x in s.approvals.get(stage.name, {}).items()}
        s.approvals[stage.name] = {}
        self._audit(
            "rejected", actor=a.actor, role=role, stage=stage.name, reason=a.reason, payload={"voided": voided}
        )
        if s.status == "awaiting_approval":
            s.status = "held"
            s.hold = HoldInfo(
                kind="reject",
                reason=f"rejected by {a.actor} ({role}): {a.reason}",
                actor=a.actor,
                since=self._now(),
                interrupted="awaiting_approval",
            )
        self._notify("rejected", f"{a.actor} ({role}) rejected entry to {stage.name}: {a.reason}")

    def _do_hold(self, a: ActionInput) -> None:
        self._contain("hold", actor=a.actor, reason=a.reason or "manual hold")

    def _do_rollback(self, a: ActionInput) -> None:
        self._contain("rollback", actor=a.actor, reason=a.reason or "manual rollback")

    def _do_resume(self, a: ActionInput) -> None:
        self._resume(a.actor, a.reason or "resumed")

    def _do_abort(self, a: ActionInput) -> None:
        s = self._state()
        s.status = "aborted"
        s.final_reason = a.reason or "aborted"
        self._stop_window()
        self._decide_change("abort", policy.ZERO, a.reason or "aborted")
        self._audit("aborted", actor=a.actor, role="rollout", reason=a.reason, payload={})
        self._notify("aborted", f"rollout {self.plan.name} aborted by {a.actor}: {a.reason}; scope set to zero")

    def _do_acknowledge(self, a: ActionInput) -> None:
        s = self._state()
        if a.escalation:
            esc = s.escalation
            assert esc is not None
            esc.acknowledged_by = a.actor
            esc.acknowledged_at = self._now()
            esc.next_page_at = None
            self._audit("escalation_acknowledged", actor=a.actor, reason=a.reason, payload={"level": esc.level})
            return
        idx = self._handoff_stage(a)
        assert isinstance(idx, int) and a.item is not None
        stage = self.plan.stages[idx]
        s.handoff_acks.setdefault(stage.name, {})[a.item] = AckRecord(item=a.item, actor=a.actor, at=self._now())
        to = next(h.to for h in stage.handoff if h.item == a.item)
        self._audit("handoff_acknowledged", actor=a.actor, role=to, stage=stage.name, payload={"item": a.item})

    def _do_amend(self, a: ActionInput) -> None:
        s = self._state()
        assert a.plan is not None
        new = validate_plan_data(a.plan)
        replaced = s.pending_amendment.plan_hash if s.pending_amendment else None
        s.pending_amendment = PendingAmendment(
            plan=new, plan_hash=new.plan_hash(), proposed_by=a.actor, proposed_at=self._now(), reason=a.reason
        )
        self._audit(
            "amendment_proposed",
            actor=a.actor,
            role="rollout",
            reason=a.reason,
            payload={"amendment": new.plan_hash(), "replaces": replaced, "plan": new.model_dump(mode="json", by_alias=True)},
        )
        self._notify("amended", f"amendment {new.plan_hash()[:12]} proposed by {a.actor}; awaiting approval")
        self._maybe_apply_amendment()

    def _maybe_apply_amendment(self) -> None:
        s = self._state()
        pa = s.pending_amendment
        if pa is None:
            return
        roles = self.plan.stages[s.stage_index].approvals.roles
        if any(r not in pa.approvals for r in roles):
            return
        old = s.plan_hash
        s.plan = pa.plan
        s.plan_hash = pa.plan_hash
        s.pending_amendment = None
        voided: dict[str, str] = {}
        if self._awaited() is not None:
            name = s.plan.stages[s.stage_index].name
            voided = {r: x.actor for r, x in s.approvals.get(name, {}).items()}
            s.approvals[name] = {}
        self._audit(
            "amendment_applied",
            actor=SYSTEM,
            payload={
                "old_plan_hash": old,
                "plan_hash": s.plan_hash,
                "approvals": {r: x.actor for r, x in pa.approvals.items()},
                "voided": voided,
            },
        )
        self._notify("amended", f"amendment {s.plan_hash[:12]} applied")

    # ------------------------------------------------------------------ decisions

    def _decide_change(self, kind: str, scope: policy.Scope, reason: str, frozen: bool = False) -> int:
        """Queue a target change in decision order; returns its decision sequence."""
        s = self._state()
        s.decision_seq += 1
        s.decided_stage = scope.stage
        s.decided_percent = scope.percent
        s.decided_segments = scope.segments
        s.decided_authority = dict(scope.authority)
        change = TargetChange(
            rollout_id=s.workflow_id,
            plan_name=self.plan.name,
            seq=s.decision_seq,
            idempotency_key=f"{s.workflow_id}:{s.decision_seq}",
            kind=kind,
            stage=None if scope.stage is None else self.plan.stages[scope.stage].name,
            percent=scope.percent,
            segments=scope.segments,
            authority=dict(scope.authority),
            frozen=frozen,
            plan_hash=s.plan_hash,
            reason=reason,
            decided_at=self._now(),
            target=self.plan.target.model_dump(mode="json"),
        )
        s.pending_changes.append(change)
        self._audit(
            "scope_decided",
            actor=SYSTEM,
            stage=change.stage,
            reason=reason,
            payload={"seq": change.seq, "kind": kind, "percent": scope.percent, "segments": scope.segments,
                     "authority": scope.authority, "frozen": frozen},
        )
        return change.seq

    def _decided_scope(self) -> policy.Scope:
        s = self._state()
        return policy.Scope(s.decided_stage, s.decided_percent, s.decided_segments, dict(s.decided_authority))

    def _progress(self) -> None:
        """Advance through the stage cycle as far as the state allows (no waiting here)."""
        s = self._state()
        for _ in range(len(self.plan.stages) * 3 + 3):
            if s.status == "awaiting_approval":
                stage = self.plan.stages[s.stage_index]
                given = s.approvals.get(stage.name, {})
                if all(r in given for r in stage.approvals.roles):
                    self._enter(s.stage_index)
                    continue
                return
            if s.status == "soaking":
                if not self._window_done():
                    return
                if not self._finish_window():
                    return
                continue
            if s.status == "awaiting_handoff":
                if self._open_handoff():
                    return
                self._leave_stage()
                continue
            return

    def _enter(self, idx: int) -> None:
        s = self._state()
        stage = self.plan.stages[idx]
        s.status = "soaking"
        s.stage_index = idx
        if idx not in s.entered:
            s.entered.append(idx)
        s.exposure_clean = False
        s.window_started_at = s.window_ends_at = None
        s.window_coverage = {}
        s.counters = {}
        s.exposure_since = self._now()
        s.remind_at = None
        approvals = {r: x.model_dump(mode="json") for r, x in s.approvals.get(stage.name, {}).items()}
        s.awaiting_window_seq = self._decide_change(
            "promote", policy.stage_scope(self.plan, idx), f"entry approved: {', '.join(approvals) or 'no approvals needed'}"
        )
        self._audit("stage_entered", actor=SYSTEM, stage=stage.name, payload={"approvals": approvals})
        self._notify(
            "stage_entered",
            f"{self.plan.name} entered {stage.name} ({stage.tier}, {stage.scope.percent:g}%); window {stage.window}",
        )

    def _window_done(self) -> bool:
        s = self._state()
        if s.window_ends_at is None or s.awaiting_window_seq is not None:
            return False
        if self._now() < s.window_ends_at:
            return False
        if self._has_thresholds(s.stage_index):
            return self._window_result is not None
        return True

    def _finish_window(self) -> bool:
        """Window ended: clean -> handoff/next; otherwise hold for insufficient data."""
        s = self._state()
        stage = self.plan.stages[s.stage_index]
        coverage = self._window_result.coverage if self._window_result else {}
        if self._window_result is not None:
            s.counters = dict(self._window_result.counters)
        self._window_result = None
        s.window_coverage = coverage
        if not policy.coverage_ok(coverage):
            low = {k: round(v, 3) for k, v in coverage.items() if v < 0.9}
            self._audit("window_insufficient_data", actor=SYSTEM, stage=stage.name, payload={"coverage": coverage})
            self._contain("hold", actor=SYSTEM, reason=f"insufficient data: coverage {low} below 90%",
                          exact_reason="insufficient data")
            return False
        s.exposure_clean = True
        self._audit(
            "window_clean",
            actor=SYSTEM,
            stage=stage.name,
            payload={"window_started_at": _iso(s.window_started_at), "window_ends_at": _iso(s.window_ends_at),
                     "coverage": coverage},
        )
        s.window_started_at = s.window_ends_at = None
        s.status = "awaiting_handoff"
        return True

    def _open_handoff(self) -> list[str]:
        s = self._state()
        stage = self.plan.stages[s.stage_index]
        acks = s.handoff_acks.get(stage.name, {})
        return [h.item for h in stage.handoff if h.item not in acks]

    def _leave_stage(self) -> None:
        s = self._state()
        stage = self.plan.stages[s.stage_index]
        if stage.handoff:
            self._audit("handoff_complete", actor=SYSTEM, stage=stage.name,
                        payload={"acks": {i: a.actor for i, a in s.handoff_acks.get(stage.name, {}).items()}})
        nxt = policy.next_stage(self.plan, s.stage_index)
        if nxt is None:
            s.status = "completed"
            s.final_reason = "all stages completed"
            self._audit("completed", actor=SYSTEM, stage=stage.name, payload={})
            self._notify("completed", f"{self.plan.name} completed: {stage.name} is the system of record")
            return
        s.stage_index = nxt
        s.status = "awaiting_approval"
        s.awaiting_since = self._now()
        self._set_remind()
        nstage = self.plan.stages[nxt]
        self._audit("awaiting_approval", actor=SYSTEM, stage=nstage.name, payload={"roles": nstage.approvals.roles})

    def _set_remind(self) -> None:
        s = self._state()
        ra = self.plan.stages[s.stage_index].approvals.remind_after
        s.remind_at = self._now() + parse_duration(ra) if ra else None

    def _stop_window(self) -> None:
        s = self._state()
        s.window_started_at = s.window_ends_at = None
        s.awaiting_window_seq = None
        s.exposure_clean = False
        self._window_result = None

    def _phase(self) -> str:
        s = self._state()
        if s.status in ("awaiting_approval", "soaking", "awaiting_handoff"):
            return s.status
        return s.hold.interrupted if s.hold else "awaiting_approval"

    def _contain(
        self,
        action: str,
        *,
        actor: str,
        reason: str,
        thresholds: list[str] | None = None,
        exact_reason: str | None = None,
    ) -> None:
        s = self._state()
        interrupted = self._phase()
        exposed = s.decided_stage
        scope = self._decided_scope()
        if exposed is None and action != "hold":
            action = "hold"
        if action == "hold":
            s.status = "held"
            if exposed is not None:
                self._decide_change("hold", scope, reason, frozen=True)
        elif action == "narrow":
            assert exposed is not None
            s.status = "held"
            self._decide_change("narrow", policy.containment_scope(self.plan, exposed, "narrow"), reason, frozen=True)
        else:
            assert exposed is not None
            new_scope = policy.containment_scope(self.plan, exposed, "rollback")
            # void approvals and handoff acknowledgements of the stage rolled back from (and later)
            voided = []
            for i in range(exposed, len(self.plan.stages)):
                name = self.plan.stages[i].name
                if s.approvals.pop(name, None):
                    voided.append(name)
                s.handoff_acks.pop(name, None)
            s.stage_index = max(exposed - 1, 0)
            s.status = "rolled_back"
            interrupted = "soaking"
            self._decide_change("rollback", new_scope, reason)
            self._audit("approvals_voided", actor=SYSTEM, payload={"stages": voided, "from": self.plan.stages[exposed].name})
        self._stop_window()
        s.counters = {}
        s.hold = HoldInfo(
            kind=action,
            reason=exact_reason or reason,
            actor=actor,
            since=self._now(),
            interrupted=interrupted,
            thresholds=list(thresholds or []),
        )
        self._audit(
            f"contained_{action}",
            actor=actor,
            reason=reason,
            stage=self.plan.stages[s.stage_index].name,
            payload={"interrupted": interrupted, "thresholds": thresholds or [], "scope": self._scope_json()},
        )
        self._notify(action, f"{self.plan.name} {action}: {reason} (by {actor})")
        self._escalate(actor, reason)

    def _escalate(self, actor: str, reason: str) -> None:
        s = self._state()
        now = self._now()
        if s.escalation is not None and s.escalation.acknowledged_by is None:
            return  # an open escalation keeps its level and clock
        s.escalation = EscalationState(reason=reason, started_at=now)
        if policy.may_resume(self.plan, actor) is None:
            s.escalation.acknowledged_by = actor
            s.escalation.acknowledged_at = now
            self._audit("escalation_acknowledged", actor=actor, payload={"level": 0, "auto": True})
            return
        self._page(0, due=now)

    def _page(self, level: int, due: datetime) -> None:
        s = self._state()
        esc = s.escalation
        assert esc is not None
        now = self._now()
        roles, ids = policy.escalation_targets(self.plan, level)
        delay = max(0.0, (now - due).total_seconds())
        esc.level = level
        esc.pages.append(Page(level=level, roles=roles, recipients=ids, at=now, due_at=due, delay_seconds=delay))
        del esc.pages[:-50]
        esc.next_page_at = due + parse_duration(self.plan.escalation.ack_within)
        if esc.next_page_at <= now:
            esc.next_page_at = now + parse_duration(self.plan.escalation.ack_within)
        ack = f"rollout ack {s.workflow_id} --escalation --as <you>"
        self._audit(
            "escalation_page",
            actor=SYSTEM,
            payload={"level": level, "roles": roles, "recipients": ids, "due_at": _iso(due), "delay_seconds": delay,
                     "reason": esc.reason},
        )
        self._notify(
            "escalation_page",
            f"PAGE {', '.join(ids)} ({', '.join(roles)}): {self.plan.name} {s.status}: {esc.reason}. Acknowledge: {ack}",
            page=True,
            recipients=ids,
            ack_command=ack,
        )

    def _resume(self, actor: str, reason: str) -> None:
        s = self._state()
        now = self._now()
        prior = s.hold
        s.hold = None
        s.breaches = []
        s.counters = {}
        s.last_resume_at = now
        if s.escalation is not None and s.escalation.acknowledged_by is None:
            s.escalation.acknowledged_by = actor
            s.escalation.acknowledged_at = now
            s.escalation.next_page_at = None
        if prior is not None and prior.kind == "reject":
            s.status = "awaiting_approval"
            s.awaiting_since = now
            self._set_remind()
        elif s.decided_stage is None:
            s.status = "awaiting_approval"
            s.awaiting_since = now
            self._set_remind()
        else:
            s.stage_index = s.decided_stage
            s.status = "soaking"
            s.exposure_clean = False
            s.exposure_since = now
            s.window_started_at = s.window_ends_at = None
            s.awaiting_window_seq = self._decide_change("resume", policy.stage_scope(self.plan, s.decided_stage), reason)
        self._audit("resumed", actor=actor, reason=reason, stage=self.plan.stages[s.stage_index].name,
                    payload={"was": prior.model_dump(mode="json") if prior else None})
        self._notify("resumed", f"{self.plan.name} resumed by {actor}: {reason}; now {s.status}")

    def _breach(self, ev: BreachEvidence, requested: str | None) -> None:
        s = self._state()
        s.breach_count += 1
        exposed = s.decided_stage
        note = ""
        apply = True
        action = "hold"
        if s.status in FINAL:
            note, apply = f"rollout is {s.status}", False
        elif exposed is None:
            note, apply = "nothing exposed: recorded only", False
        else:
            action = policy.breach_action(self.plan, exposed, ev.threshold, requested)
            if ev.no_data and ev.source == "prometheus":
                action = ev.action
            since = max([t for t in (s.exposure_since, s.last_resume_at) if t is not None], default=None)
            if since is not None and ev.observed_at < since:
                note, apply = "observed before the current stage entry or last resume: recorded only", False
            elif s.status in CONTAINED and s.hold is not None:
                if ev.threshold is not None and ev.threshold in s.hold.thresholds:
                    note, apply = "repeat while already contained for this threshold", False
                elif s.status == "held" and policy.is_stricter(action, s.hold.kind if s.hold.kind in policy.ACTIONS else "hold"):
                    note = f"stricter than the current {s.hold.kind}"
                else:
                    note, apply = f"already {s.status}: recorded", False
                    if ev.threshold:
                        s.hold.thresholds.append(ev.threshold)
        ev = ev.model_copy(update={"action": action})
        rec = BreachRecord(
            id=s.breach_count,
            received_at=self._now(),
            stage=None if exposed is None else self.plan.stages[exposed].name,
            threshold=ev.threshold,
            action=action,
            applied=apply,
            note=note,
            evidence=ev,
        )
        rec.bundle = self._evidence_bundle(rec, action if apply else None)
        if apply:
            s.breaches.append(rec)
            del s.breaches[:-50]
        event = self._audit(
            "breach",
            actor=ev.source,
            stage=rec.stage,
            reason=note or f"threshold {ev.threshold} breached",
            payload={"breach": rec.model_dump(mode="json", by_alias=True)},
        )
        self._notify("breach", f"{self.plan.name}: breach of {ev.threshold or 'unnamed threshold'} from {ev.source}"
                     + (f" -> {action}" if apply else f" ({note})"))
        if apply:
            self._contain(
                action,
                actor=ev.source,
                reason=f"breach of {ev.threshold or 'unnamed threshold'} ({ev.source})",
                thresholds=[ev.threshold] if ev.threshold else [],
            )
            # the evidence bundle shows the containment taken and the escalation it opened
            rec.bundle["escalation"] = s.escalation.model_dump(mode="json") if s.escalation else None
            rec.bundle["hold"] = s.hold.model_dump(mode="json") if s.hold else None
            rec.bundle["scope_after"] = self._scope_json()["decided"]
            event.payload["breach"] = rec.model_dump(mode="json", by_alias=True)

    def _scope_json(self) -> dict[str, Any]:
        s = self._state()
        return {
            "in_force": {"stage": None if s.exposure_stage is None else self.plan.stages[s.exposure_stage].name,
                         "percent": s.exposure_percent, "segments": s.exposure_segments,
                         "authority": s.exposure_authority, "frozen": s.exposure_frozen},
            "decided": {"stage": None if s.decided_stage is None else self.plan.stages[s.decided_stage].name,
                        "percent": s.decided_percent, "segments": s.decided_segments,
                        "authority": s.decided_authority},
        }

    def _evidence_bundle(self, rec: BreachRecord, containment: str | None) -> dict[str, Any]:
        s = self._state()
        thresholds = []
        if s.decided_stage is not None:
            thresholds = [t.model_dump(mode="json", by_alias=True) for t in self.plan.stages[s.decided_stage].thresholds]
        return {
            "plan_hash": s.plan_hash,
            "metric": {"query": rec.evidence.query, "value": rec.evidence.value,
                       "samples": [x.model_dump(mode="json") for x in rec.evidence.samples]},
            "thresholds": thresholds,
            "scope": self._scope_json(),
            "overrides": {
                "hold": s.hold.model_dump(mode="json") if s.hold else None,
                "pending_amendment": s.pending_amendment.plan_hash if s.pending_amendment else None,
                "frozen": s.exposure_frozen,
            },
            "escalation": s.escalation.model_dump(mode="json") if s.escalation else None,
            "containment": containment,
            "status_before": s.status,
        }

    # ------------------------------------------------------------------ timers

    def _next_deadline(self) -> float | None:
        s = self._state()
        now = self._now()
        due: list[datetime] = []
        if s.status == "soaking" and s.window_ends_at is not None:
            due.append(s.window_ends_at)
        if s.escalation is not None and s.escalation.next_page_at is not None:
            due.append(s.escalation.next_page_at)
        mh = self._max_hold_deadline()
        if mh is not None:
            due.append(mh)
        if s.remind_at is not None and s.status == "awaiting_approval":
            due.append(s.remind_at)
        if not due:
            return None
        return max(0.001, (min(due) - now).total_seconds())

    def _max_hold_deadline(self) -> datetime | None:
        s = self._state()
        if s.status == "held" and s.hold is not None and s.hold.kind in ("hold", "narrow", "target"):
            if self.plan.escalation.max_hold and s.decided_stage is not None:
                return s.hold.since + parse_duration(self.plan.escalation.max_hold)
        return None

    def _on_time(self) -> None:
        s = self._state()
        now = self._now()
        esc = s.escalation
        if esc is not None and esc.acknowledged_by is None and esc.next_page_at is not None and esc.next_page_at <= now:
            self._page(esc.level + 1, due=esc.next_page_at)
        mh = self._max_hold_deadline()
        if mh is not None and mh <= now:
            assert s.hold is not None
            self._contain("rollback", actor=SYSTEM, reason=f"max_hold {self.plan.escalation.max_hold} reached "
                          f"(held since {_iso(s.hold.since)}: {s.hold.reason})")
        if s.status == "awaiting_approval" and s.remind_at is not None and s.remind_at <= now:
            stage = self.plan.stages[s.stage_index]
            given = s.approvals.get(stage.name, {})
            missing = [r for r in stage.approvals.roles if r not in given]
            ids = sorted({i for r in missing for i in self.plan.approvers.get(r, [])})
            self._audit("approval_reminder", actor=SYSTEM, stage=stage.name, payload={"missing": missing, "recipients": ids})
            self._notify("approval_reminder", f"{self.plan.name}: {stage.name} awaits approval from {', '.join(missing)}",
                         recipients=ids)
            self._set_remind()

    # ------------------------------------------------------------------ target delivery

    async def _deliver(self) -> None:
        s = self._state()
        backoff = 5.0
        paged = False
        while s.pending_changes:
            ch = s.pending_changes[0]
            if s.target_pending is None or s.target_pending.seq != ch.seq:
                s.target_pending = TargetPending(seq=ch.seq, kind=ch.kind, stage=ch.stage, since=self._now())
            s.target_pending.attempts += 1
            try:
                result = await workflow.execute_activity(
                    "apply_exposure",
                    ch,
                    result_type=TargetResult,
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=1),
                        maximum_interval=timedelta(seconds=10),
                        maximum_attempts=4,
                        non_retryable_error_types=["TargetRejected", "TargetMisconfigured"],
                    ),
                )
            except ActivityError as exc:
                err = _cause(exc)
                s.target_pending.last_error = err
                if ch.kind == "promote":
                    self._promotion_failed(ch, err)
                    continue
                if not paged:
                    paged = True
                    self._audit("target_undeliverable", actor=SYSTEM, stage=ch.stage, reason=err,
                                payload={"seq": ch.seq, "kind": ch.kind})
                    self._notify("target_undeliverable", f"{self.plan.name}: {ch.kind} cannot be delivered: {err}")
                    if s.escalation is None or s.escalation.acknowledged_by is not None:
                        s.escalation = EscalationState(reason=f"{ch.kind} undeliverable: {err}", started_at=self._now())
                    self._page(0, due=self._now())
                await workflow.sleep(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            s.pending_changes.pop(0)
            s.target_pending = None
            self._applied(ch, result)

    def _applied(self, ch: TargetChange, result: TargetResult) -> None:
        s = self._state()
        now = self._now()
        s.exposure_stage = None if ch.stage is None else self.plan.stage_index(ch.stage)
        s.exposure_percent = ch.percent
        s.exposure_segments = ch.segments
        s.exposure_authority = dict(ch.authority)
        s.exposure_frozen = ch.frozen
        self._audit("scope_applied", actor=SYSTEM, stage=ch.stage,
                    payload={"seq": ch.seq, "kind": ch.kind, "detail": result.detail, "percent": ch.percent})
        if s.awaiting_window_seq == ch.seq:
            s.awaiting_window_seq = None
            if s.status == "soaking":
                stage = self.plan.stages[s.stage_index]
                s.window_started_at = now
                s.window_ends_at = now + parse_duration(stage.window)
                s.counters = {}
                self._audit("window_started", actor=SYSTEM, stage=stage.name,
                            payload={"window_ends_at": _iso(s.window_ends_at)})

    def _promotion_failed(self, ch: TargetChange, err: str) -> None:
        s = self._state()
        s.pending_changes.pop(0)
        s.target_pending = None
        # the target stays at its previous scope: the decision is undone, the rollout held
        s.decided_stage = s.exposure_stage
        s.decided_percent = s.exposure_percent
        s.decided_segments = s.exposure_segments
        s.decided_authority = dict(s.exposure_authority)
        idx = self.plan.stage_index(ch.stage or "")
        if idx is not None and idx in s.entered and s.exposure_stage != idx:
            s.entered.remove(idx)
        if s.awaiting_window_seq == ch.seq:
            s.awaiting_window_seq = None
        self._audit("promotion_undeliverable", actor=SYSTEM, stage=ch.stage, reason=err, payload={"seq": ch.seq})
        if s.status in CONTAINED:
            return
        s.status = "held"
        s.window_started_at = s.window_ends_at = None
        s.hold = HoldInfo(kind="target", reason=f"target refused the promotion to {ch.stage}: {err}", actor=SYSTEM,
                          since=self._now(), interrupted="awaiting_approval")
        self._notify("hold", f"{self.plan.name} held: the target refused the promotion to {ch.stage}: {err}")
        self._escalate(SYSTEM, s.hold.reason)

    # ------------------------------------------------------------------ monitor

    def _has_thresholds(self, idx: int | None) -> bool:
        return idx is not None and self.plan.metrics is not None and bool(self.plan.stages[idx].thresholds)

    def _sync_monitor(self) -> None:
        s = self._state()
        # a finished monitor: take its result
        if self._monitor is not None and self._monitor.done():
            handle, key = self._monitor, self._monitor_key
            self._monitor = self._monitor_key = None
            err = None if handle.cancelled() else handle.exception()
            if handle.cancelled():
                pass
            elif err is not None:
                self._audit("monitor_failed", actor=SYSTEM, reason=_cause(err), payload={})
            else:
                res = handle.result()
                if res.kind == "breach" and res.breach is not None:
                    s.counters = {}
                    self._breach(res.breach, requested=None)
                elif res.kind == "window_end" and key is not None and key[0] == "window":
                    self._window_result = res
                    s.counters = dict(res.counters)
                else:
                    self._monitor_finished = key
                self._progress()
        want = self._monitor_want()
        if want == self._monitor_key and self._monitor is not None:
            return
        if want is not None and want == self._monitor_finished:
            return
        self._stop_monitor()
        if want is None:
            return
        assert s.exposure_stage is not None and self.plan.metrics is not None
        stage = self.plan.stages[s.exposure_stage]
        interval = _secs(self.plan.metrics.interval)
        req = MonitorRequest(
            rollout_id=s.workflow_id,
            stage=stage.name,
            prometheus_url=self.plan.metrics.prometheus_url,
            interval_seconds=interval,
            thresholds=stage.thresholds,
            started_at=s.window_started_at if want[0] == "window" and s.window_started_at else self._now(),
            window_ends_at=s.window_ends_at if want[0] == "window" else None,
            counters=dict(s.counters),
        )
        span = (s.window_ends_at - self._now()).total_seconds() if want[0] == "window" and s.window_ends_at else 0
        self._monitor = workflow.start_activity(
            "monitor_thresholds",
            req,
            result_type=MonitorResult,
            start_to_close_timeout=timedelta(days=400),
            heartbeat_timeout=timedelta(seconds=max(3 * interval, 10.0)),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            summary=f"watch {stage.name} thresholds" + (f" for {int(span)}s window" if span else ""),
        )
        self._monitor_key = want
        self._monitor.add_done_callback(self._monitor_done)

    def _monitor_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here so a cancelled or failed watch is never "unhandled"
        self._poke()

    def _monitor_want(self) -> tuple[Any, ...] | None:
        s = self._state()
        if s.exposure_stage is None or s.status in CONTAINED or s.status in FINAL:
            return None
        if s.pending_changes or s.target_pending is not None:
            return None
        if not self._has_thresholds(s.exposure_stage):
            return None
        if (
            s.status == "soaking"
            and s.stage_index == s.exposure_stage
            and s.window_ends_at is not None
            and self._window_result is None
        ):
            return ("window", s.exposure_stage, _iso(s.window_started_at), s.plan_hash)
        if s.status == "soaking" and s.window_ends_at is not None:
            return None  # window result in hand; waiting for the window timer
        return ("watch", s.exposure_stage, _iso(s.exposure_since), s.plan_hash)

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            if not self._monitor.done():
                self._monitor.cancel()
            self._monitor = None
            self._monitor_key = None

    # ------------------------------------------------------------------ audit, notify, search attributes

    def _audit(
        self,
        action: str,
        *,
        actor: str | None = None,
        role: str | None = None,
        stage: str | None = None,
        reason: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> AuditEvent:
        s = self._state()
        s.audit_seq += 1
        if stage is None:
            stage = self.plan.stages[s.stage_index].name
        event = AuditEvent(
                rollout_id=s.workflow_id,
                seq=s.audit_seq,
                at=self._now(),
                actor=actor,
                role=role or self._role_of(actor),
                action=action,
                stage=stage,
                plan_hash=s.plan_hash,
                reason=reason,
                payload={**(payload or {}), "status": s.status},
        )
        s.audit_outbox.append(event)
        self._poke()
        return event

    def _role_of(self, actor: str | None) -> str | None:
        if actor is None:
            return None
        for key, ident in self.plan.owners.by_key().items():
            if ident == actor:
                return key
        for role, ids in self.plan.approvers.items():
            if actor in ids:
                return role
        return None

    async def _audit_loop(self) -> None:
        s = self._state()
        while True:
            await workflow.wait_condition(lambda: bool(s.audit_outbox) and not self._audit_paused)
            batch = list(s.audit_outbox[:200])
            self._audit_busy = True
            try:
                await workflow.execute_activity(
                    "record_audit",
                    AuditBatch(events=batch),
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)),
                )
            finally:
                self._audit_busy = False
            del s.audit_outbox[: len(batch)]

    def _notify(
        self,
        event: str,
        summary: str,
        *,
        page: bool = False,
        recipients: list[str] | None = None,
        ack_command: str | None = None,
    ) -> None:
        s = self._state()
        if not self.plan.notify:
            return
        n = Notification(
            rollout_id=s.workflow_id,
            plan_name=self.plan.name,
            seq=s.audit_seq,
            event=event,
            summary=summary,
            stage=self.plan.stages[s.stage_index].name,
            status=s.status,
            plan_hash=s.plan_hash,
            occurred_at=self._now(),
            page=page,
            recipients=recipients or [],
            ack_command=ack_command,
            details={"fallback": self.plan.fallback, "exposure": self._scope_json()["decided"]},
            notifiers=self.plan.notify,
        )
        task = asyncio.get_running_loop().create_task(self._send_notification(n))
        self._notify_tasks.add(task)
        task.add_done_callback(self._notify_tasks.discard)

    async def _send_notification(self, n: Notification) -> None:
        try:
            res = await workflow.execute_activity(
                "send_notifications",
                n,
                result_type=NotifyResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=1)),
            )
        except ActivityError as exc:
            self._audit("notification_failed", actor=SYSTEM, reason=_cause(exc), payload={"event": n.event})
            return
        if res.failed:
            self._audit("notification_failed", actor=SYSTEM, reason="some receivers failed",
                        payload={"event": n.event, "failed": res.failed})

    def _upsert_sa(self) -> None:
        s = self._state()
        cur = (self.plan.stages[s.stage_index].name, s.status)
        if cur != self._sa:
            workflow.upsert_search_attributes(
                [search_attrs.STAGE.value_set(cur[0]), search_attrs.STATUS.value_set(cur[1])]
            )
            self._sa = cur

    # ------------------------------------------------------------------ continue-as-new

    def _should_continue_as_new(self) -> bool:
        s = self._state()
        length = workflow.info().get_current_history_length()
        if length < self._can_after and not workflow.info().is_continue_as_new_suggested():
            return False
        if s.pending_changes or s.target_pending is not None:
            return False
        in_window = self._monitor_key is not None and self._monitor_key[0] == "window"
        return not (in_window and length < self._can_after * 4)

    async def _continue_as_new(self, inp: RolloutInput) -> None:
        s = self._state()
        self._stop_monitor()
        if workflow.patched("can-carries-audit-outbox"):
            # stop sending and carry unsent audit rows in the state: a signal storm keeps the
            # outbox busy, and must not keep this run growing past continue_as_new_after
            self._audit_paused = True
            await workflow.wait_condition(lambda: not self._audit_busy)
        else:
            await workflow.wait_condition(lambda: not s.audit_outbox and not self._audit_busy)
        if self._notify_tasks:
            await workflow.wait(list(self._notify_tasks))
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._audit_busy = True  # nothing more goes out from this run
        workflow.continue_as_new(
            RolloutInput(plan=s.plan, state=s, continue_as_new_after=inp.continue_as_new_after)
        )


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def _float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _cause(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    cur: BaseException = exc
    while cur.__cause__ is not None:
        cur = cur.__cause__
    return str(cur) or type(cur).__name__
