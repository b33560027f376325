"""The task queues of a rollout (a contract with workers and operators).

A rollout's workflow tasks, audit batches and notifications run on the task queue it was
started on (`ROLLOUT_TASK_QUEUE`, default `rollouts`). Since the `own-queues` patch, two
kinds of activity run on queues of their own beside it, named after it:

- `<queue>-deliveries`: `apply_exposure`, the target deliveries. A containment never waits
  for an activity slot behind audit batches and notifications (bench/README.md: under a
  1,000-rollout storm it waited 105 s for one).
- `<queue>-monitors`: `watch_thresholds`, one long-running activity per monitored soaking
  rollout. Monitors hold their slot for the whole window; on their own queue they no
  longer take the slots deliveries and audit batches need.

`rollout worker` polls all three (worker/main.py). Rollouts started before the patch
schedule everything on their own queue, which keeps every activity too.
"""

from __future__ import annotations

DELIVERIES_SUFFIX = "-deliveries"
MONITORS_SUFFIX = "-monitors"


def deliveries(queue: str) -> str:
    """The queue target deliveries of rollouts on `queue` run on."""
    return queue + DELIVERIES_SUFFIX


def monitors(queue: str) -> str:
    """The queue threshold monitors of rollouts on `queue` run on."""
    return queue + MONITORS_SUFFIX
