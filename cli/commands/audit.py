"""`rollout audit`: the decision trail for auditors.

    rollout audit ID [--format md|json] [--source auto|temporal|store]
    rollout audit export [--since T]        JSON lines for a SIEM (T: ISO time or 24h, 7d...)
    rollout audit verify [ID]               check hash chains; exit 1 naming the first broken row
    rollout audit rebuild ID                restore missing rows from Temporal history, compare both

`export`, `verify` and `rebuild` in the first position are subcommands; anything
else there is a rollout: a plan name or a workflow id (`rollout-<name>`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rollout.durations import parse_duration
from rollout.errors import ConnectionFailed, NotFoundError, UsageError
from rollout.models import AuditEvent
from rollout.plan import workflow_id_for

if TYPE_CHECKING:
    from activities.audit_store import AuditStore

SUBCOMMANDS = ("export", "verify", "rebuild")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "audit",
        help="decision trail: report, export, verify, rebuild",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="ID|export|verify|rebuild", help="a rollout, or a subcommand")
    p.add_argument("rest", nargs="*", default=[], metavar="ID", help="the rollout of verify/rebuild")
    p.add_argument("--format", choices=("md", "json"), default=None, help="report format (default md)")
    p.add_argument("--json", action="store_true", help="machine-readable output (same as --format json)")
    p.add_argument(
        "--source",
        choices=("auto", "temporal", "store"),
        default="auto",
        help="where the trail comes from: Temporal history while it has it, else the store (auto)",
    )
    p.add_argument("--since", metavar="T", help="export: rows at or after T (ISO time, or a duration like 24h)")
    p.add_argument("--db", metavar="URL", help="audit store URL (default: $ROLLOUT_DB_URL, else a SQLite file in $ROLLOUT_STATE_DIR)")
    p.set_defaults(handler=run)


def resolve_id(name: str) -> str:
    if not name:
        raise UsageError("a rollout id or plan name is required")
    return name if name.startswith("rollout-") else workflow_id_for(name)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO time (UTC when no offset is given) or a duration meaning `now - duration`."""
    now = now or datetime.now(UTC)
    t = text.strip()
    try:
        return now - parse_duration(t)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(t.replace("Z", "+00:00") if t.endswith("Z") else t)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: write an ISO time (2025-01-31T12:00:00Z) or a duration (24h, 7d)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _open_store(args: argparse.Namespace) -> AuditStore:
    from activities.audit_store import AuditStore

    try:
        return AuditStore.from_url(args.db) if args.db else AuditStore.from_env()
    except Exception as exc:  # bad URL, missing driver
        raise UsageError(f"audit store: {exc}") from None


def _store_failed(store: AuditStore, exc: Exception) -> ConnectionFailed:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConnectionFailed(f"cannot use the audit store at {store.url}: {first}")


async def run(args: argparse.Namespace) -> int:
    fmt = "json" if args.json else (args.format or "md")
    if args.target in SUBCOMMANDS:
        if args.format is not None:
            raise UsageError(f"--format applies to `rollout audit ID`, not to `audit {args.target}`")
        if args.source != "auto":
            raise UsageError(f"--source applies to `rollout audit ID`, not to `audit {args.target}`")
    if args.since is not None and args.target != "export":
        raise UsageError("--since applies to `rollout audit export` only")
    if args.target == "export":
        if args.rest:
            raise UsageError("`rollout audit export` takes no rollout id; use --since T")
        return await _export(args)
    if args.target == "verify":
        if len(args.rest) > 1:
            raise UsageError("`rollout audit verify` takes at most one rollout id")
        return await _verify(args, resolve_id(args.rest[0]) if args.rest else None)
    if args.target == "rebuild":
        if len(args.rest) != 1:
            raise UsageError("usage: rollout audit rebuild ID")
        return await _rebuild(args, resolve_id(args.rest[0]))
    if args.rest:
        raise UsageError(f"unexpected arguments {args.rest}; usage: rollout audit ID [--format md|json]")
    return await _report(args, resolve_id(args.target), fmt)


async def _export(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    store = _open_store(args)
    out = sys.stdout
    try:
        try:
            async for row in store.export(since):
                out.write(json.dumps(row.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
        except BrokenPipeError:
            return 0
        except Exception as exc:
            raise _store_failed(store, exc) from None
        out.flush()
    finally:
        await store.close()
    return 0


async def _verify(args: argparse.Namespace, rollout_id: str | None) -> int:
    store = _open_store(args)
    try:
        try:
            report = await store.verify(rollout_id)
        except Exception as exc:
            raise _store_failed(store, exc) from None
    finally:
        await store.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        if not report.chains or (rollout_id is not None and report.chains[0].rows == 0):
            print(f"no audit rows{f' for {rollout_id}' if rollout_id else ''} in {store.url}")
        for c in report.chains:
            if c.ok:
                print(f"ok      {c.rollout_id}: {c.rows} rows, seq 1..{c.last_seq}, head {c.head_hash[:16]}")
            else:
                assert c.broken is not None
                print(f"BROKEN  {c.rollout_id}: first broken row: {c.broken.describe()}")
    if not report.ok:
        first = report.first_broken
        assert first is not None
        print(f"rollout: audit chain broken: {first.describe()}", file=sys.stderr)
        return 1
    return 0


async def _rebuild(args: argparse.Namespace, rollout_id: str) -> int:
    from activities.history_trail import rebuild_from_history
    from worker.connect import connect

    client = await connect()
    store = _open_store(args)
    try:
        try:
            report = await rebuild_from_history(client, store, rollout_id)
        except ConnectionFailed:
            raise
        except Exception as exc:
            raise _store_failed(store, exc) from None
    finally:
        await store.close()
    if report is None:
        raise NotFoundError(f"{rollout_id} is not in Temporal (any more); nothing to rebuild from")
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(
            f"{rollout_id}: {report.history_events} decisions in history, {report.written} rows written, "
            f"{report.agreeing} already stored and agreeing"
        )
        for d in report.disagreements:
            print(f"  DISAGREES {d}")
    if not report.ok:
        print(f"rollout: store and history disagree for {rollout_id} ({len(report.disagreements)})", file=sys.stderr)
        return 1
    return 0


async def _from_temporal(rollout_id: str, required: bool) -> tuple[list[AuditEvent], bool] | None:
    """(events, complete) from Temporal history; None when unknown or (auto) unreachable."""
    from activities.history_trail import read_history_trail
    from worker.connect import connect

    try:
        client = await connect()
    except ConnectionFailed as exc:
        if required:
            raise
        print(f"rollout: {exc.message}; reading the audit store instead", file=sys.stderr)
        return None
    trail = await read_history_trail(client, rollout_id)
    if trail is None:
        return None
    return trail.events, trail.complete


async def _from_store(args: argparse.Namespace, rollout_id: str) -> list[AuditEvent]:
    store = _open_store(args)
    try:
        return await store.events(rollout_id)
    except Exception as exc:
        raise _store_failed(store, exc) from None
    finally:
        await store.close()


async def _report(args: argparse.Namespace, rollout_id: str, fmt: str) -> int:
    from rollout.audit_report import render_json, render_markdown

    source = args.source
    events: list[AuditEvent] = []
    complete = True
    used = "store"
    if source in ("auto", "temporal"):
        got = await _from_temporal(rollout_id, required=source == "temporal")
        if got is not None:
            events, complete = got
            used = "temporal"
            if not complete or (events and events[0].seq > 1):
                # older runs are past retention: take the earlier decisions from the store
                first = events[0].seq if events else 1 << 62
                older = [e for e in await _from_store(args, rollout_id) if e.seq < first]
                events = older + events
        elif source == "temporal":
            raise NotFoundError(f"{rollout_id} is not in Temporal (any more); try --source store")
    if used == "store":
        events = await _from_store(args, rollout_id)
        if not events:
            raise NotFoundError(f"no audit trail for {rollout_id} in Temporal or in the audit store")
    if fmt == "json":
        json.dump(render_json(events, rollout_id, used, complete), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_markdown(events, rollout_id, used, complete))
    return 0
