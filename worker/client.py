"""Client-side operations on rollouts: start, act, read. Used by the CLI, the demo and tests.

Every Temporal failure is translated into the project's error hierarchy here, so
callers see `RefusedError` (exit 1), `NotFoundError` (exit 1), `ConnectionFailed` (exit 3).
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from rollout.errors import ConnectionFailed, NotFoundError, RefusedError
from rollout.plan import Plan, workflow_id_for
from worker.connect import WORKFLOW_TYPE, task_queue
from workflows import search_attrs

ACTIONS = ("approve", "reject", "hold", "resume", "rollback", "acknowledge", "amend", "abort")


def _rpc_error(exc: RPCError, wid: str) -> Exception:
    if exc.status == RPCStatusCode.NOT_FOUND:
        if "completed" in exc.message or "closed" in exc.message:
            return RefusedError(f"rollout {wid} is closed; start a new run to act on it")
        return NotFoundError(f"no rollout {wid}")
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return ConnectionFailed(f"cannot reach Temporal: {exc.message}")
    return RefusedError(f"Temporal refused the request: {exc.message}")


async def resolve(client: Client, ident: str) -> WorkflowHandle[Any, Any]:
    """A handle for a rollout named by workflow id or plan name."""
    candidates = [ident] if ident.startswith("rollout-") else [ident, workflow_id_for(ident)]
    last: Exception | None = None
    for wid in candidates:
        handle = client.get_workflow_handle(wid)
        try:
            await handle.describe()
            return handle
        except RPCError as exc:
            last = _rpc_error(exc, wid)
            if not isinstance(last, NotFoundError):
                raise last from None
    raise NotFoundError(f"no rollout {ident} (tried {', '.join(candidates)})")


async def start(
    client: Client, plan: Plan, *, workflow_id: str | None = None, started_by: str | None = None
) -> WorkflowHandle[Any, Any]:
    """Start a run; `started_by` (the starting identity) goes in the input: the workflow
    refuses a start whose started_by is not the plan's rollout owner."""
    from workflows.messages import RolloutInput

    wid = workflow_id or workflow_id_for(plan.name)
    # model_validate: the input's started_by field (RolloutInput.started_by) is the contract
    inp = RolloutInput.model_validate({"plan": plan, "started_by": started_by})
    try:
        return await client.start_workflow(
            WORKFLOW_TYPE,
            inp,
            id=wid,
            task_queue=task_queue(),
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search_attrs.STAGE, plan.stages[0].name),
                    SearchAttributePair(search_attrs.STATUS, "awaiting_approval"),
                    SearchAttributePair(search_attrs.OWNER, plan.owners.rollout),
                    SearchAttributePair(search_attrs.PLAN, plan.name),
                ]
            ),
            static_summary=f"Staged rollout of {plan.name}",
        )
    except WorkflowAlreadyStartedError:
        raise RefusedError(
            f"rollout {wid} already has an open run; finish or abort it first (rollout abort {wid} --reason ...)"
        ) from None
    except RPCError as exc:
        raise _rpc_error(exc, wid) from None


BUSY_RETRIES = 20  # a Busy refusal lasts one workflow task: sent again at once, it lands in the next


async def act(client: Client, ident: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run a human action as an Update; a refusal raises RefusedError with the workflow's reason.

    A `Busy` refusal (the workflow was being rebuilt on another worker, docs/workflow.md)
    is not the user's business: the action is sent again, a few times, after a short pause."""
    handle = await resolve(client, ident)
    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise RefusedError(f"rollout {handle.id} is closed ({desc.status.name.lower() if desc.status else 'closed'})")
    for attempt in range(BUSY_RETRIES + 1):
        try:
            result: dict[str, Any] = await handle.execute_update(action, payload, result_type=dict)
            return result
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError):
                if cause.type == "Busy" and attempt < BUSY_RETRIES:
                    await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
                    continue
                raise RefusedError(cause.message) from None
            raise RefusedError(str(cause or exc)) from None
        except RPCError as exc:
            raise _rpc_error(exc, handle.id) from None
    raise AssertionError("unreachable")  # the loop returns or raises


async def status(client: Client, ident: str) -> dict[str, Any]:
    handle = await resolve(client, ident)
    desc = await handle.describe()
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        # a finished rollout returns its final status: readable without a worker
        final: dict[str, Any] = await client.get_workflow_handle(handle.id, result_type=dict).result()
        return final
    try:
        result: dict[str, Any] = await handle.query("status", result_type=dict)
        return result
    except WorkflowQueryFailedError as exc:
        raise RefusedError(f"status of {handle.id} unavailable: {exc}") from None
    except RPCError as exc:
        raise _rpc_error(exc, handle.id) from None


async def list_rollouts(client: Client, *, stage: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    clauses = [f"WorkflowType = '{WORKFLOW_TYPE}'"]
    if stage:
        clauses.append(f"RolloutStage = '{_quote(stage)}'")
    if status:
        clauses.append(f"RolloutStatus = '{_quote(status)}'")
    out: list[dict[str, Any]] = []
    try:
        async for wf in client.list_workflows(" AND ".join(clauses), limit=1000):
            sa = wf.typed_search_attributes
            out.append(
                {
                    "workflow_id": wf.id,
                    "run_id": wf.run_id,
                    "plan": sa.get(search_attrs.PLAN),
                    "stage": sa.get(search_attrs.STAGE),
                    "status": sa.get(search_attrs.STATUS),
                    "owner": sa.get(search_attrs.OWNER),
                    "execution": wf.status.name.lower() if wf.status else None,
                    "started_at": wf.start_time.isoformat() if wf.start_time else None,
                }
            )
    except RPCError as exc:
        raise _rpc_error(exc, "list") from None
    return out


def _quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace("'", "\\'")
