"""The task queues of a rollout (a contract with workers and operators).

A rollout's workflow tasks and its target deliveries (`apply_exposure`) run on the task
queue it was started on (`ROLLOUT_TASK_QUEUE`, default `rollouts`): a delivery is
scheduled on the workflow's own queue, so the worker that decided a containment can start
it at once, in the reply to its workflow task (Temporal's eager activity dispatch), without
a trip through matching. Since the `own-queues` patch, everything else a rollout runs goes
to queues of their own beside it, named after it:

- `<queue>-audit`: audit batches (`record_audit`). Under a burst they queue for their own
  slots, never for the ones deliveries need (a 1,000-rollout storm once made containments
  wait 105 s for a slot they shared).
- `<queue>-notify`: notifications (`send_notification_batch`), escalation pages included:
  a page never waits behind audit batches (in a 1,000-rollout storm, notifications that
  shared a queue with audit batches waited 41 s for a slot).
- `<queue>-monitors`: `watch_thresholds`, one long-running activity per monitored soaking
  rollout, holding its slot for the whole window.

`rollout worker` polls all four (worker/main.py). Rollouts started before the patch
schedule everything on their own queue, which keeps serving every activity.
"""

from __future__ import annotations

AUDIT_SUFFIX = "-audit"
NOTIFY_SUFFIX = "-notify"
MONITORS_SUFFIX = "-monitors"


def audit(queue: str) -> str:
    """The queue audit batches of rollouts on `queue` run on."""
    return queue + AUDIT_SUFFIX


def notify(queue: str) -> str:
    """The queue notifications of rollouts on `queue` run on."""
    return queue + NOTIFY_SUFFIX


def monitors(queue: str) -> str:
    """The queue threshold monitors of rollouts on `queue` run on."""
    return queue + MONITORS_SUFFIX
