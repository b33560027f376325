"""The rollout state machine: every rule of a staged rollout, in one place.

    start(plan, ...)                 -> (state, commands)
    decide(state, event, now)        -> (state, commands)
    refusal(state, event, now)       -> reason | None       (what Update validators ask)
    next_deadline(state)             -> time | None         (the one timer the shell keeps)
    status(state, now)               -> dict                (the `status` query)

Pure: no temporalio, no I/O, no clock (time is an argument). The workflow feeds it
the messages, monitor reports, target answers and deadlines, and carries out the
commands it returns (deliver exposure changes in order, notify, append audit rows,
watch thresholds, close). `rollout simulate` drives the same functions.

Rules follow DESIGN.md "Rules the workflow enforces"; each rule is one method of
`_Run` named after it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from rollout import policy
from rollout import thresholds as th
from rollout.durations import parse_duration
from rollout.errors import PlanError
from rollout.machine_model import (
    MAX_FAILING_KEPT,
    MAX_OPEN_BREACHES,
    MAX_PAGES,
    MAX_REFUSED,
    MAX_SAMPLES,
    MAX_SERIES_KEPT,
    Abort,
    Acknowledge,
    Action,
    Amend,
    ApplyExposure,
    Approval,
    Approve,
    Audit,
    AuditAnchored,
    Breach,
    BreachReported,
    Close,
    Command,
    Containment,
    DeadlineReached,
    Escalation,
    Evaluation,
    Evaluations,
    Event,
    Exposure,
    HandoffAck,
    Hold,
    Malformed,
    Notify,
    NotifyFailed,
    PageRecord,
    PendingAmendment,
    Phase,
    Refusal,
    Refuse,
    Reject,
    Resolved,
    Resume,
    Rollback,
    State,
    Tally,
    TargetAcked,
    TargetFailed,
    TargetPending,
    Track,
    Watch,
    WatchSpec,
    WindowStat,
    clip,
    finite,
)
from rollout.models import AuditEvent, Notification, TargetChange
from rollout.plan import Plan, Threshold, validate_plan_data
from rollout.signatures import SignedClaim, signature_refusal

SYSTEM = "system"
FINAL = ("completed", "aborted")
CONTAINED = ("held", "rolled_back")
LEVEL = {"reject": 0, "target": 1, "hold": 1, "narrow": 2, "rollback": 3}  # containment strictness
MAX_PLAN_CHARS = 256_000
RETRY_UNDELIVERABLE = timedelta(seconds=60)
DEFAULT_GIVE_UP = timedelta(minutes=5)
MAX_FLUSH = 6 * 3600.0  # a passing monitor reports at least this often (each report: ~12 history events)


def _secs(d: str) -> float:
    return parse_duration(d).total_seconds()


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


# ---- entry points -----------------------------------------------------------------------


def start(
    plan: Plan,
    *,
    workflow_id: str,
    first_run_id: str,
    started_by: str | None,
    now: datetime,
    seq_base: int = 0,
) -> tuple[State, list[Command]]:
    """A new rollout, awaiting approval of its first stage; or a refusal to start.

    Only the rollout owner may start a rollout: any other `started_by` (or none) gives a
    `Close("refused", reason)` and exposes nothing.
    """
    s = State(
        plan=plan,
        plan_hash=plan.plan_hash(),
        workflow_id=workflow_id,
        first_run_id=first_run_id,
        started_by=started_by or "",
        started_at=now,
        decision_seq=seq_base,
        audit_seq=seq_base,
    )
    run = _Run(s, now)
    if started_by != plan.owners.rollout:
        reason = (
            f"only the rollout owner ({plan.owners.rollout}) may start this rollout; "
            f"started_by was {started_by!r}"
        )
        s.status = "aborted"
        s.final_reason = reason
        run.audit("start_refused", actor=started_by or None, reason=reason)
        run.cmds.append(Close(status="refused", reason=reason))
        return s, run.cmds
    run.audit(
        "started",
        actor=started_by,
        payload={"plan": plan.model_dump(mode="json", by_alias=True), "plan_name": plan.name,
                 "run_id": first_run_id, "started_by": started_by},
    )
    run.notify("started", f"rollout {plan.name} started by {started_by}; awaiting approval of {plan.stages[0].name}")
    run.begin_awaiting()
    return s, run.cmds


def rebase(state: State, base: int) -> State:
    """The state of a fresh start moved after `base`: where earlier runs of the same id
    left the decision and audit sequences (idempotency keys never repeat). Only for a
    state that `start` returned and nothing else has touched."""
    assert not state.changes, "rebase only a fresh start"
    return state.model_copy(update={"decision_seq": state.decision_seq + base, "audit_seq": state.audit_seq + base})


def decide(state: State, event: Event, now: datetime) -> tuple[State, list[Command]]:
    """Apply one event at time `now`: the new state and the commands to carry out.

    The state given is not changed. A refused message changes nothing but, for a
    signal, the record of refusals (and the audit trail); the commands then hold a
    `Refuse(reason)`.
    """
    new, [cmds] = decide_each(state, [(event, now)])
    return new, cmds


def decide_each(state: State, events: Sequence[tuple[Event, datetime]]) -> tuple[State, list[list[Command]]]:
    """Apply events in order, each at its own time: exactly what folding `decide` over them
    gives (the last state, and each event's commands), for one copy of the state instead
    of one per event. A workflow task that brings a flood of signals stays cheap: copying
    the state once per signal made such a task run past Temporal's deadlock limit (2 s),
    fail, and come back with even more signals."""
    s = _copy(state)
    out: list[list[Command]] = []
    for event, now in events:
        run = _Run(s, now)
        if isinstance(event, DeadlineReached) and event.at is not None:
            run.now = event.at  # judged when it was due; `late_by` still measures `now`
        run.handle(event)
        s = run.s
        out.append(run.cmds)
    return s, out


def _copy(state: State) -> State:
    """A deep copy that shares what the machine never changes in place: plans (an
    amendment replaces one), page records and refusals (only appended and trimmed).
    Copying them made up most of the cost of a decision."""
    keep: list[Any] = [state.plan, *state.refused]
    if state.pending_amendment is not None:
        keep.append(state.pending_amendment.plan)
    if state.escalation is not None:
        keep.extend(state.escalation.pages)
    return copy.deepcopy(state, {id(o): o for o in keep})


def refusal(state: State, event: Event, now: datetime) -> str | None:
    """Why a human message would be refused now, or None (what Update validators ask)."""
    return _Run(state, now).check(event)


def next_deadline(state: State) -> datetime | None:
    """The earliest time something is due: window end, page, reminder, max_hold, target."""
    due = [t for t in _deadlines(state).values() if t is not None]
    return min(due) if due else None


def awaited_stage(state: State) -> int | None:
    """The stage whose entry approvals are collected: status awaiting_approval, or a hold
    that interrupted it."""
    if state.status == "awaiting_approval":
        return state.stage_index
    if state.status == "held" and state.containment is not None and state.containment.interrupted == "awaiting_approval":
        return state.stage_index
    return None


def current_entry(state: State) -> int:
    """`approvals.entry`: the entry number of the approvals for the current stage."""
    return state.approvals_entry.get(state.plan.stages[state.stage_index].name, state.entry)


def search_attributes(state: State) -> tuple[str, str]:
    """(RolloutStage, RolloutStatus)."""
    return state.plan.stages[state.stage_index].name, state.status


def _deadlines(s: State) -> dict[str, datetime | None]:
    plan = s.plan
    out: dict[str, datetime | None] = {}
    if s.status in FINAL:
        tp = s.target_pending
        out["target"] = _give_up_at(s, tp) if tp is not None else None
        return out
    if s.status == "soaking" and s.window_ends_at is not None:
        out["window"] = _window_grace_end(s) if s.window_due else s.window_ends_at
    esc = s.escalation
    if esc is not None and esc.acknowledged_by is None and esc.next_page_at is not None:
        out["page"] = esc.next_page_at
    c = s.containment
    if (
        s.status == "held" and c is not None and c.kind in ("hold", "narrow", "target")
        and plan.escalation.max_hold and s.decided.stage is not None
    ):
        out["max_hold"] = c.since + parse_duration(plan.escalation.max_hold)
    if s.status == "awaiting_approval" and s.remind_at is not None:
        out["remind"] = s.remind_at
    tp = s.target_pending
    if tp is not None:
        out["target"] = tp.retry_at if tp.undeliverable else _give_up_at(s, tp)
    return out


def _give_up_at(s: State, tp: TargetPending) -> datetime:
    after = getattr(s.plan.target, "give_up_after", None)
    return tp.since + (parse_duration(after) if isinstance(after, str) else DEFAULT_GIVE_UP)


def _window_grace_end(s: State) -> datetime:
    assert s.window_ends_at is not None
    spec = s.watch
    if spec is None:
        return s.window_ends_at
    return s.window_ends_at + timedelta(seconds=2 * spec.interval_seconds + 60)


# ---- the rules --------------------------------------------------------------------------------


class _Run:
    """One decision: the state being changed, the time, the commands given."""

    def __init__(self, s: State, now: datetime) -> None:
        self.s = s
        self.now = now  # the time rules are judged at
        self.wall = now  # the time the event is handled (only for `late_by`)
        self.cmds: list[Command] = []

    @property
    def plan(self) -> Plan:
        return self.s.plan

    def stage_name(self, i: int | None) -> str | None:
        return None if i is None else self.plan.stages[i].name

    # ---- dispatch

    def handle(self, ev: Event) -> None:
        s = self.s
        if isinstance(ev, (Approve, Reject, Hold, Resume, Rollback, Acknowledge, Amend, Abort, Malformed)):
            reason = self.check(ev)
            if reason is not None:
                self.refuse(ev, reason)
                return
            getattr(self, f"on_{ev.kind}")(ev)
            self.after_human()
        elif isinstance(ev, BreachReported):
            self.on_breach_reported(ev)
        elif isinstance(ev, Resolved):
            self.on_resolved(ev)
        elif isinstance(ev, Evaluations):
            self.on_evaluations(ev)
        elif isinstance(ev, TargetAcked):
            self.on_target_acked(ev)
        elif isinstance(ev, TargetFailed):
            self.on_target_failed(ev)
        elif isinstance(ev, NotifyFailed):
            self.audit("notification_failed", payload={"event": ev.event, "failed": ev.failed})
        elif isinstance(ev, AuditAnchored):
            s.audit_head = ev.head
        elif isinstance(ev, DeadlineReached):
            self.on_deadline()
        self.sync_watch()

    def after_human(self) -> None:
        """Decisions that follow at once (entry on the last approval, leaving a stage)."""
        self.progress()

    # ---- refusals: one source for Update validators, handlers and signals

    def check(self, ev: Event) -> str | None:
        s = self.s
        plan = self.plan
        if isinstance(ev, Malformed):
            return f"malformed: {ev.problem or 'the payload does not validate'}"
        if not isinstance(ev, (Approve, Reject, Hold, Resume, Rollback, Acknowledge, Amend, Abort)):
            return None
        if s.status in FINAL:
            return f"the rollout is {s.status}; start a new run to act on it"
        if not ev.actor:
            return "actor is required (who is acting?)"
        if isinstance(ev, Approve):
            return self.check_approve(ev)
        if isinstance(ev, Reject):
            return self.check_reject(ev)
        if isinstance(ev, Hold):
            if r := policy.may_contain(plan, ev.actor):
                return r
            c = s.containment
            if s.status == "held" and c is not None and c.kind != "reject":
                return f"the rollout is already held ({c.reason}); resume it first"
            if s.status == "rolled_back" and s.decided.frozen:
                return "the rollout is rolled back and its scope already frozen"
            return None
        if isinstance(ev, Rollback):
            if r := policy.may_contain(plan, ev.actor):
                return r
            if s.decided.stage is None:
                return "nothing is exposed, so there is nothing to roll back (use hold)"
            return None
        if isinstance(ev, Resume):
            if r := policy.may_resume(plan, ev.actor):
                return r
            if s.status not in CONTAINED:
                return f"the rollout is not held or rolled back (status {s.status})"
            return None
        if isinstance(ev, Acknowledge):
            return self.check_acknowledge(ev)
        if isinstance(ev, Amend):
            if r := policy.may_own(plan, ev.actor, "amend the plan"):
                return r
            return self.amendment_problem(ev)[0]
        # Abort
        return policy.may_own(plan, ev.actor, "abort the rollout")

    def amendment_problem(self, ev: Amend) -> tuple[str | None, Plan | None]:
        if not ev.plan:
            return "amend needs the full new plan", None
        try:
            import json

            if len(json.dumps(ev.plan, default=str)) > MAX_PLAN_CHARS:
                return f"the amended plan is larger than {MAX_PLAN_CHARS} characters", None
            new = validate_plan_data(ev.plan)
        except PlanError as exc:
            return "the amended plan is invalid: " + "; ".join(exc.problems)[:1500], None
        except (TypeError, ValueError) as exc:
            return f"the amended plan is invalid: {clip(str(exc), 500)}", None
        return policy.amendment_refusal(self.plan, new, sorted(set(self.s.entered))), new

    def amendment_roles_stage(self) -> int:
        """Whose roles approve an amendment: the awaited stage, else the current stage,
        else (a stage naming no roles) the system_of_record stage."""
        s = self.s
        idx = awaited_stage(s)
        if idx is not None and self.plan.stages[idx].approvals.roles:
            return idx
        if self.plan.stages[s.stage_index].approvals.roles:
            return s.stage_index
        return len(self.plan.stages) - 1

    def check_approve(self, ev: Approve) -> str | None:
        s = self.s
        plan = self.plan
        if ev.amendment:
            pa = s.pending_amendment
            if pa is None:
                return "there is no pending amendment to approve"
            if ev.amendment != pa.plan_hash:
                return f"the pending amendment is {pa.plan_hash}, not {ev.amendment}"
            if not ev.role:
                return "an approval needs a role"
            idx = self.amendment_roles_stage()
            given = {r: a.actor for r, a in pa.approvals.items()}
            if r := policy.approval_refusal(plan, stage_index=idx, role=ev.role, actor=ev.actor, given=given):
                return r
            return self.signature_problem("amend", ev, plan.stages[idx].name, ev.role, pa.plan_hash)
        awaited = awaited_stage(s)
        if not ev.stage:
            if awaited is None:
                return f"no stage is awaiting approval (status {s.status})"
            ev.stage = plan.stages[awaited].name
        sidx = plan.stage_index(ev.stage)
        if sidx is None:
            return f"unknown stage '{ev.stage}' (stages: {', '.join(x.name for x in plan.stages)})"
        if awaited is None or awaited != sidx:
            waiting = f"awaiting: {plan.stages[awaited].name}" if awaited is not None else f"status {s.status}"
            return f"stage '{ev.stage}' is not awaiting approval ({waiting})"
        if not ev.role:
            return "an approval needs a role"
        given = {r: a.actor for r, a in s.approvals.get(ev.stage, {}).items()}
        if r := policy.approval_refusal(plan, stage_index=sidx, role=ev.role, actor=ev.actor, given=given):
            return r
        return self.signature_problem("approve", ev, ev.stage, ev.role, "")

    def signature_problem(
        self, kind: str, ev: Approve | Acknowledge, stage: str, role: str, subject: str
    ) -> str | None:
        s = self.s
        if not self.plan.require_signed_approvals:
            return None
        if ev.signed_at is None:
            if ev.signature:
                return (
                    "the signature is in the old v1 format (no signed_at); sign again with a current "
                    "`rollout` (rollout approve ... --key FILE)"
                )
            return "this plan requires signed approvals: pass a signature (rollout approve ... --key FILE)"
        claim = SignedClaim(
            kind=kind,
            workflow_id=s.workflow_id,
            first_run_id=s.first_run_id,
            stage=stage,
            entry=current_entry(s),
            role=role,
            subject=subject,
            plan_hash=s.plan_hash,
            actor=ev.actor,
            signed_at=ev.signed_at,
        )
        return signature_refusal(self.plan, claim, ev.signature, self.now)

    def check_reject(self, ev: Reject) -> str | None:
        s = self.s
        plan = self.plan
        idx = awaited_stage(s)
        if idx is None:
            return f"no stage is awaiting approval (status {s.status})"
        if ev.stage and ev.stage != plan.stages[idx].name:
            if plan.stage_index(ev.stage) is None:
                return f"unknown stage '{ev.stage}' (stages: {', '.join(x.name for x in plan.stages)})"
            return f"stage '{ev.stage}' is not awaiting approval (awaiting: {plan.stages[idx].name})"
        if not ev.reason:
            return "a rejection needs a reason"
        stage = plan.stages[idx]
        roles = [ev.role] if ev.role else [r for r in stage.approvals.roles if ev.actor in plan.approvers.get(r, [])]
        if not roles:
            return (
                f"{ev.actor} is not listed for any role stage '{stage.name}' awaits "
                f"({', '.join(stage.approvals.roles) or 'none'})"
            )
        if roles[0] not in stage.approvals.roles:
            return f"stage '{stage.name}' does not await role '{roles[0]}' (awaits: {', '.join(stage.approvals.roles) or 'none'})"
        if ev.actor not in plan.approvers.get(roles[0], []):
            return f"{ev.actor} is not listed for role '{roles[0]}'"
        return None

    def check_acknowledge(self, ev: Acknowledge) -> str | None:
        s = self.s
        plan = self.plan
        if ev.escalation:
            if r := policy.may_resume(plan, ev.actor):
                return r
            if s.escalation is None or s.escalation.acknowledged_by is not None:
                return "there is no open escalation to acknowledge"
            return None
        if not ev.item:
            return "acknowledge needs an `item` (handoff) or `escalation: true`"
        found = self.handoff_stage(ev)
        if isinstance(found, str):
            return found
        stage = plan.stages[found]
        if ev.item in s.handoff_acks.get(stage.name, {}):
            return f"handoff item '{ev.item}' was already acknowledged by {s.handoff_acks[stage.name][ev.item].actor}"
        if r := policy.handoff_refusal(plan, stage_index=found, item=ev.item, actor=ev.actor):
            return r
        to = next(h.to for h in stage.handoff if h.item == ev.item)
        return self.signature_problem("ack", ev, stage.name, to, ev.item)

    def handoff_stage(self, ev: Acknowledge) -> int | str:
        """The entered stage a handoff item belongs to (stages rolled back from do not count
        until entered again)."""
        plan = self.plan
        live = sorted(set(self.s.entered))
        if ev.stage:
            idx = plan.stage_index(ev.stage)
            if idx is None:
                return f"unknown stage '{ev.stage}'"
            if idx not in live:
                return f"stage '{ev.stage}' has not been entered yet"
            return idx
        found = policy.find_handoff_stage(plan, ev.item or "", live)
        if found is None:
            if any(h.item == ev.item for st in plan.stages for h in st.handoff):
                return f"the stage with handoff item '{ev.item}' has not been entered yet"
            items = [h.item for i in live for h in plan.stages[i].handoff]
            return f"no entered stage has handoff item '{ev.item}' (items: {'; '.join(items) or 'none'})"
        return found

    def refuse(self, ev: Event, reason: str) -> None:
        s = self.s
        self.cmds.append(Refuse(reason=reason))
        via = getattr(ev, "via", "update")
        if via != "signal":
            return  # a refused Update leaves no history: the caller sees the reason
        action = ev.action if isinstance(ev, Malformed) else ev.kind
        actor = getattr(ev, "actor", None) or None
        s.refused.append(Refusal(at=self.now, action=action, actor=actor, reason=reason, via=via))
        del s.refused[:-MAX_REFUSED]
        request = ev.model_dump(mode="json", exclude={"plan"})
        self.audit("refused", actor=actor, reason=reason, payload={"action": action, "request": request, "via": via})

    # ---- approvals and entry

    def on_approve(self, ev: Approve) -> None:
        s = self.s
        rec = Approval(role=ev.role or "", actor=ev.actor, at=self.now, comment=ev.comment, signed=bool(ev.signature))
        if ev.amendment:
            pa = s.pending_amendment
            assert pa is not None
            pa.approvals[rec.role] = rec
            self.audit("amendment_approved", actor=ev.actor, role=rec.role, reason=ev.comment,
                       payload={"amendment": pa.plan_hash, "signed": rec.signed, "via": ev.via})
            self.maybe_apply_amendment()
            return
        assert ev.stage is not None
        s.approvals.setdefault(ev.stage, {})[rec.role] = rec
        self.audit("approved", actor=ev.actor, role=rec.role, stage=ev.stage, reason=ev.comment,
                   payload={"entry": s.approvals_entry.get(ev.stage, s.entry), "signed": rec.signed, "via": ev.via})

    def missing_roles(self, idx: int) -> list[str]:
        stage = self.plan.stages[idx]
        given = self.s.approvals.get(stage.name, {})
        return [r for r in stage.approvals.roles if r not in given]

    def begin_awaiting(self) -> None:
        """Start awaiting approval of the current stage: a new entry unless approvals
        kept from an interrupted one are still there."""
        s = self.s
        stage = self.plan.stages[s.stage_index]
        s.status = "awaiting_approval"
        s.awaiting_since = self.now
        if not s.approvals.get(stage.name):
            s.entry += 1
            s.approvals_entry[stage.name] = s.entry
        ra = stage.approvals.remind_after
        s.remind_at = self.now + parse_duration(ra) if ra else None
        self.audit("awaiting_approval", stage=stage.name,
                   payload={"roles": stage.approvals.roles, "entry": s.approvals_entry.get(stage.name, s.entry)})

    def void_approvals(self, names: Sequence[str]) -> list[str]:
        s = self.s
        voided = [n for n in names if s.approvals.pop(n, None)]
        for n in names:
            s.approvals_entry.pop(n, None)
        return voided

    def progress(self) -> None:
        """What follows by itself: entry when the last approval is in, leaving a stage when
        its window is clean and its handoff items acknowledged."""
        s = self.s
        for _ in range(len(self.plan.stages) + 1):
            if s.status == "awaiting_approval" and not self.missing_roles(s.stage_index):
                self.enter(s.stage_index)
            elif s.status == "awaiting_handoff" and not self.open_handoff(s.stage_index):
                self.leave_stage()
            else:
                return

    def enter(self, idx: int) -> None:
        s = self.s
        stage = self.plan.stages[idx]
        s.stage_index = idx
        if idx not in s.entered:
            s.entered.append(idx)
        s.status = "soaking"
        s.remind_at = None
        s.awaiting_since = None
        s.clean = False
        s.window_started_at = s.window_ends_at = None
        s.window_due = False
        given = s.approvals.get(stage.name, {})
        self.audit("stage_entered", stage=stage.name,
                   payload={"approvals": {r: a.actor for r, a in given.items()},
                            "entry": s.approvals_entry.get(stage.name, s.entry),
                            "scope": stage.scope.model_dump(mode="json"),
                            "authority": self.plan.effective_authority(idx)})
        self.notify("stage_entered", f"{self.plan.name} entered {stage.name} ({stage.scope.percent}%)")
        seq = self.change("promote", self.stage_scope(idx), f"entered {stage.name}")
        s.window_after_seq = seq

    def stage_scope(self, idx: int) -> Exposure:
        st = self.plan.stages[idx]
        return Exposure(stage=idx, percent=st.scope.percent, segments=st.scope.segments,
                        authority=self.plan.effective_authority(idx))

    def open_handoff(self, idx: int) -> list[str]:
        stage = self.plan.stages[idx]
        acks = self.s.handoff_acks.get(stage.name, {})
        return [h.item for h in stage.handoff if h.item not in acks]

    def leave_stage(self) -> None:
        s = self.s
        stage = self.plan.stages[s.stage_index]
        if stage.handoff:
            self.audit("handoff_complete", stage=stage.name,
                       payload={"acks": {i: a.actor for i, a in s.handoff_acks.get(stage.name, {}).items()}})
        if s.stage_index + 1 >= len(self.plan.stages):
            s.status = "completed"
            s.final_reason = "all stages completed"
            self.close_escalation()
            self.audit("completed", stage=stage.name)
            self.notify("completed", f"{self.plan.name} completed: {stage.name} is the system of record")
            self.cmds.append(Close(status="completed", reason=s.final_reason))
            return
        s.stage_index += 1
        self.begin_awaiting()

    # ---- reject

    def on_reject(self, ev: Reject) -> None:
        s = self.s
        idx = awaited_stage(s)
        assert idx is not None
        stage = self.plan.stages[idx]
        role = ev.role or next(r for r in stage.approvals.roles if ev.actor in self.plan.approvers.get(r, []))
        voided = self.void_approvals([stage.name])
        s.entry += 1
        s.approvals_entry[stage.name] = s.entry
        s.remind_at = None
        if s.containment is None:
            s.status = "held"
            s.containment = Containment(kind="reject", reason=f"rejected by {ev.actor} ({role}): {ev.reason}",
                                        actor=ev.actor, at=self.now, since=self.now, interrupted="awaiting_approval")
        self.audit("rejected", actor=ev.actor, role=role, stage=stage.name, reason=ev.reason,
                   payload={"voided": voided, "entry": s.entry, "via": ev.via})
        self.notify("rejected", f"{self.plan.name}: {stage.name} rejected by {ev.actor} ({role}): {ev.reason}")

    # ---- containment

    def phase(self) -> Phase:
        s = self.s
        if s.status in ("awaiting_approval", "soaking", "awaiting_handoff"):
            return s.status
        return s.containment.interrupted if s.containment is not None else "awaiting_approval"

    def on_hold(self, ev: Hold) -> None:
        self.contain("hold", actor=ev.actor, reason=ev.reason or f"held by {ev.actor}")

    def on_rollback(self, ev: Rollback) -> None:
        self.contain("rollback", actor=ev.actor, reason=ev.reason or f"rolled back by {ev.actor}")

    def supersede_promotions(self) -> None:
        """A containment supersedes promotions not yet delivered: the target never sees them."""
        s = self.s
        dropped = [c for c in s.changes if c.kind in ("promote", "resume")]
        if not dropped:
            return
        s.changes = [c for c in s.changes if c.kind not in ("promote", "resume")]
        s.decided = self.exposure_of(s.changes[-1]) if s.changes else s.exposure.model_copy()
        for c in dropped:
            idx = self.plan.stage_index(c.stage) if c.stage else None
            if c.kind == "promote" and idx is not None and idx != s.exposure.stage:
                s.entered = [i for i in s.entered if i != idx]
        if s.target_pending is not None and s.target_pending.seq in {c.seq for c in dropped}:
            nxt = s.changes[0] if s.changes else None
            s.target_pending = (TargetPending(seq=nxt.seq, kind=nxt.kind, stage=nxt.stage, since=self.now)
                                if nxt is not None else None)
        s.window_after_seq = None
        if s.decided.stage is not None:
            s.stage_index = s.decided.stage
        self.audit("promotion_superseded", payload={"seqs": [c.seq for c in dropped]})

    def exposure_of(self, ch: TargetChange) -> Exposure:
        return Exposure(stage=self.plan.stage_index(ch.stage) if ch.stage else None, percent=ch.percent,
                        segments=ch.segments, authority=dict(ch.authority), narrowed=ch.kind == "narrow",
                        frozen=ch.frozen)

    def contain(
        self, action: str, *, actor: str, reason: str, thresholds: Sequence[str] = (), breach: Breach | None = None
    ) -> bool:
        """Apply a containment; False when it changes nothing (recorded only)."""
        s = self.s
        plan = self.plan
        self.supersede_promotions()
        interrupted = self.phase()
        exposed = s.decided.stage
        prior = s.containment
        if exposed is None and action != "hold":
            action = "hold"
        if s.status == "rolled_back" and action == "hold":
            # freeze the rolled-back scope; status and scope stay: no new escalation
            self.change("hold", s.decided.model_copy(update={"frozen": True}), reason, frozen=True)
            self.audit(f"contained_{action}", actor=actor, reason=reason, stage=self.stage_name(s.stage_index),
                       payload={"interrupted": interrupted, "thresholds": list(thresholds), "scope": self.scope_json(),
                                "note": "frozen while rolled back"})
            self.notify("hold", f"{plan.name} hold while rolled back: {reason} (by {actor})")
            return True
        since = prior.since if prior is not None and prior.kind != "reject" else self.now
        if action == "hold":
            s.status = "held"
            if exposed is not None:
                self.change("hold", s.decided.model_copy(update={"frozen": True}), reason, frozen=True)
        elif action == "narrow":
            assert exposed is not None
            s.status = "held"
            base = self.stage_scope(exposed - 1) if exposed > 0 else self.stage_scope(exposed)
            narrowed = Exposure(stage=exposed, percent=base.percent, segments=base.segments,
                                authority=policy.narrowed_authority(self.stage_scope(exposed).authority),
                                narrowed=True, frozen=True)
            self.change("narrow", narrowed, reason, frozen=True)
        else:
            assert exposed is not None
            self.stop_window()  # summarised under the stage it soaked, with that stage's thresholds
            scope = self.stage_scope(exposed - 1) if exposed > 0 else Exposure()
            names = [st.name for st in plan.stages[exposed:]]
            voided = self.void_approvals(names)
            for n in names:
                s.handoff_acks.pop(n, None)
            s.entered = [i for i in s.entered if i < exposed]
            s.stage_index = max(exposed - 1, 0)
            s.status = "rolled_back"
            interrupted = "soaking"
            self.change("rollback", scope, reason)
            self.audit("approvals_voided", payload={"stages": voided, "from": plan.stages[exposed].name})
        self.stop_window()
        s.remind_at = None
        s.containment = Containment(kind=action, reason=reason, actor=actor, at=self.now,
                                    since=since, interrupted=interrupted, thresholds=list(thresholds))
        self.audit(f"contained_{action}", actor=actor, reason=reason, stage=self.stage_name(s.stage_index),
                   payload={"interrupted": interrupted, "thresholds": list(thresholds), "scope": self.scope_json(),
                            "breach": breach.id if breach else None})
        self.notify(action, f"{plan.name} {action}: {reason} (by {actor})")
        self.escalate(actor, reason)
        return True

    def stop_window(self) -> None:
        s = self.s
        if s.window_started_at is not None:
            self.window_summary("interrupted")
        s.window_started_at = s.window_ends_at = None
        s.window_due = False
        s.window_after_seq = None
        s.clean = False

    def on_resume(self, ev: Resume) -> None:
        s = self.s
        prior = s.containment
        s.containment = None
        for b in s.breaches:
            b.resolved_at = b.resolved_at or self.now
        closed = [b.model_dump(mode="json") for b in s.breaches]
        s.breaches = []
        s.last_resume_at = self.now
        self.reset_tracks()
        esc = s.escalation
        if esc is not None and esc.acknowledged_by is None:
            esc.acknowledged_by = ev.actor
            esc.acknowledged_at = self.now
            esc.next_page_at = None
        reason = ev.reason or f"resumed by {ev.actor}"
        if prior is not None and prior.kind == "reject":
            self.begin_awaiting()
        elif s.decided.stage is None:
            self.begin_awaiting()
        else:
            idx = s.decided.stage
            s.stage_index = idx
            s.status = "soaking"
            s.clean = False
            s.exposure_since = self.now
            s.window_started_at = s.window_ends_at = None
            s.window_due = False
            if idx not in s.entered:
                s.entered.append(idx)
            s.window_after_seq = self.change("resume", self.stage_scope(idx), reason)
        self.audit("resumed", actor=ev.actor, reason=reason, stage=self.stage_name(s.stage_index),
                   payload={"was": prior.model_dump(mode="json") if prior else None, "breaches": closed,
                            "escalation_id": esc.id if esc else None, "via": ev.via})
        self.notify("resumed", f"{self.plan.name} resumed by {ev.actor}: {reason}; now {s.status}",
                    details={"escalation_id": self.escalation_key(esc) if esc else None})

    def on_abort(self, ev: Abort) -> None:
        s = self.s
        reason = ev.reason or f"aborted by {ev.actor}"
        s.changes = [c for c in s.changes if c.kind not in ("promote", "resume")]
        self.change("abort", Exposure(), reason)
        s.status = "aborted"
        s.final_reason = reason
        s.remind_at = None
        self.stop_window()
        self.close_escalation()
        self.audit("aborted", actor=ev.actor, reason=reason, payload={"via": ev.via})
        self.notify("aborted", f"{self.plan.name} aborted by {ev.actor}: {reason}")
        self.cmds.append(Close(status="aborted", reason=reason))

    def close_escalation(self) -> None:
        esc = self.s.escalation
        if esc is not None:
            esc.next_page_at = None
            if esc.acknowledged_by is None:
                esc.acknowledged_by = SYSTEM
                esc.acknowledged_at = self.now

    # ---- escalation

    def escalation_key(self, esc: Escalation) -> str:
        return f"{self.s.workflow_id}:esc:{esc.id}"

    def escalate(self, actor: str, reason: str) -> None:
        """Every containment that changes scope or status opens a new escalation from
        chain[0]; one by an actor who may acknowledge is acknowledged by them."""
        s = self.s
        if s.escalation is not None and s.escalation.acknowledged_by is None:
            self.audit("escalation_replaced", payload={"escalation": s.escalation.model_dump(mode="json")})
        s.escalation_count += 1
        s.escalation = Escalation(id=s.escalation_count, reason=reason, started_at=self.now)
        if policy.may_resume(self.plan, actor) is None:
            s.escalation.acknowledged_by = actor
            s.escalation.acknowledged_at = self.now
            self.audit("escalation_acknowledged", actor=actor,
                       payload={"level": 0, "auto": True, "escalation_id": s.escalation.id})
            return
        self.page(0, due=self.now)

    def page(self, level: int, due: datetime) -> None:
        s = self.s
        esc = s.escalation
        assert esc is not None
        roles, ids = policy.escalation_targets(self.plan, level)
        late = max(0.0, (self.wall - due).total_seconds())
        esc.level = level
        esc.pages.append(PageRecord(level=level, roles=roles, recipients=ids, at=self.now, due_at=due,
                                    late_by_seconds=late))
        del esc.pages[:-MAX_PAGES]
        ack_within = parse_duration(self.plan.escalation.ack_within)
        nxt = due + ack_within
        esc.next_page_at = nxt if nxt > self.now else self.now + ack_within
        ack = f"rollout ack {s.workflow_id} --escalation --as <you>"
        self.audit("escalation_page", payload={"level": level, "roles": roles, "recipients": ids, "due_at": _iso(due),
                                               "late_by": late, "reason": esc.reason, "escalation_id": esc.id})
        self.notify("escalation_page",
                    f"PAGE {', '.join(ids)} ({', '.join(roles)}): {self.plan.name} {s.status}: {esc.reason}. "
                    f"Acknowledge: {ack}",
                    page=True, recipients=ids, ack_command=ack,
                    details={"escalation_id": self.escalation_key(esc), "level": level, "late_by": late})

    def on_acknowledge(self, ev: Acknowledge) -> None:
        s = self.s
        if ev.escalation:
            esc = s.escalation
            assert esc is not None
            esc.acknowledged_by = ev.actor
            esc.acknowledged_at = self.now
            esc.next_page_at = None
            self.audit("escalation_acknowledged", actor=ev.actor, reason=ev.comment,
                       payload={"level": esc.level, "escalation_id": esc.id, "via": ev.via})
            self.notify("escalation_acknowledged", f"{self.plan.name}: escalation acknowledged by {ev.actor}",
                        details={"escalation_id": self.escalation_key(esc)})
            return
        idx = self.handoff_stage(ev)
        assert isinstance(idx, int)
        stage = self.plan.stages[idx]
        item = ev.item or ""
        s.handoff_acks.setdefault(stage.name, {})[item] = HandoffAck(item=item, actor=ev.actor, at=self.now,
                                                                     comment=ev.comment)
        self.audit("handoff_acknowledged", actor=ev.actor, stage=stage.name, reason=ev.comment,
                   payload={"item": item, "signed": bool(ev.signature), "via": ev.via})

    # ---- amendments

    def on_amend(self, ev: Amend) -> None:
        s = self.s
        _, new = self.amendment_problem(ev)
        assert new is not None
        replaced = s.pending_amendment.plan_hash if s.pending_amendment else None
        s.pending_amendment = PendingAmendment(plan=new, plan_hash=new.plan_hash(), proposed_by=ev.actor,
                                               proposed_at=self.now, reason=ev.reason)
        idx = self.amendment_roles_stage()
        self.audit("amendment_proposed", actor=ev.actor, reason=ev.reason,
                   payload={"plan_hash": s.pending_amendment.plan_hash, "replaces": replaced,
                            "roles": self.plan.stages[idx].approvals.roles,
                            "plan": new.model_dump(mode="json", by_alias=True), "via": ev.via})
        self.notify("amended", f"{self.plan.name}: amendment {s.pending_amendment.plan_hash[:12]} proposed by {ev.actor}")
        self.maybe_apply_amendment()

    def maybe_apply_amendment(self) -> None:
        s = self.s
        pa = s.pending_amendment
        if pa is None:
            return
        idx = self.amendment_roles_stage()
        roles = self.plan.stages[idx].approvals.roles
        if any(r not in pa.approvals for r in roles):
            return
        old = self.plan
        s.pending_amendment = None
        s.plan = pa.plan
        s.plan_hash = pa.plan_hash
        awaited = awaited_stage(s)
        voided: list[str] = []
        if awaited is not None:
            voided = self.void_approvals([old.stages[awaited].name])
            s.entry += 1
            s.approvals_entry[s.plan.stages[awaited].name] = s.entry
        restarted = False
        cur = s.stage_index
        changed_rules = (
            old.stages[cur].window != s.plan.stages[cur].window
            or old.stages[cur].thresholds != s.plan.stages[cur].thresholds
            or old.metrics != s.plan.metrics
        )
        if s.status == "soaking" and s.window_started_at is not None and changed_rules:
            self.window_summary("restarted by amendment")
            self.start_window()
            restarted = True
        elif s.status == "soaking" and s.window_started_at is not None:
            s.window_ends_at = s.window_started_at + parse_duration(s.plan.stages[cur].window)
        self.audit("amendment_applied", actor=SYSTEM,
                   payload={"plan_hash": pa.plan_hash, "previous": old.plan_hash(), "voided": voided,
                            "window_restarted": restarted,
                            "approvals": {r: a.actor for r, a in pa.approvals.items()}})
        self.notify("amended", f"{s.plan.name}: amendment {pa.plan_hash[:12]} applied")

    # ---- breaches

    def breach_base_time(self) -> datetime | None:
        s = self.s
        times = [t for t in (s.exposure_since, s.last_resume_at) if t is not None]
        return max(times) if times else None

    def on_breach_reported(self, ev: BreachReported) -> None:
        s = self.s
        exposed = s.decided.stage
        observed = ev.observed_at or self.now
        stage_name = self.stage_name(exposed)
        threshold = next((t for t in self.plan.stages[exposed].thresholds if t.name == ev.threshold), None) \
            if exposed is not None else None
        action: Action = threshold.action if threshold is not None else "hold"
        if ev.action in th.ACTION_ORDER and policy.is_stricter(ev.action, action):
            action = ev.action
        evidence = {"source": ev.source, "threshold": ev.threshold, "value": finite(ev.value),
                    "observed_at": _iso(observed), "requested_action": ev.action, "alert_stage": ev.stage,
                    "detail": ev.detail,
                    "query": threshold.query if threshold else None,
                    "max": threshold.max if threshold else None, "min": threshold.min if threshold else None}
        note = None
        base = self.breach_base_time()
        if s.status in FINAL:
            note = f"the rollout is {s.status}: recorded only"
        elif exposed is None:
            note = "nothing exposed: recorded only"
        elif ev.stage and ev.stage != stage_name:
            note = f"the alert is for stage '{ev.stage}', not the exposed stage '{stage_name}': recorded only"
        elif base is not None and observed < base:
            note = "observed before the current stage entry or last resume: recorded only"
        self.breach_decision(
            [(ev.threshold, action, finite(ev.value), evidence)], source=ev.source, observed=observed, note=note
        )

    def breach_decision(
        self,
        found: list[tuple[str | None, Action, float | None, dict[str, Any]]],
        *,
        source: str,
        observed: datetime,
        note: str | None = None,
    ) -> None:
        """Breaches decided together are one decision: the strictest action wins, every
        breaching threshold is in its evidence. While contained, it applies only if
        stricter than the containment in force (a rollback while rolled_back goes one
        stage further back); repeats for a threshold already contained are counted."""
        s = self.s
        exposed = s.decided.stage
        stage_name = self.stage_name(exposed)
        fresh = []
        for name, action, value, evidence in found:
            open_b = next((b for b in s.breaches if name is not None and b.threshold == name), None)
            if note is None and open_b is not None and s.status in CONTAINED:
                open_b.repeats += 1
                open_b.last_seen_at = self.now
                continue
            fresh.append((name, action, value, evidence))
        if not fresh:
            return
        strictest: Action = "hold"
        for _, a, _, _ in fresh:
            strictest = th.stricter(strictest, a)
        action = strictest
        c = s.containment
        if note is None and s.status in CONTAINED and c is not None:
            if s.status == "rolled_back" and action == "rollback" and exposed is None:
                note = "rolled back to nothing exposed: recorded only"
            elif s.status == "rolled_back" and action == "rollback":
                pass
            elif LEVEL[action] <= LEVEL[c.kind]:
                note = f"already {s.status} ({c.kind}): recorded, not stricter"
        applied = note is None
        s.breach_count += 1
        names = [n for n, _, _, _ in fresh]
        rec = Breach(id=s.breach_count, at=self.now, source=source, stage=stage_name,
                     threshold=names[0] if len(names) == 1 else ",".join(n or "?" for n in names),
                     value=fresh[0][2], observed_at=observed, action=action, applied=applied, note=note or "",
                     evidence={**fresh[0][3], "breaches": [e for _, _, _, e in fresh]})
        rec.bundle = self.evidence_bundle(action if applied else None)
        if applied or (exposed is not None and s.status not in FINAL):
            s.breaches.append(rec)
            del s.breaches[:-MAX_OPEN_BREACHES]
        for n in names:
            key = f"{stage_name}/{n}"
            if n is not None and key in s.tallies and source == "prometheus":
                s.tallies[key].breaches += 1
        if applied:
            self.contain(action, actor=source, reason=f"breach of {', '.join(n or 'unnamed threshold' for n in names)} ({source})",
                         thresholds=[n for n in names if n], breach=rec)
            rec.bundle["escalation"] = s.escalation.model_dump(mode="json") if s.escalation else None
            rec.bundle["hold"] = s.containment.model_dump(mode="json") if s.containment else None
            rec.bundle["scope_after"] = self.scope_json()["decided"]
        self.audit("breach", actor=source, stage=stage_name, reason=note or f"threshold {rec.threshold} breached",
                   payload={"breach": rec.model_dump(mode="json")})
        self.notify("breach", f"{self.plan.name}: breach of {rec.threshold or 'unnamed threshold'} from {source}"
                    + (f" -> {action}" if applied else f" ({note})"))

    def on_resolved(self, ev: Resolved) -> None:
        s = self.s
        b = next((b for b in reversed(s.breaches) if b.threshold == ev.threshold), None)
        at = ev.observed_at or self.now
        if b is not None:
            b.resolved_at = at
            b.evidence.setdefault("resolved", []).append({"source": ev.source, "observed_at": _iso(at),
                                                          "detail": ev.detail})
            del b.evidence["resolved"][:-5]
        self.audit("breach_resolved", actor=ev.source, stage=self.stage_name(s.decided.stage),
                   payload={"threshold": ev.threshold, "observed_at": _iso(at), "detail": ev.detail,
                            "breach": b.id if b else None})

    def evidence_bundle(self, containment: str | None) -> dict[str, Any]:
        s = self.s
        idx = s.decided.stage
        return {
            "plan_hash": s.plan_hash,
            "thresholds": [t.model_dump(mode="json", by_alias=True) for t in self.plan.stages[idx].thresholds]
            if idx is not None else [],
            "scope": self.scope_json(),
            "overrides": {"containment": s.containment.model_dump(mode="json") if s.containment else None,
                          "pending_amendment": s.pending_amendment.plan_hash if s.pending_amendment else None},
            "escalation": s.escalation.model_dump(mode="json") if s.escalation else None,
            "containment": containment,
            "status_before": s.status,
        }

    def scope_json(self) -> dict[str, Any]:
        s = self.s
        return {"in_force": self.exposure_json(s.exposure), "decided": self.exposure_json(s.decided)}

    def exposure_json(self, e: Exposure) -> dict[str, Any]:
        return {"stage": self.stage_name(e.stage), "percent": e.percent, "segments": e.segments,
                "authority": e.authority, "narrowed": e.narrowed, "frozen": e.frozen}

    # ---- evaluations and windows

    def reset_tracks(self) -> None:
        self.s.tracks = {}

    def on_evaluations(self, ev: Evaluations) -> None:
        s = self.s
        spec = s.watch
        if spec is None or ev.stage != spec.stage or ev.anchor != spec.anchor:
            return  # a report from a monitor of another scope: nothing it says applies now
        through = s.evaluated_through
        by_at: dict[datetime, list[Evaluation]] = {}
        for r in ev.results:
            if through is not None and r.at <= through:
                continue  # already counted (a retried report)
            by_at.setdefault(r.at, []).append(r)
        thresholds = {t.name: t for t in spec.thresholds}
        for at in sorted(by_at):
            found: list[tuple[str | None, Action, float | None, dict[str, Any]]] = []
            for r in by_at[at]:
                t = thresholds.get(r.threshold)
                if t is not None:
                    hit = self.evaluate(spec.stage, t, at, finite(r.value), r.error)
                    if hit is not None:
                        found.append(hit)
            if found:
                self.breach_decision(found, source="prometheus", observed=at)
            if s.watch is None or s.watch.anchor != spec.anchor:
                break  # the scope changed (e.g. rolled back): later results are for a scope gone
        if s.watch is not None and s.watch.anchor == spec.anchor:
            if s.evaluated_through is None or ev.through > s.evaluated_through:
                s.evaluated_through = ev.through
        if s.window_due:
            self.judge_window()

    def evaluate(
        self, stage: str, t: Threshold, at: datetime, value: float | None, error: str | None
    ) -> tuple[str | None, Action, float | None, dict[str, Any]] | None:
        """One evaluation: counters, the latch, window statistics; a breach if this is the
        `for`-th consecutive failing one."""
        s = self.s
        outcome = th.classify(t, value)
        tally = s.tallies.setdefault(f"{stage}/{t.name}", Tally())
        tally.evaluations += 1
        tally.failing += outcome == "fail"
        tally.no_data += outcome == "no_data"
        self.count_in_window(t, at, value, outcome)
        tr = s.tracks.setdefault(t.name, Track())
        tr.recent.append((at, value))
        del tr.recent[:-MAX_SAMPLES]
        failing = th.counts_as_failure(t, outcome)
        if failing is None:
            return None
        if not failing:
            tr.counter = 0
            tr.latched = False
            tr.no_data_in_run = False
            return None
        tr.counter += 1
        tr.no_data_in_run = tr.no_data_in_run or outcome == "no_data"
        if tr.latched or not th.is_breach(t, tr.counter):
            return None
        tr.latched = True
        action = th.effective_action(t, tr.no_data_in_run)
        evidence = {"source": "prometheus", "threshold": t.name, "query": t.query, "value": value, "max": t.max,
                    "min": t.min, "for": t.for_, "no_data": value is None, "error": error,
                    "on_no_data": t.on_no_data, "evaluated_at": _iso(at),
                    "samples": [[_iso(a), v] for a, v in tr.recent[-max(t.for_, 1):][-MAX_SAMPLES:]]}
        return (t.name, action, value, evidence)

    def count_in_window(self, t: Threshold, at: datetime, value: float | None, outcome: str) -> None:
        s = self.s
        if s.window_started_at is None or s.window_ends_at is None:
            return
        if not (s.window_started_at < at <= s.window_ends_at):
            return
        st = s.stats.setdefault(t.name, WindowStat())
        st.evaluations += 1
        if value is None:
            st.no_data += 1
        else:
            st.with_data += 1
            st.min = value if st.min is None else min(st.min, value)
            st.max = value if st.max is None else max(st.max, value)
            st.last = value
        if outcome == "fail" or (outcome == "no_data" and t.on_no_data != "ignore"):
            st.failing += 1
            if len(st.failing_values) < MAX_FAILING_KEPT:
                st.failing_values.append((at, value))
        st.series.append((at, value))
        if len(st.series) > MAX_SERIES_KEPT:
            st.series = st.series[::2]  # downsample: every other point

    def start_window(self) -> None:
        s = self.s
        stage = self.plan.stages[s.stage_index]
        s.window_started_at = self.now
        s.window_ends_at = self.now + parse_duration(stage.window)
        s.window_due = False
        s.stats = {}
        self.audit("window_started", stage=stage.name,
                   payload={"window_started_at": _iso(s.window_started_at), "window_ends_at": _iso(s.window_ends_at)})

    def expected_evaluations(self) -> int:
        s = self.s
        spec = s.watch
        if spec is None or s.window_started_at is None or s.window_ends_at is None:
            return 0
        return th.expected_evaluations(s.window_started_at, s.window_ends_at, spec.interval_seconds)

    def window_summary(self, outcome: str) -> None:
        s = self.s
        stage = self.plan.stages[s.stage_index]
        expected = self.expected_evaluations()
        payload: dict[str, Any] = {"stage": stage.name, "outcome": outcome, "started_at": _iso(s.window_started_at),
                                   "ended_at": _iso(self.now), "expected": expected, "thresholds": {}}
        for t in stage.thresholds:
            st = s.stats.get(t.name, WindowStat())
            payload["thresholds"][t.name] = {
                "evaluations": st.evaluations, "with_data": st.with_data, "failing": st.failing,
                "no_data": st.no_data, "min": st.min, "max": st.max, "last": st.last,
                "limit_max": t.max, "limit_min": t.min,
                "coverage": th.coverage(st.with_data, expected),
                "failing_values": [[_iso(a), v] for a, v in st.failing_values],
                "samples": [[_iso(a), v] for a, v in st.series],
            }
        self.audit("window_summary", stage=stage.name, payload=payload)

    def judge_window(self, grace_passed: bool = False) -> None:
        """At the window's end (once evaluations reach it, or their grace passed): clean
        only if each threshold had data for at least 90% of its scheduled evaluations.

        Only the grace deadline says the grace passed: an evaluation report that arrives
        after it never looks at the clock, so the decision does not depend on when a
        replay or a late worker handles it."""
        s = self.s
        assert s.window_ends_at is not None
        spec = s.watch
        stage = self.plan.stages[s.stage_index]
        waiting_for_monitor = (
            spec is not None and stage.thresholds
            and (s.evaluated_through is None or s.evaluated_through < s.window_ends_at)
            and not grace_passed
        )
        if waiting_for_monitor:
            s.window_due = True
            return
        expected = self.expected_evaluations()
        counts = {t.name: s.stats.get(t.name, WindowStat()).with_data for t in stage.thresholds}
        ok, short = th.window_clean(stage.thresholds, counts, expected)
        s.coverage = {t.name: th.coverage(counts[t.name], expected) for t in stage.thresholds}
        self.window_summary("clean" if ok else "insufficient data")
        if not ok:
            self.audit("window_insufficient_data", stage=stage.name,
                       payload={"coverage": s.coverage, "short": short, "expected": expected})
            self.contain("hold", actor=SYSTEM, reason="insufficient data",
                         thresholds=[])
            return
        self.audit("window_clean", stage=stage.name,
                   payload={"window_started_at": _iso(s.window_started_at), "window_ends_at": _iso(s.window_ends_at),
                            "coverage": s.coverage})
        s.window_started_at = s.window_ends_at = None
        s.window_due = False
        s.clean = True
        if self.open_handoff(s.stage_index):
            s.status = "awaiting_handoff"
            self.audit("awaiting_handoff", stage=stage.name, payload={"items": self.open_handoff(s.stage_index)})
        else:
            self.leave_stage()
        self.progress()

    # ---- the target

    def change(self, kind: str, scope: Exposure, reason: str, frozen: bool = False) -> int:
        """Queue one change of scope for the target, under the next decision sequence."""
        s = self.s
        s.decision_seq += 1
        seq = s.decision_seq
        ch = TargetChange(
            rollout_id=s.workflow_id, plan_name=self.plan.name, seq=seq, idempotency_key=f"{s.workflow_id}:{seq}",
            kind=kind,
            stage=self.stage_name(scope.stage), percent=scope.percent, segments=scope.segments,
            authority=dict(scope.authority), frozen=frozen or scope.frozen, plan_hash=s.plan_hash,
            reason=clip(reason, 500), decided_at=self.now, target=self.plan.target.model_dump(mode="json"),
        )
        s.changes.append(ch)
        s.decided = scope.model_copy(update={"frozen": frozen or scope.frozen, "narrowed": kind == "narrow"})
        if s.target_pending is None:
            s.target_pending = TargetPending(seq=ch.seq, kind=kind, stage=ch.stage, since=self.now)
        self.cmds.append(ApplyExposure(change=ch))
        return seq

    def on_target_acked(self, ev: TargetAcked) -> None:
        s = self.s
        ch = next((c for c in s.changes if c.seq == ev.seq), None)
        if ch is None:
            return  # superseded or already acknowledged
        s.changes = [c for c in s.changes if c.seq > ev.seq]
        before = s.exposure
        s.exposure = self.exposure_of(ch)
        if ch.kind in ("promote", "resume"):
            s.exposure_since = self.now
        if ch.kind in ("promote", "resume", "rollback"):
            self.reset_tracks()  # counters reset on a stage entry, a resume and a rollback
        moved = (before.stage, before.percent, before.segments) != (s.exposure.stage, s.exposure.percent,
                                                                    s.exposure.segments)
        if moved or s.exposure_at is None:
            s.exposure_at = self.now  # a new scope in force: evaluations count from here
            s.evaluated_through = None
        nxt = s.changes[0] if s.changes else None
        s.target_pending = (
            TargetPending(seq=nxt.seq, kind=nxt.kind, stage=nxt.stage, since=self.now) if nxt is not None else None
        )
        self.audit("scope_applied", stage=ch.stage,
                   payload={"seq": ch.seq, "kind": ch.kind, "key": ch.idempotency_key, "percent": ch.percent,
                            "segments": ch.segments, "authority": ch.authority, "frozen": ch.frozen,
                            "detail": ev.detail})
        if s.window_after_seq == ch.seq and s.status == "soaking":
            s.window_after_seq = None
            self.start_window()

    def on_target_failed(self, ev: TargetFailed) -> None:
        s = self.s
        tp = s.target_pending
        if tp is None or tp.seq != ev.seq:
            return
        tp.attempts += 1
        tp.last_error = ev.error
        if ev.permanent:
            self.undeliverable(ev.error or "refused by the target")
        elif tp.undeliverable:
            tp.retry_at = self.now + RETRY_UNDELIVERABLE

    def undeliverable(self, why: str) -> None:
        """A change the target will not take: a promotion holds the rollout at its previous
        scope (`target unreachable`); a containment pages chain[0] and is retried."""
        s = self.s
        tp = s.target_pending
        assert tp is not None
        ch = next(c for c in s.changes if c.seq == tp.seq)
        self.audit("target_undeliverable", stage=ch.stage,
                   payload={"seq": ch.seq, "kind": ch.kind, "error": why, "attempts": tp.attempts})
        if s.status in FINAL:
            s.changes = [c for c in s.changes if c.seq != ch.seq]
            s.target_pending = None
            return
        if ch.kind in ("promote", "resume"):
            s.changes = [c for c in s.changes if c.seq != ch.seq]
            s.target_pending = None
            s.decided = s.exposure.model_copy()
            idx = self.plan.stage_index(ch.stage) if ch.stage else None
            if ch.kind == "promote" and idx is not None and idx != s.exposure.stage:
                s.entered = [i for i in s.entered if i != idx]
            self.stop_window()
            s.status = "held"
            since = s.containment.since if s.containment is not None else self.now
            s.containment = Containment(kind="target", reason="target unreachable", actor=SYSTEM, at=self.now,
                                        since=since, interrupted="soaking")
            self.audit("contained_hold", reason="target unreachable",
                       stage=self.stage_name(s.stage_index),
                       payload={"interrupted": "soaking", "scope": self.scope_json(), "error": why})
            self.notify("target_undeliverable", f"{self.plan.name}: {ch.kind} to {ch.stage} undeliverable ({why}); held")
            self.escalate(SYSTEM, f"target unreachable: {why}")
            return
        tp.undeliverable = True
        tp.retry_at = self.now + RETRY_UNDELIVERABLE
        self.notify("target_undeliverable", f"{self.plan.name}: {ch.kind} undeliverable ({why}); retrying")
        s.escalation_count += 1
        s.escalation = Escalation(id=s.escalation_count, reason=f"containment undeliverable: {why}",
                                  started_at=self.now)
        self.page(0, due=self.now)

    # ---- time

    def on_deadline(self) -> None:
        s = self.s
        now = self.now
        due = _deadlines(s)
        t = due.get("target")
        if t is not None and t <= now and s.target_pending is not None:
            tp = s.target_pending
            if tp.undeliverable:
                tp.retry_at = None  # the shell delivers it again
            else:
                self.undeliverable(f"no acknowledgement after {s.plan.target.model_dump().get('give_up_after', '5m')}"
                                   + (f": {tp.last_error}" if tp.last_error else ""))
        if s.status in FINAL:
            return
        esc = s.escalation
        if esc is not None and esc.acknowledged_by is None and esc.next_page_at is not None and esc.next_page_at <= now:
            self.page(esc.level + 1, due=esc.next_page_at)
        mh = _deadlines(s).get("max_hold")
        if mh is not None and mh <= now and s.containment is not None:
            c = s.containment
            self.contain("rollback", actor=SYSTEM,
                         reason=f"max_hold {self.plan.escalation.max_hold} reached (held since {_iso(c.since)}: {c.reason})")
        if s.status == "awaiting_approval" and s.remind_at is not None and s.remind_at <= now:
            stage = self.plan.stages[s.stage_index]
            missing = self.missing_roles(s.stage_index)
            ids = sorted({i for r in missing for i in self.plan.approvers.get(r, [])})
            self.audit("approval_reminder", stage=stage.name, payload={"missing": missing, "recipients": ids,
                                                                       "late_by": max(0.0, (self.wall - s.remind_at).total_seconds())})
            self.notify("approval_reminder", f"{self.plan.name}: {stage.name} awaits approval from {', '.join(missing)}",
                        recipients=ids)
            ra = stage.approvals.remind_after
            s.remind_at = now + parse_duration(ra) if ra else None
        if s.status == "soaking" and s.window_ends_at is not None and s.window_ends_at <= now:
            self.judge_window(grace_passed=now >= _window_grace_end(s))

    # ---- the monitor

    def sync_watch(self) -> None:
        """Watch the thresholds of `exposure_stage` whenever a scope is in force."""
        s = self.s
        spec = self.watch_spec()
        if spec == s.watch:
            return
        s.watch = spec
        self.cmds.append(Watch(spec=spec))

    def watch_spec(self) -> WatchSpec | None:
        s = self.s
        plan = self.plan
        e = s.exposure
        if s.status in FINAL or e.stage is None or plan.metrics is None:
            return None
        stage = plan.stages[e.stage]
        if not stage.thresholds:
            return None
        anchor = s.exposure_at or self.now
        interval = _secs(plan.metrics.interval)
        through = s.evaluated_through if s.watch is not None and s.watch.anchor == anchor else None
        nxt = 1 if through is None else th.evaluation_index(anchor, through, interval) + 1
        flush_at = s.window_ends_at if s.status == "soaking" else None
        window = _secs(stage.window)
        flush_every = max(interval, min(MAX_FLUSH, window / 20))
        latched = sorted(n for n, tr in s.tracks.items() if tr.latched)
        return WatchSpec(stage=stage.name, prometheus_url=plan.metrics.prometheus_url, interval_seconds=interval,
                         thresholds=list(stage.thresholds), anchor=anchor, next_index=max(1, nxt), latched=latched,
                         flush_at=flush_at, flush_every_seconds=flush_every)

    # ---- audit and notifications

    def role_of(self, actor: str | None) -> str | None:
        if not actor:
            return None
        owners = self.plan.owners.by_key()
        for key, ident in owners.items():
            if ident == actor:
                return key
        for role, ids in self.plan.approvers.items():
            if actor in ids:
                return role
        return None

    def audit(
        self,
        action: str,
        *,
        actor: str | None = SYSTEM,
        role: str | None = None,
        stage: str | None = None,
        reason: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        s = self.s
        s.audit_seq += 1
        self.cmds.append(Audit(event=AuditEvent(
            rollout_id=s.workflow_id, seq=s.audit_seq, at=self.now, actor=actor, role=role or self.role_of(actor),
            action=action, stage=stage if stage is not None else self.stage_name(s.stage_index),
            plan_hash=s.plan_hash, reason=clip(reason, 2000) if reason else reason,
            payload=_json_safe(payload or {}),
        )))

    def notify(
        self,
        event: str,
        summary: str,
        *,
        page: bool = False,
        recipients: list[str] | None = None,
        ack_command: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        s = self.s
        if not self.plan.notify:
            return
        self.cmds.append(Notify(notification=Notification(
            rollout_id=s.workflow_id, plan_name=self.plan.name, seq=s.audit_seq,
            event=event,
            summary=clip(summary, 1000), stage=self.stage_name(s.stage_index), status=s.status,
            plan_hash=s.plan_hash, occurred_at=self.now, page=page, recipients=recipients or [],
            ack_command=ack_command, details={k: v for k, v in (details or {}).items() if v is not None},
            notifiers=list(self.plan.notify),
        )))


def _json_safe(v: Any) -> Any:
    """Floats that JSON can carry (NaN and infinities become None)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


# ---- the `status` query -----------------------------------------------------------------------


def status(s: State, now: datetime | None = None) -> dict[str, Any]:
    """The `status` query: a JSON object (DESIGN.md, Temporal contract)."""
    plan = s.plan
    stage = plan.stages[s.stage_index]
    given = s.approvals.get(stage.name, {})
    awaited = awaited_stage(s)

    def name(i: int | None) -> str | None:
        return None if i is None else plan.stages[i].name

    def exposure(e: Exposure) -> dict[str, Any]:
        return {"stage": name(e.stage), "percent": e.percent, "segments": e.segments, "authority": e.authority,
                "narrowed": e.narrowed, "frozen": e.frozen}

    pending_handoff = []
    if s.stage_index in s.entered:
        acks = s.handoff_acks.get(stage.name, {})
        pending_handoff = [
            {"stage": stage.name, "item": h.item, "to": h.to, "identities": plan.role_identities(h.to)}
            for h in stage.handoff if h.item not in acks
        ]
    pa = s.pending_amendment
    amend_idx = _Run(s, now or s.started_at).amendment_roles_stage() if pa is not None else None
    esc = s.escalation
    closed = s.status in FINAL
    return {
        "workflow_id": s.workflow_id,
        "first_run_id": s.first_run_id,
        "name": plan.name,
        "plan_hash": s.plan_hash,
        "plan": plan.model_dump(mode="json", by_alias=True),
        "owners": plan.owners.by_key(),
        "started_by": s.started_by,
        "stage": stage.name,
        "stage_index": s.stage_index,
        "tier": stage.tier,
        "stages": [x.name for x in plan.stages],
        "status": s.status,
        "exposure": exposure(s.exposure),
        "exposure_stage": name(s.exposure.stage),
        "decided_exposure": exposure(s.decided),
        "window_started_at": _iso(s.window_started_at) if s.status == "soaking" else None,
        "window_ends_at": _iso(s.window_ends_at) if s.status == "soaking" else None,
        "window_coverage": s.coverage,
        "exposure_clean": s.clean,
        "approvals": {
            "stage": stage.name,
            "entry": current_entry(s),
            "awaiting": awaited is not None,
            "awaiting_since": _iso(s.awaiting_since) if awaited is not None else None,
            "given": {r: a.model_dump(mode="json") for r, a in given.items()},
            "missing": [r for r in stage.approvals.roles if r not in given],
        },
        "handoff_acknowledged": {
            st: {i: a.model_dump(mode="json") for i, a in items.items()} for st, items in s.handoff_acks.items()
        },
        "pending_handoff": pending_handoff,
        "hold": s.containment.model_dump(mode="json") if s.containment else None,
        "open_breaches": [b.model_dump(mode="json") for b in s.breaches],
        "escalation": (
            None if esc is None or (closed and esc.acknowledged_by in (None, SYSTEM))
            else {**esc.model_dump(mode="json"), "open": esc.acknowledged_by is None}
        ),
        "pending_amendment": (
            {
                "plan_hash": pa.plan_hash,
                "proposed_by": pa.proposed_by,
                "proposed_at": _iso(pa.proposed_at),
                "reason": pa.reason,
                "roles_stage": name(amend_idx),
                "approvals": {r: a.model_dump(mode="json") for r, a in pa.approvals.items()},
                "missing": [r for r in plan.stages[amend_idx].approvals.roles if r not in pa.approvals]
                if amend_idx is not None else [],
            }
            if pa is not None else None
        ),
        "target_pending": s.target_pending.model_dump(mode="json") if s.target_pending else None,
        "watch": (
            {"stage": s.watch.stage, "anchor": _iso(s.watch.anchor), "interval_seconds": s.watch.interval_seconds,
             "evaluated_through": _iso(s.evaluated_through)}
            if s.watch is not None else None
        ),
        "thresholds": {
            n: {"counter": tr.counter, "latched": tr.latched} for n, tr in s.tracks.items()
        },
        "refused": [r.model_dump(mode="json") for r in s.refused],
        "started_at": _iso(s.started_at),
        "final_reason": s.final_reason,
        "decisions": s.decision_seq,
        "audit_seq": s.audit_seq,
        "audit_head": s.audit_head,
        "runs": s.runs,
    }
