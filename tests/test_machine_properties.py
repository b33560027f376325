"""Properties of the state machine over random plans and random event sequences.

Messages from listed and unlisted identities, evaluations with and without data,
breaches, target answers and failures, and time passing come in any order; after every
step the invariants of issue 11 are checked.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rollout import machine
from rollout.machine_model import (
    Abort,
    Acknowledge,
    ApplyExposure,
    Approve,
    Audit,
    BreachReported,
    Command,
    DeadlineReached,
    Evaluation,
    Evaluations,
    Event,
    Hold,
    Reject,
    Resume,
    Rollback,
    State,
    TargetAcked,
    TargetFailed,
)
from rollout.plan import Plan, validate_plan_data
from tests.machine_kit import T0
from tests.plans import BASE, ENG1, ENG2, IR, OPS, OWNER, RISK, WORKFLOW_OWNER

PEOPLE = [OWNER, WORKFLOW_OWNER, IR, RISK, ENG1, ENG2, OPS, "mallory@example.com"]
ACTIONS = ["hold", "narrow", "rollback"]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    d: dict[str, Any] = copy.deepcopy(BASE)
    d["metrics"] = {"prometheus_url": "http://127.0.0.1:1", "interval": "1h"}
    n = draw(st.integers(2, 3))
    stages = [*d["stages"][: n - 1], d["stages"][2]]
    stages = copy.deepcopy(stages)
    for i, s in enumerate(stages):
        s["tier"] = "pilot" if i == 0 else ("system_of_record" if i == n - 1 else "limited")
        s["name"] = s["name"] if i < n - 1 else "system-of-record"
        s["window"] = f"{draw(st.integers(2, 6))}h"
        s["thresholds"] = [
            {"name": f"t{j}", "query": f"q{j}", "max": 1.0, "for": draw(st.integers(1, 3)),
             "on_no_data": draw(st.sampled_from(["hold", "breach", "ignore"])),
             "action": draw(st.sampled_from(ACTIONS))}
            for j in range(draw(st.integers(0, 2)))
        ]
    d["stages"] = stages
    return validate_plan_data(d)



def _shape(c: Command) -> Any:
    """A command without the values that measure lateness (`late_by`), which are the only
    part allowed to depend on when a deadline is handled."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("late_by", "late_by_seconds")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip(c.model_dump(mode="json"))

class Rollouts(RuleBasedStateMachine):
    """One rollout driven by random events, the invariants checked after every step."""

    @initialize(plan=plans(), auto_ack=st.booleans())
    def start(self, plan: Plan, auto_ack: bool) -> None:
        self.plan = plan
        self.auto_ack = auto_ack
        self.now = T0
        self.state, cmds = machine.start(plan, workflow_id="rollout-p", first_run_id="r1", started_by=OWNER, now=T0)
        self.events: list[tuple[Event, Any]] = []
        self.commands: list[Any] = []
        self.keys: list[int] = []
        self.contained_since_resume = False
        self.last_percent = 0.0
        self.step_cmds: list[Command] = list(cmds)
        self.check_commands(cmds, None)

    # ---- driving

    def send(self, ev: Event) -> None:
        before = self.state
        # continue-as-new: deciding after a JSON round trip gives the same commands
        twin = State.model_validate_json(before.model_dump_json())
        self.state, cmds = machine.decide(before, ev, self.now)
        _, twin_cmds = machine.decide(twin, ev, self.now)
        assert [c.model_dump() for c in cmds] == [c.model_dump() for c in twin_cmds]
        self.events.append((ev, self.now))
        self.commands.extend(c.model_dump() for c in cmds)
        self.check_commands(cmds, before)
        if self.auto_ack:
            for c in cmds:
                if isinstance(c, ApplyExposure):
                    self.send(TargetAcked(seq=c.change.seq))

    def check_commands(self, cmds: list[Command], before: State | None) -> None:
        for c in cmds:
            if isinstance(c, ApplyExposure):
                self.keys.append(c.change.seq)
                assert c.change.idempotency_key == f"rollout-p:{c.change.seq}"
                if self.contained_since_resume:
                    assert c.change.percent <= self.last_percent + 1e-9 or c.change.kind == "resume", (
                        "scope widened while contained"
                    )
                if c.change.kind in ("resume",):
                    self.contained_since_resume = False
                self.last_percent = c.change.percent
            if isinstance(c, Audit):
                self.check_audit(c.event.action, c.event.payload, c.event.stage)
        assert self.keys == sorted(set(self.keys)), "idempotency keys strictly increase"

    def check_audit(self, action: str, payload: dict[str, Any], stage: str | None) -> None:
        plan = self.state.plan
        if action == "stage_entered":
            assert not self.contained_since_resume, "entry after a containment without a resume"
            idx = plan.stage_index(stage or "")
            assert idx is not None
            given: dict[str, str] = payload["approvals"]
            roles = plan.stages[idx].approvals.roles
            assert sorted(given) == sorted(roles), "one approval per role"
            assert len(set(given.values())) == len(given), "distinct identities"
            assert all(who in plan.approvers[r] and who != plan.owners.rollout for r, who in given.items())
        if action == "resumed":
            self.contained_since_resume = False
        if action == "window_clean":
            assert all(v >= 0.9 - 1e-9 for v in payload["coverage"].values()), "clean with <90% coverage"
        if action.startswith("contained_") and payload.get("note") != "frozen while rolled back":
            self.contained_since_resume = True
            esc = self.state.escalation
            assert esc is not None and esc.started_at == self.now, "every containment opens an escalation"

    # ---- rules

    @rule(who=st.sampled_from(PEOPLE), role=st.sampled_from(["risk", "engineering", "operations", "x"]),
          stage=st.sampled_from([None, "pilot", "limited-25", "system-of-record"]), via=st.sampled_from(["update", "signal"]))
    def approve(self, who: str, role: str, stage: str | None, via: str) -> None:
        ev = Approve(actor=who, role=role, stage=stage, via=via)  # type: ignore[arg-type]
        if via == "update" and machine.refusal(self.state, ev, self.now) is not None:
            return  # a refused update never reaches the handler
        self.send(ev)

    @rule(who=st.sampled_from(PEOPLE))
    def reject(self, who: str) -> None:
        self.send(Reject(actor=who, reason="no", via="signal"))

    @rule(who=st.sampled_from(PEOPLE), kind=st.sampled_from(["hold", "rollback", "resume"]))
    def contain_or_resume(self, who: str, kind: str) -> None:
        cls = {"hold": Hold, "rollback": Rollback, "resume": Resume}[kind]
        self.send(cls(actor=who, reason="r", via="signal"))  # type: ignore[abstract]

    @rule(who=st.sampled_from(PEOPLE), item=st.sampled_from(
        ["Support leads briefed", "On-call rota includes the agent", "Runbook reviewed", None]))
    def acknowledge(self, who: str, item: str | None) -> None:
        self.send(Acknowledge(actor=who, item=item, escalation=item is None, via="signal"))

    @rule(threshold=st.sampled_from(["t0", "t1", "zz", None]), action=st.sampled_from([None, *ACTIONS]))
    def breach(self, threshold: str | None, action: str | None) -> None:
        self.send(BreachReported(source="am", threshold=threshold, action=action, observed_at=self.now))

    @rule(values=st.lists(st.one_of(st.none(), st.floats(0, 2)), min_size=2, max_size=2))
    def evaluate(self, values: list[float | None]) -> None:
        spec = self.state.watch
        if spec is None:
            return
        at = spec.anchor + timedelta(seconds=spec.next_index * spec.interval_seconds)
        self.advance_to(at)
        spec = self.state.watch
        if spec is None:
            return
        results = [Evaluation(threshold=t.name, at=at, value=values[i]) for i, t in enumerate(spec.thresholds)]
        self.send(Evaluations(stage=spec.stage, anchor=spec.anchor, through=at, results=results))

    @rule(permanent=st.booleans())
    def target_answers(self, permanent: bool) -> None:
        if self.state.changes:
            seq = self.state.changes[0].seq
            self.send(TargetFailed(seq=seq, error="503", permanent=True) if permanent else TargetAcked(seq=seq))

    @rule(minutes=st.integers(1, 600))
    def time_passes(self, minutes: int) -> None:
        self.advance_to(self.now + timedelta(minutes=minutes))

    @rule()
    def abort(self) -> None:
        self.send(Abort(actor=OWNER, reason="stop", via="signal"))

    def advance_to(self, end: Any) -> None:
        """Fire each deadline as the workflow's timer does: `DeadlineReached(at=due)`,
        handled at `end` (late, as after a worker outage) or at `due`."""
        while (due := machine.next_deadline(self.state)) is not None and due <= end:
            # the decision depends on the timer, not on when it is handled: a replay that
            # sees another workflow time must give the same commands
            _, on_time = machine.decide(self.state, DeadlineReached(at=due), due)
            _, late = machine.decide(self.state, DeadlineReached(at=due), end + timedelta(minutes=7))
            assert [_shape(c) for c in on_time] == [_shape(c) for c in late]
            self.now = max(self.now, due)
            self.send(DeadlineReached(at=due))
            after = machine.next_deadline(self.state)
            assert after is None or after > due, f"deadline {due} still due after it was judged ({after})"
        self.now = max(self.now, end)

    # ---- invariants

    @invariant()
    def status_is_json(self) -> None:
        import json

        json.dumps(machine.status(self.state, self.now))

    @invariant()
    def nothing_widens_while_contained(self) -> None:
        s = self.state
        if s.status in ("held", "rolled_back") and s.decided.stage is not None and s.changes:
            assert all(c.kind not in ("promote",) for c in s.changes), "a promotion queued while contained"

    @invariant()
    def same_events_give_same_commands(self) -> None:
        if len(self.events) % 15 != 14:
            return  # replaying everything each step is slow; every 15th step is plenty
        state, _ = machine.start(self.plan, workflow_id="rollout-p", first_run_id="r1", started_by=OWNER, now=T0)
        given: list[Any] = []
        for ev, at in self.events:
            state, cmds = machine.decide(state, ev, at)
            given.extend(c.model_dump() for c in cmds)
        assert given == self.commands and state.model_dump() == self.state.model_dump()

    @invariant()
    def deciding_a_batch_equals_deciding_one_by_one(self) -> None:
        """`decide_each` (one workflow task's events at once) gives what `decide` gives one
        event at a time: the same state and, per event, the same commands, none of them
        changed by a later event of the batch."""
        if len(self.events) % 15 != 7:
            return
        start, _ = machine.start(self.plan, workflow_id="rollout-p", first_run_id="r1", started_by=OWNER, now=T0)
        cut = len(self.events) // 2
        state, first = machine.decide_each(start, self.events[:cut])
        state, second = machine.decide_each(state, self.events[cut:])
        given = [c.model_dump() for cmds in first + second for c in cmds]
        assert len(first) + len(second) == len(self.events)
        assert given == self.commands and state.model_dump() == self.state.model_dump()


Rollouts.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestRollouts = Rollouts.TestCase
