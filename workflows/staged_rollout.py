"""StagedRollout: the durable shell around the rollout state machine (rollout.machine).

The loop: wait for a message, a finished activity or the next deadline; turn it into
an event; `machine.decide`; carry out the commands; repeat. No rule lives here.

Shell discipline (each point keeps replay deterministic, see docs/workflow.md):
- only this loop issues commands (activities, timers, search attributes,
  continue-as-new); handlers and activity tasks only queue what they received;
- the loop takes finished activities before messages, so an activation that merges
  the two (a lost cache after empty workflow tasks, sdk-rust #1146) gives the same
  commands as a replay that splits them;
- no command depends on the clock: a deadline is judged only when its timer fires, at
  the time the timer was set for (`DeadlineReached.at`), because after a lost cache
  the SDK may run an activation with an earlier workflow time than its replay does;
  timers are never cancelled (no `wait_condition(timeout=)`), and the one set for
  continue-as-new's grace is a flag;
- deliveries, the monitor, audit batches and notifications run beside the clock:
  nothing waits on a target, and continue-as-new carries what is unsent;
- no workflow task that carries an event from outside (an activity's end, a timer,
  a signal) completes without a command: the first such event of a task, where its
  coroutine resumes, records one memo upsert (`_handled`; one per event before the
  `one-memo-per-task` patch). SDK core 1.35 folds a task that completed with
  no command into the next one on replay (its v1 "heartbeat" chunking) but not always
  live, so an Update that followed such a task was replayed in another activation, at
  another time, than it ran (sdk-rust #1146: the chaos test's stuck rollouts).
  Superseded deliveries wait for their cancellation, so its end is seen too;
- after a worker died, a worker can run a workflow task attempt that has no start of
  its own (its workflow time is the previous task's, its history longer). The server
  times that attempt out, but the commands it issued go out with the next task, beside
  that task's own events or Update, in an order no replay reproduces (`Update machine
  does not handle ...`, `ModifyWorkflowPropertiesMachine does not handle ...`: the
  chaos test's stuck rollouts). The loop fails such a task (`_note_step`) before it
  issues anything, so the worker drops the workflow and the task is retried from
  history;
- target deliveries run on the workflow's own task queue (eager dispatch: the worker that
  decided a containment starts it at once), audit batches, notifications and threshold
  monitors on queues of their own (workflows/queues.py, patch `own-queues`), and the
  notifications of one step go out in one activity (patch `notify-batches`): a
  containment never waits for an activity slot behind them, and a breach costs two
  fewer activities and workflow tasks;
- an Update is refused as `Busy` (send it again) when its validator runs in the same
  workflow task as a loop step already taken: acceptance would come after commands a
  replay issues after it. A refused Update leaves no history; the client sends it again
  (worker/client.py) and it lands in a later task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from rollout import machine
    from rollout.machine_model import (
        Audit,
        AuditAnchored,
        Close,
        Command,
        DeadlineReached,
        Evaluations,
        Event,
        Notify,
        NotifyFailed,
        Refuse,
        State,
        TargetAcked,
        TargetFailed,
        WatchSpec,
        event_from_payload,
    )
    from rollout.models import (
        AuditBatch,
        AuditEvent,
        AuditHead,
        Notification,
        NotificationBatch,
        NotifyBatchResult,
        NotifyResult,
        TargetResult,
    )
    from workflows import queues, search_attrs
    from workflows.legacy.v1 import LegacyStagedRollout
    from workflows.messages import ActionInput, BreachReport, RolloutInput

PATCH = "state-machine-v2"
PATCH_HANDLED = "no-empty-tasks"  # runs started before it keep their old command sequence
PATCH_QUEUES = "own-queues"  # audit, notifications and monitors on queues of their own (workflows/queues.py)
PATCH_NOTIFY_BATCHES = "notify-batches"  # the notifications of one step in one activity
PATCH_ONE_MEMO = "one-memo-per-task"  # the no-empty-tasks memo once per workflow task, not per event
MAX_SIGNAL_BYTES = 64 * 1024
AUDIT_BATCH_ROWS = 1000
AUDIT_BATCH_BYTES = 480 * 1024  # under the SDK's 512 KB payload warning
CARRY_BYTES = 1024 * 1024  # unsent audit rows a continue-as-new carries at most (payloads stop at 2 MB)
NOTIFY_BATCH_COUNT = 20
NOTIFY_BATCH_BYTES = 256 * 1024
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
CAN_GRACE = timedelta(seconds=10)
BUSY_REASON = "the rollout is being moved to another worker; send the action again"
TASK_WITHOUT_START = "workflow task without a start of its own (after a worker died): retried from history"
ACTIONS = ("approve", "reject", "hold", "resume", "rollback", "acknowledge", "amend", "abort")


def _task() -> tuple[Any, int]:
    """What names the workflow task running now: its time and the history length at its
    start, both the same for every activation of one task, live or replayed."""
    return workflow.now(), workflow.info().get_current_history_length()


def _size(m: AuditEvent | Notification) -> int:
    return len(m.model_dump_json())


def _batch_len(sizes: Iterable[int], most: int, most_bytes: int) -> int:
    """How many leading items make one batch: at most `most` of them and `most_bytes` in
    all, and always the first (audit batches and notification batches alike)."""
    n = total = 0
    for size in sizes:
        total += size
        if n and (n >= most or total > most_bytes):
            break
        n += 1
    return n


@workflow.defn(name="StagedRollout")
class StagedRollout:
    @workflow.init
    def __init__(self, inp: RolloutInput) -> None:
        self._legacy: LegacyStagedRollout | None = None
        if inp.state is not None or not workflow.patched(PATCH):
            self._legacy = LegacyStagedRollout(inp)  # recorded before the state machine
            return
        self._based = inp.machine is not None
        self._mark = workflow.patched(PATCH_HANDLED)  # decided once per run, at its first task
        own = workflow.patched(PATCH_QUEUES)
        tq = workflow.info().task_queue
        self._audit_queue = queues.audit(tq) if own else None  # None: the workflow's own queue
        self._notify_queue = queues.notify(tq) if own else None
        self._monitors_queue = queues.monitors(tq) if own else None
        self._notify_batches = workflow.patched(PATCH_NOTIFY_BATCHES)
        self._one_memo = workflow.patched(PATCH_ONE_MEMO)
        self._memo_task: tuple[Any, int] | None = None  # the workflow task that wrote the memo last
        self._handled_count = 0
        self.s: State | None = inp.machine.model_copy(update={"runs": inp.machine.runs + 1}) if inp.machine else None
        self._inbox: list[tuple[Event, dict[str, Any] | None]] = []  # messages, with an update's reply slot
        self._results: list[Event] = []  # finished activities, in the order they finished
        self._outbox: list[AuditEvent] = list(inp.outbox)
        self._unsent: dict[int, Notification] = dict(enumerate(inp.notifications))
        self._sending: set[int] = set()
        self._note_seq = len(self._unsent)
        self._wake = False
        self._closing: Close | None = None
        self._audit_busy = False
        self._delivering: int | None = None  # seq in flight
        self._delivery: asyncio.Task[None] | None = None
        self._monitor: tuple[WatchSpec, workflow.ActivityHandle[Any]] | None = None
        self._timers: set[Any] = set()  # fire times of timers started (never cancelled)
        self._clock: Any = None  # the newest deadline judged: the machine's time never goes back
        self._sa: tuple[str, str] | None = None
        self._can_after = inp.continue_as_new_after
        self._continuing = False  # continue-as-new decided: work in flight may finish until its grace
        self._can_grace_over = False
        self._stepped_at: Any = None  # workflow time and history length of the last loop step
        self._stepped_len = 0
        if self.s is None:  # a fresh start: decided now, so messages can be judged at once
            info = workflow.info()
            self.s, cmds = machine.start(inp.plan, workflow_id=info.workflow_id,
                                         first_run_id=info.first_execution_run_id, started_by=inp.started_by,
                                         now=workflow.now())
            self._carry(cmds)

    # ------------------------------------------------------------------ the loop

    @workflow.run
    async def run(self, inp: RolloutInput) -> dict[str, Any]:
        if self._legacy is not None:
            return await self._legacy.run(inp)
        if not self._based:
            # a new run of a rollout id continues that id's decisions and audit trail
            base = await workflow.execute_activity("audit_last_seq", workflow.info().workflow_id, result_type=int,
                                                   start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY)
            assert self.s is not None
            self.s = machine.rebase(self.s, base)
            self._outbox = [e.model_copy(update={"seq": e.seq + base}) for e in self._outbox]
            self._based = True
            if self._closing is not None and self._closing.status == "refused":
                await self._flush_audit()
                raise ApplicationError(self._closing.reason, type="StartRefused", non_retryable=True)
        assert self.s is not None
        workflow.upsert_search_attributes([search_attrs.OWNER.value_set(self.s.plan.owners.rollout),
                                           search_attrs.PLAN.value_set(self.s.plan.name)])
        while True:
            self._wake = False
            self._step()
            if self._closing is not None and self._done():
                break
            if self._closing is None and not self._continuing and self._should_continue_as_new():
                self._continuing = True
                asyncio.get_running_loop().create_task(self._can_grace())
                if self._monitor is not None:
                    self._monitor[1].cancel()  # it reports what it evaluated, then ends
            if self._continuing and (self._idle() or self._can_grace_over) and not self._carry_too_big():
                await self._continue_as_new()
            if not self._wake:
                await workflow.wait_condition(lambda: self._wake)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return machine.status(self.s, workflow.now())

    def _step(self) -> None:
        """Take finished activities, then messages, then the time; start what is due."""
        self._note_step()
        self._take()
        assert self.s is not None
        if not self._continuing:  # about to continue as new: nothing new starts
            self._start_delivery()
            self._start_monitor()
            self._start_audit()
            self._start_notifications()
        elif self._carry_too_big():  # but unsent audit rows must fit in the next run's input
            self._start_audit()
        self._arm_timer(machine.next_deadline(self.s))
        stage, status = machine.search_attributes(self.s)
        if self._sa != (stage, status):
            self._sa = (stage, status)
            workflow.upsert_search_attributes([search_attrs.STAGE.value_set(stage),
                                               search_attrs.STATUS.value_set(status)])

    def _note_step(self) -> None:
        """Activations of one workflow task share its time; a new task brings a new time. A
        live step at the previous step's time with a longer history runs in a task without a
        start of its own (see the module doc): fail that task before it issues anything."""
        now, length = _task()
        if not workflow.unsafe.is_replaying() and now == self._stepped_at and length > self._stepped_len:
            raise RuntimeError(TASK_WITHOUT_START)  # a workflow task failure: retried from history
        self._stepped_at, self._stepped_len = now, length

    def _busy(self) -> bool:
        """Whether an Update arriving now must be sent again (validators only): a step already
        ran in this task, so its acceptance would come after that step's commands."""
        return bool(workflow.now() == self._stepped_at)

    def _take(self) -> None:
        """Finished activities first, then messages, each in arrival order, decided in one
        batch (`machine.decide_each`: one copy of the state for a whole flood of signals)."""
        if not self._results and not self._inbox:
            return
        assert self.s is not None
        batch: list[tuple[Event, dict[str, Any] | None]] = [(ev, None) for ev in self._results] + self._inbox
        self._results, self._inbox = [], []
        base = workflow.now()
        timed: list[tuple[Event, Any]] = []
        for ev, _ in batch:
            if isinstance(ev, DeadlineReached) and ev.at is not None:
                self._clock = ev.at if self._clock is None else max(self._clock, ev.at)
            timed.append((ev, self._clock if self._clock is not None and self._clock > base else base))
        self.s, decided = machine.decide_each(self.s, timed)
        for (_, reply), cmds in zip(batch, decided, strict=True):
            self._carry(cmds)
            if reply is not None:
                refused = [c.reason for c in cmds if isinstance(c, Refuse)]
                reply.update({"refused": refused[0]} if refused else {"ok": True})

    def _carry(self, cmds: list[Command]) -> None:
        for c in cmds:
            if isinstance(c, Audit):
                self._outbox.append(c.event)
            elif isinstance(c, Notify):
                self._note_seq += 1
                self._unsent[self._note_seq] = c.notification
            elif isinstance(c, Close):
                self._closing = c
            # ApplyExposure and Watch: the state holds the queue and the watch; _step acts on them
        self._wake = True

    def _done(self) -> bool:
        s = self.s
        assert s is not None
        return not s.changes and not self._outbox and not self._audit_busy and not self._unsent

    def _poke(self) -> None:
        self._wake = True

    def _handled(self) -> None:
        """An event from outside was just handled: its workflow task gets a command (see the
        module doc). Since `one-memo-per-task`, one memo write per task, whatever the number
        of events it brings (a task holding a flood of signals wrote one per signal, doubling
        the history); runs started before write one per event."""
        if not self._mark:
            return
        self._handled_count += 1
        if self._one_memo:
            task = _task()
            if task == self._memo_task:
                return
            self._memo_task = task
        workflow.upsert_memo({"events_handled": self._handled_count})

    # ------------------------------------------------------------------ timers

    def _arm_timer(self, due: Any) -> None:
        """A timer for the next deadline unless one falls due no later (when it fires, the
        deadline is judged at its time and the next timer starts). Whether one starts
        depends only on the state, never on the workflow time."""
        if due is None or any(t <= due for t in self._timers):
            return
        self._timers.add(due)
        asyncio.get_running_loop().create_task(self._sleep(due))

    async def _sleep(self, due: Any) -> None:
        await workflow.sleep(max(0.001, (due - workflow.now()).total_seconds()))
        self._handled()
        self._timers.discard(due)
        self._results.append(DeadlineReached(at=due))  # judged at `due`, whenever handled
        self._poke()

    async def _can_grace(self) -> None:
        await workflow.sleep(CAN_GRACE)
        self._handled()
        self._can_grace_over = True
        self._poke()

    # ------------------------------------------------------------------ the target

    def _start_delivery(self) -> None:
        s = self.s
        assert s is not None
        head = s.changes[0] if s.changes else None
        if self._delivering is not None and (head is None or head.seq != self._delivering):
            if self._delivery is not None:
                self._delivery.cancel()  # superseded: the target never sees it
            self._delivering = self._delivery = None
        if head is None or self._delivering is not None:
            return
        tp = s.target_pending
        if tp is not None and tp.undeliverable and tp.retry_at is not None:
            return  # refused by the target: retried when the machine says
        self._delivering = head.seq
        self._delivery = asyncio.get_running_loop().create_task(self._deliver(head.seq))

    async def _deliver(self, seq: int) -> None:
        s = self.s
        assert s is not None
        change = next(c for c in s.changes if c.seq == seq)
        cancel = (workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED if self._mark
                  else workflow.ActivityCancellationType.TRY_CANCEL)
        try:
            res = await workflow.execute_activity("apply_exposure", change, result_type=TargetResult,
                                                  start_to_close_timeout=timedelta(seconds=60), retry_policy=RETRY,
                                                  cancellation_type=cancel)
            self._handled()
            self._results.append(TargetAcked(seq=seq, detail=res.detail))  # the machine ignores a superseded seq
        except ActivityError as exc:
            self._handled()
            self._results.append(TargetFailed(seq=seq, error=str(exc.cause or exc), permanent=True))
        except asyncio.CancelledError:
            self._handled()
            return
        finally:
            if self._delivering == seq:
                self._delivering = self._delivery = None
        self._poke()

    # ------------------------------------------------------------------ the monitor

    def _start_monitor(self) -> None:
        s = self.s
        assert s is not None
        if self._monitor is not None:
            spec, handle = self._monitor
            if not spec.same_watch(s.watch) and not handle.done():
                handle.cancel()  # it reports what it evaluated, then ends
            return
        if s.watch is not None and s.status not in machine.FINAL:
            spec = s.watch
            handle = workflow.start_activity(
                "watch_thresholds", spec, result_type=Evaluations, task_queue=self._monitors_queue,
                start_to_close_timeout=timedelta(days=400),
                heartbeat_timeout=timedelta(seconds=60), retry_policy=RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            self._monitor = (spec, handle)
            handle.add_done_callback(lambda _: self._monitor_done())

    def _monitor_done(self) -> None:
        self._handled()
        if self._monitor is None:
            return
        _, handle = self._monitor
        self._monitor = None
        try:
            self._results.append(handle.result())
        except (ActivityError, CancelledError, asyncio.CancelledError):
            pass  # evaluations it could not report are missed: they count as no data
        self._poke()

    # ------------------------------------------------------------------ audit and notifications

    def _start_audit(self) -> None:
        if self._audit_busy or not self._outbox:
            return
        batch = self._outbox[:_batch_len(map(_size, self._outbox), AUDIT_BATCH_ROWS, AUDIT_BATCH_BYTES)]
        self._audit_busy = True
        asyncio.get_running_loop().create_task(self._write_audit(batch))

    async def _write_audit(self, batch: list[AuditEvent]) -> None:
        try:
            head = await workflow.execute_activity("record_audit", AuditBatch(events=batch), result_type=AuditHead,
                                                   task_queue=self._audit_queue,
                                                   start_to_close_timeout=timedelta(seconds=60), retry_policy=RETRY)
            self._handled()
            sent = {e.seq for e in batch}
            self._outbox = [e for e in self._outbox if e.seq not in sent]
            self._results.append(AuditAnchored(head=head.model_dump(mode="json")))
        finally:
            self._audit_busy = False
            self._poke()

    async def _flush_audit(self) -> None:
        while self._outbox:
            self._start_audit()
            await workflow.wait_condition(lambda: not self._audit_busy)

    def _start_notifications(self) -> None:
        waiting = sorted(set(self._unsent) - self._sending)
        if not self._notify_batches:  # runs started before `notify-batches`: one activity each
            for key in waiting:
                self._sending.add(key)
                asyncio.get_running_loop().create_task(self._send(key, self._unsent[key]))
            return
        while waiting:
            keys = waiting[:_batch_len((_size(self._unsent[k]) for k in waiting), NOTIFY_BATCH_COUNT,
                                       NOTIFY_BATCH_BYTES)]
            waiting = waiting[len(keys):]
            self._sending.update(keys)
            asyncio.get_running_loop().create_task(self._send_batch(keys))

    async def _send_batch(self, keys: list[int]) -> None:
        notes = [self._unsent[k] for k in keys]
        try:
            res = await workflow.execute_activity("send_notification_batch", NotificationBatch(notifications=notes),
                                                  result_type=NotifyBatchResult, task_queue=self._notify_queue,
                                                  start_to_close_timeout=timedelta(seconds=120),
                                                  retry_policy=RetryPolicy(maximum_attempts=5))
            self._handled()
            for n, r in zip(notes, res.results, strict=False):
                if r.failed:
                    self._results.append(NotifyFailed(event=n.event, failed=r.failed))
        except ActivityError as exc:
            self._handled()
            for n in notes:
                self._results.append(NotifyFailed(event=n.event, failed={"error": str(exc.cause or exc)}))
        finally:
            for k in keys:
                self._unsent.pop(k, None)
                self._sending.discard(k)
            self._poke()

    async def _send(self, key: int, n: Notification) -> None:
        try:
            res = await workflow.execute_activity("send_notifications", n, result_type=NotifyResult,
                                                  start_to_close_timeout=timedelta(seconds=120),
                                                  retry_policy=RetryPolicy(maximum_attempts=5))
            self._handled()
            if res.failed:
                self._results.append(NotifyFailed(event=n.event, failed=res.failed))
        except ActivityError as exc:
            self._handled()
            self._results.append(NotifyFailed(event=n.event, failed={"error": str(exc.cause or exc)}))
        finally:
            self._unsent.pop(key, None)
            self._sending.discard(key)
            self._poke()

    # ------------------------------------------------------------------ continue-as-new

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > self._can_after

    def _carry_too_big(self) -> bool:
        """Whether the unsent audit rows would not fit in a continue-as-new input (a flood of
        refused signals can queue thousands): then audit batches go on before it, the one
        case where continue-as-new waits for them."""
        total = 0
        for ev in self._outbox:
            total += _size(ev)
            if total > CARRY_BYTES:
                return True
        return False

    def _idle(self) -> bool:
        return (self._monitor is None and self._delivering is None and not self._audit_busy
                and not self._sending)

    async def _continue_as_new(self) -> None:
        """Carry the state, unsent audit rows and notifications; what is still in flight
        after CAN_GRACE is abandoned (deliveries and audit rows are idempotent: the next
        run sends them again)."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._take()  # what arrived meanwhile; anything it starts goes with the state
        s = self.s
        assert s is not None
        workflow.continue_as_new(RolloutInput(
            plan=s.plan, started_by=s.started_by, machine=s, outbox=self._outbox,
            notifications=list(self._unsent.values()),
            continue_as_new_after=self._can_after,
        ))

    # ------------------------------------------------------------------ messages

    def _check(self, kind: str, a: ActionInput) -> None:
        if self._legacy is not None:
            getattr(self._legacy, f"_v_{kind}")(a)
            return
        if self.s is None:
            raise ApplicationError("the rollout is starting; try again in a moment", type="Refused",
                                   non_retryable=True)
        if self._busy():
            raise ApplicationError(BUSY_REASON, type="Busy", non_retryable=True)
        ev = event_from_payload(kind, a.model_dump(mode="json", exclude_none=True), "update")
        reason = machine.refusal(self.s, ev, workflow.now())
        if reason is not None:
            raise ApplicationError(reason, type="Refused", non_retryable=True)

    async def _update(self, kind: str, a: ActionInput) -> dict[str, Any]:
        if self._legacy is not None:
            result: dict[str, Any] = getattr(self._legacy, kind)(a)
            return result
        reply: dict[str, Any] = {}
        ev = event_from_payload(kind, a.model_dump(mode="json", exclude_none=True), "update")
        self._inbox.append((ev, reply))
        self._poke()
        await workflow.wait_condition(lambda: bool(reply))
        if "refused" in reply:  # preconditions changed since the validator ran
            raise ApplicationError(reply["refused"], type="Refused", non_retryable=True)
        assert self.s is not None
        stage, status = machine.search_attributes(self.s)
        return {"ok": True, "status": status, "stage": stage}

    def _signal(self, kind: str, raw: RawValue | None) -> None:
        if self._legacy is not None:
            old = workflow.payload_converter().from_payload(raw.payload, dict) if raw is not None else {}
            if kind in ACTIONS:
                getattr(self._legacy, f"{kind}_signal")(ActionInput.model_validate(old))
            elif kind == "report_breach":
                self._legacy.report_breach(BreachReport.model_validate(old))
            return  # report_resolved did not exist before the state machine
        if raw is None:
            data: Any = None
        elif len(raw.payload.data) > MAX_SIGNAL_BYTES:
            data = f"<payload of {len(raw.payload.data)} bytes, over {MAX_SIGNAL_BYTES}>"
        else:
            try:
                data = workflow.payload_converter().from_payload(raw.payload)
            except Exception as exc:  # any undecodable payload is malformed, never dropped
                data = f"<undecodable payload: {str(exc)[:200]}>"
        self._handled()
        self._inbox.append((event_from_payload(kind, data, "signal"), None))
        self._poke()

    @workflow.query
    def status(self) -> dict[str, Any]:
        if self._legacy is not None:
            return self._legacy._status()
        if self.s is None:
            return {"status": "starting"}
        return machine.status(self.s, workflow.now())

    # Updates: the validator asks the machine; the handler queues the message for the loop.
    @workflow.update
    async def approve(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("approve", a)

    @approve.validator
    def _v_approve(self, a: ActionInput) -> None:
        self._check("approve", a)

    @workflow.update
    async def reject(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("reject", a)

    @reject.validator
    def _v_reject(self, a: ActionInput) -> None:
        self._check("reject", a)

    @workflow.update
    async def hold(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("hold", a)

    @hold.validator
    def _v_hold(self, a: ActionInput) -> None:
        self._check("hold", a)

    @workflow.update
    async def resume(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("resume", a)

    @resume.validator
    def _v_resume(self, a: ActionInput) -> None:
        self._check("resume", a)

    @workflow.update
    async def rollback(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("rollback", a)

    @rollback.validator
    def _v_rollback(self, a: ActionInput) -> None:
        self._check("rollback", a)

    @workflow.update
    async def acknowledge(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("acknowledge", a)

    @acknowledge.validator
    def _v_acknowledge(self, a: ActionInput) -> None:
        self._check("acknowledge", a)

    @workflow.update
    async def amend(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("amend", a)

    @amend.validator
    def _v_amend(self, a: ActionInput) -> None:
        self._check("amend", a)

    @workflow.update
    async def abort(self, a: ActionInput) -> dict[str, Any]:
        return await self._update("abort", a)

    @abort.validator
    def _v_abort(self, a: ActionInput) -> None:
        self._check("abort", a)

    # Signals: the same actions for tools that can only signal; payloads decoded here so
    # that one that does not validate is refused and recorded, never dropped.
    @workflow.signal(name="approve")
    def approve_signal(self, raw: RawValue) -> None:
        self._signal("approve", raw)

    @workflow.signal(name="reject")
    def reject_signal(self, raw: RawValue) -> None:
        self._signal("reject", raw)

    @workflow.signal(name="hold")
    def hold_signal(self, raw: RawValue) -> None:
        self._signal("hold", raw)

    @workflow.signal(name="resume")
    def resume_signal(self, raw: RawValue) -> None:
        self._signal("resume", raw)

    @workflow.signal(name="rollback")
    def rollback_signal(self, raw: RawValue) -> None:
        self._signal("rollback", raw)

    @workflow.signal(name="acknowledge")
    def acknowledge_signal(self, raw: RawValue) -> None:
        self._signal("acknowledge", raw)

    @workflow.signal(name="amend")
    def amend_signal(self, raw: RawValue) -> None:
        self._signal("amend", raw)

    @workflow.signal(name="abort")
    def abort_signal(self, raw: RawValue) -> None:
        self._signal("abort", raw)

    @workflow.signal
    def report_breach(self, raw: RawValue) -> None:
        self._signal("report_breach", raw)

    @workflow.signal
    def report_resolved(self, raw: RawValue) -> None:
        self._signal("report_resolved", raw)
