"""The decision trail as Temporal history holds it, and rebuilding the store from it.

The workflow records every decision by scheduling the `record_audit` activity with an
`AuditBatch`; the trail in history is therefore the inputs of the scheduled
`record_audit` activities, across the runs of a continue-as-new chain. Each completed
`record_audit` returns the chain's head after its batch (`AuditHead`): the newest
one is the head the workflow holds, which anchors the store (`anchor_from_history`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from activities.audit_store import (
    Anchor,
    AuditStore,
    ReconcileReport,
    content_hash,
    event_diff,
    normalize_event,
)
from rollout.models import AuditBatch, AuditEvent, AuditHead

ACTIVITY_NAME = "record_audit"
MAX_RUNS = 100_000  # a continue-as-new chain longer than this is followed no further


@dataclass
class HistoryTrail:
    workflow_id: str
    events: list[AuditEvent] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # oldest first
    complete: bool = True  # False when older runs of the chain are no longer in Temporal
    conflicts: list[str] = field(default_factory=list)  # the same seq scheduled with other content
    head: AuditHead | None = None  # the newest head a completed record_audit returned
    seq_runs: dict[int, str] = field(default_factory=dict)  # seq -> the run that recorded it

    def anchor(self) -> Anchor:
        """What verify checks the store against."""
        return Anchor(
            head=self.head,
            events={e.seq: content_hash(normalize_event(e)) for e in self.events if e.rollout_id == self.workflow_id},
            seq_runs=dict(self.seq_runs),
            complete=self.complete,
        )


@dataclass
class _Run:
    batches: list[AuditBatch]
    run_id: str
    previous: str
    head: AuditHead | None


async def _batches_of_run(client: Client, workflow_id: str, run_id: str | None) -> _Run:
    """Batches in history order, this run's id, the previous run's id (or ""), and the
    head the last completed record_audit of this run returned."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    history = await handle.fetch_history()
    batches: list[AuditBatch] = []
    previous = ""
    this_run = run_id or ""
    codec = client.data_converter.payload_codec
    scheduled: set[int] = set()
    head: AuditHead | None = None
    ev: HistoryEvent
    for ev in history.events:
        if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = ev.workflow_execution_started_event_attributes
            previous = attrs.continued_execution_run_id
            if not this_run:
                this_run = attrs.original_execution_run_id
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            sched = ev.activity_task_scheduled_event_attributes
            if sched.activity_type.name != ACTIVITY_NAME:
                continue
            payloads = list(sched.input.payloads)
            if codec is not None:
                payloads = await codec.decode(payloads)
            (batch,) = pydantic_data_converter.payload_converter.from_payloads(payloads, [AuditBatch])
            batches.append(batch)
            scheduled.add(ev.event_id)
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = ev.activity_task_completed_event_attributes
            if done.scheduled_event_id not in scheduled or not done.result.payloads:
                continue
            payloads = list(done.result.payloads)
            if codec is not None:
                payloads = await codec.decode(payloads)
            (value,) = pydantic_data_converter.payload_converter.from_payloads(payloads, None)
            if isinstance(value, dict) and {"seq", "hash"} <= value.keys():  # older workers returned a count
                head = AuditHead.model_validate(value)
    return _Run(batches, this_run, previous, head)


async def read_history_trail(client: Client, workflow_id: str) -> HistoryTrail | None:
    """The trail of the newest continue-as-new chain of `workflow_id`; None when Temporal
    does not know the workflow."""
    trail = HistoryTrail(workflow_id)
    runs: list[_Run] = []
    run_id: str | None = None
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
        run_id = desc.run_id
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    seen: set[str] = set()
    while run_id and run_id not in seen and len(seen) < MAX_RUNS:
        seen.add(run_id)
        try:
            run = await _batches_of_run(client, workflow_id, run_id)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND and runs:
                trail.complete = False  # older runs are past retention
                break
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        runs.append(run)
        trail.run_ids.append(run.run_id)
        if trail.head is None:
            trail.head = run.head  # newest run first
        run_id = run.previous or None
    runs.reverse()
    trail.run_ids.reverse()
    by_seq: dict[tuple[str, int], AuditEvent] = {}
    for run in runs:
        for batch in run.batches:
            for ev in batch.events:
                key = (ev.rollout_id, ev.seq)
                if ev.rollout_id == workflow_id:
                    trail.seq_runs.setdefault(ev.seq, run.run_id)
                have = by_seq.get(key)
                if have is None:
                    by_seq[key] = ev
                elif content_hash(normalize_event(have)) != content_hash(normalize_event(ev)):
                    trail.conflicts.append(
                        f"seq {ev.seq} scheduled twice with different {', '.join(event_diff(have, ev))}"
                    )
    trail.events = sorted(by_seq.values(), key=lambda e: (e.rollout_id, e.seq))
    return trail


async def trail_from_history(client: Client, workflow_id: str) -> list[AuditEvent] | None:
    """The audit events recorded in Temporal history (seq order), None if the workflow is unknown."""
    trail = await read_history_trail(client, workflow_id)
    return None if trail is None else trail.events


async def rebuild_from_history(client: Client, store: AuditStore, workflow_id: str) -> ReconcileReport | None:
    """Write rows missing from the store from Temporal history and report disagreements.

    None when Temporal no longer knows the workflow (nothing to rebuild from).
    """
    trail = await read_history_trail(client, workflow_id)
    if trail is None:
        return None
    report = await store.reconcile(workflow_id, trail.events)
    report.disagreements[:0] = [f"history: {c}" for c in trail.conflicts]
    return report


async def anchor_from_history(client: Client, workflow_id: str) -> Anchor | None:
    """The workflow's head and recorded events, None when Temporal no longer knows it."""
    trail = await read_history_trail(client, workflow_id)
    return None if trail is None else trail.anchor()
