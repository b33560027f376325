"""The `record_audit` activity: writes the workflow's decisions into the audit store.

Idempotent on (rollout_id, seq): a retry after a partial or complete write adds
only the rows still missing, so activity retries and worker restarts never
duplicate or drop rows.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit_store import AuditConflictError, AuditGapError, AuditStore, AuditStoreError
from rollout.models import AuditBatch


class AuditActivities:
    def __init__(self, store: AuditStore) -> None:
        self.store = store

    @activity.defn(name="record_audit")
    async def record_audit(self, batch: AuditBatch) -> int:
        """Append the batch; return the number of rows newly written.

        A conflicting row (same seq, other content) or a missing earlier row fails the
        attempt with a retryable ApplicationError (type AuditConflict / AuditGap): the
        workflow waits, visibly, until the store is repaired (`rollout audit rebuild`).
        """
        try:
            return await self.store.append(batch.events)
        except AuditConflictError as exc:
            raise ApplicationError(str(exc), type="AuditConflict") from exc
        except AuditGapError as exc:
            raise ApplicationError(str(exc), type="AuditGap") from exc
        except AuditStoreError as exc:
            raise ApplicationError(str(exc), type="AuditStoreError") from exc

    @activity.defn(name="audit_last_seq")
    async def audit_last_seq(self, rollout_id: str) -> int:
        """Where a new run of a rollout id continues its trail (one hash chain per rollout id)."""
        try:
            return await self.store.last_seq(rollout_id)
        except AuditStoreError as exc:
            raise ApplicationError(str(exc), type="AuditStoreError") from exc
