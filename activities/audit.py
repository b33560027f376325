"""The `record_audit` activity: writes the workflow's decisions into the audit store and
returns the chain's head after them, signed by the worker's key.

Idempotent on (rollout_id, seq): a retry after a partial or complete write adds
only the rows still missing, so activity retries and worker restarts never
duplicate or drop rows. The head (seq and row_hash of the batch's last row) is
stored once in `audit_heads`; a retry returns the head stored the first time.

Signing: `ROLLOUT_AUDIT_KEY` names an Ed25519 private key file (`rollout keygen
--out FILE`); without it heads are kept unsigned and the worker still runs. A key
file that is named but unreadable stops the worker at start: a misconfigured key
must not silently leave the trail unanchored.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit_store import (
    GENESIS_HASH,
    AuditConflictError,
    AuditGapError,
    AuditStore,
    AuditStoreError,
    HeadSigner,
)
from rollout.models import AuditBatch, AuditHead


class AuditActivities:
    def __init__(self, store: AuditStore, signer: HeadSigner | None = None, *, from_env: bool = True) -> None:
        self.store = store
        self.signer = signer if signer is not None or not from_env else HeadSigner.from_env()

    @activity.defn(name="record_audit")
    async def record_audit(self, batch: AuditBatch) -> AuditHead:
        """Append the batch; return the head of its rollout's chain after it.

        A conflicting row (same seq, other content) or a missing earlier row fails the
        attempt with a retryable ApplicationError (type AuditConflict / AuditGap): the
        workflow waits, visibly, until the store is repaired (`rollout audit rebuild`).
        An empty batch returns the genesis head (seq 0).
        """
        if not batch.events:
            return AuditHead(seq=0, hash=GENESIS_HASH)
        last = max(batch.events, key=lambda e: e.seq)
        try:
            await self.store.append(batch.events)
            return await self.store.record_head(
                last.rollout_id, last.seq, self.signer, run_id=activity.info().workflow_run_id
            )
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
