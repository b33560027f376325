"""Drive the pure state machine in tests: a clock, a log of commands, a target that answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rollout import machine
from rollout.machine_model import (
    ApplyExposure,
    Audit,
    Command,
    DeadlineReached,
    Evaluation,
    Evaluations,
    Event,
    Notify,
    Refuse,
    State,
    TargetAcked,
)
from rollout.plan import Plan, validate_plan_data
from tests.plans import OWNER, plan_dict

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Kit:
    """One rollout under test. `auto_ack`: the target acknowledges every change at once."""

    def __init__(self, plan: Plan | dict[str, Any] | None = None, *, auto_ack: bool = True,
                 started_by: str | None = OWNER, now: datetime = T0) -> None:
        self.plan = plan if isinstance(plan, Plan) else validate_plan_data(plan or plan_dict())
        self.now = now
        self.auto_ack = auto_ack
        self.state, cmds = machine.start(self.plan, workflow_id="rollout-x", first_run_id="run-1",
                                         started_by=started_by, now=now)
        self.log: list[Command] = []
        self.last: list[Command] = []
        self._take(cmds)

    def _take(self, cmds: list[Command]) -> None:
        self.last = list(cmds)
        self.log.extend(cmds)
        if self.auto_ack:
            for c in cmds:
                if isinstance(c, ApplyExposure):
                    self.send(TargetAcked(seq=c.change.seq))
                    self.last = list(cmds) + self.last

    def send(self, event: Event) -> list[Command]:
        self.state, cmds = machine.decide(self.state, event, self.now)
        self._take(cmds)
        return cmds

    def refusal(self, event: Event) -> str | None:
        return machine.refusal(self.state, event, self.now)

    def advance(self, delta: timedelta) -> None:
        """Move the clock, firing every deadline that falls due on the way, in order."""
        end = self.now + delta
        while True:
            due = machine.next_deadline(self.state)
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self.send(DeadlineReached(at=due))
        self.now = end

    def evaluate(self, values: dict[str, float | None], *, at: datetime | None = None) -> list[Command]:
        """One scheduled evaluation of the watched thresholds (at the next slot by default)."""
        spec = self.state.watch
        assert spec is not None, "nothing is watched"
        k = spec.next_index
        when = at or spec.anchor + timedelta(seconds=k * spec.interval_seconds)
        if when > self.now:
            self.advance(when - self.now)
        spec = self.state.watch
        assert spec is not None
        results = [Evaluation(threshold=n, at=when, value=v) for n, v in values.items()]
        return self.send(Evaluations(stage=spec.stage, anchor=spec.anchor, through=when, results=results))

    def status(self) -> dict[str, Any]:
        return machine.status(self.state, self.now)

    @property
    def s(self) -> State:
        return self.state

    def audits(self, action: str | None = None) -> list[Any]:
        return [c.event for c in self.log if isinstance(c, Audit) and (action is None or c.event.action == action)]

    def changes(self) -> list[Any]:
        return [c.change for c in self.log if isinstance(c, ApplyExposure)]

    def notes(self) -> list[Any]:
        return [c.notification for c in self.log if isinstance(c, Notify)]

    def refused(self) -> list[str]:
        return [c.reason for c in self.last if isinstance(c, Refuse)]
