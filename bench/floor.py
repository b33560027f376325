"""The floor for breach latency: a bare workflow that, on each signal, runs one activity
making the same HTTP call as a containment (the `apply_exposure` activity, webhook target,
signed): what any Temporal-based controller pays between a signal and a request at a target.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from rollout.models import TargetChange, TargetResult


@workflow.defn(name="BenchFloor")
class BenchFloor:
    def __init__(self) -> None:
        self._queue: list[TargetChange] = []
        self._stop = False

    @workflow.run
    async def run(self) -> int:
        done = 0
        while True:
            await workflow.wait_condition(lambda: bool(self._queue) or self._stop)
            if self._stop and not self._queue:
                return done
            change = self._queue.pop(0)
            await workflow.execute_activity("apply_exposure", change, result_type=TargetResult,
                                            start_to_close_timeout=timedelta(seconds=60),
                                            retry_policy=RetryPolicy(maximum_attempts=3))
            done += 1

    @workflow.signal
    def breach(self, change: TargetChange) -> None:
        self._queue.append(change)

    @workflow.signal
    def stop(self) -> None:
        self._stop = True

    @workflow.query
    def pending(self) -> int:
        return len(self._queue)


def floor_change(rollout_id: str, seq: int, target_url: str, secret_env: str) -> TargetChange:
    """A hold as the rollout's containment would be sent (same body shape, signed)."""
    return TargetChange(
        rollout_id=rollout_id, plan_name=rollout_id, seq=seq, idempotency_key=f"{rollout_id}:{seq}",
        kind="hold", stage="pilot", percent=5, segments=["internal"],
        authority={"read": "auto", "draft": "auto", "send_customer_message": "review", "refund": "forbid"},
        frozen=True, plan_hash="0" * 64, reason="breach: error_rate (bench floor)", decided_at=datetime.now(UTC),
        target={"kind": "webhook", "url": f"{target_url}/exposure", "secret_env": secret_env},
    )


@contextlib.asynccontextmanager
async def floor_worker(client: Client) -> AsyncIterator[str]:
    """A worker for BenchFloor and `apply_exposure` in this process, on a queue of its own."""
    from activities.targets import apply_exposure

    queue = f"bench-floor-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[BenchFloor], activities=[apply_exposure],
                      workflow_runner=UnsandboxedWorkflowRunner(), max_concurrent_activities=200):
        yield queue
