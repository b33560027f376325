"""Reading workflow histories in tests: task failures, patch markers, workflow tasks and their commands."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory

E = EventType
# events a workflow task's completion writes: its commands and its protocol messages (updates)
COMMAND_EVENTS = frozenset({
    E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED,
    E.EVENT_TYPE_TIMER_STARTED,
    E.EVENT_TYPE_TIMER_CANCELED,
    E.EVENT_TYPE_MARKER_RECORDED,
    E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    E.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
    E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    E.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
})


def name(ev: HistoryEvent) -> str:
    return E.Name(ev.event_type).removeprefix("EVENT_TYPE_")


def failures(events: Iterable[HistoryEvent]) -> list[str]:
    """Every WorkflowTaskFailed, with its event id and message."""
    return [f"{e.event_id}: {e.workflow_task_failed_event_attributes.failure.message[:300]}"
            for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_FAILED]


def patch_ids(events: Iterable[HistoryEvent]) -> list[str]:
    """The ids of the patch markers (`workflow.patched`) recorded."""
    ids: list[str] = []
    for e in events:
        if e.event_type != E.EVENT_TYPE_MARKER_RECORDED:
            continue
        attrs = e.marker_recorded_event_attributes
        if attrs.marker_name != "core_patch":
            continue
        for p in attrs.details["patch-data"].payloads:
            ids.append(str(json.loads(p.data)["id"]))
    return ids


@dataclass(frozen=True)
class Task:
    """One completed workflow task: what arrived since the previous one, and what it wrote."""

    completed_id: int
    inputs: list[str]  # events between the previous task's writes and this task's start
    writes: list[str]  # commands and update messages written on completion


def tasks(events: list[HistoryEvent]) -> list[Task]:
    out: list[Task] = []
    inputs: list[str] = []
    i = 0
    while i < len(events):
        e = events[i]
        if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            writes: list[str] = []
            j = i + 1
            while j < len(events) and events[j].event_type in COMMAND_EVENTS:
                writes.append(name(events[j]))
                j += 1
            out.append(Task(e.event_id, inputs, writes))
            inputs = []
            i = j
            continue
        if e.event_type not in (E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, E.EVENT_TYPE_WORKFLOW_TASK_STARTED):
            inputs.append(name(e))
        i += 1
    return out


# events from outside that wake workflow code (what SDK core's chunking calls time-sensitive inputs)
WAKING = frozenset({
    "ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT", "ACTIVITY_TASK_CANCELED",
    "TIMER_FIRED", "WORKFLOW_EXECUTION_SIGNALED",
})


def silent_tasks(events: list[HistoryEvent]) -> list[Task]:
    """Workflow tasks woken by an event from outside that completed without writing anything:
    SDK core 1.35's v1 chunking folds such a task into the next one on replay, and not always
    live (sdk-rust #1146), so the shell must never leave one."""
    return [t for t in tasks(events) if not t.writes and WAKING & set(t.inputs)]


def outline(events: Iterable[HistoryEvent]) -> str:
    return " | ".join(f"{e.event_id}:{name(e)}" for e in events)


async def all_runs(client: Client, workflow_id: str, first_run_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow, from its first along the continue-as-new chain."""
    out: list[WorkflowHistory] = []
    run_id = first_run_id
    while run_id:
        hist = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        out.append(hist)
        last = hist.events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.HasField("workflow_execution_continued_as_new_event_attributes") else "")
    return out
