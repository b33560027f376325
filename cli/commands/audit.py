"""`rollout audit`: the decision trail for auditors.

    rollout audit ID [--format md|json] [--source auto|temporal|store]
    rollout audit export [--since T]        JSON lines (rows, then signed heads) for a SIEM or
                                            write-once storage (T: ISO time or 24h, 7d...)
    rollout audit verify [ID] [--public-key FILE]
                                            check rows, hash chains, signed heads and, while
                                            Temporal keeps the history, the head the workflow
                                            holds; exit 1 naming the first bad or missing seq
    rollout audit verify --file F [--public-key FILE]
                                            check an export offline
    rollout audit rebuild ID                restore missing rows from Temporal history, compare both

The public key that checks head signatures: --public-key FILE, else
$ROLLOUT_AUDIT_PUBLIC_KEY (a file, or the base64 key `rollout keygen` printed).
Without one, verify says what it could not check and passes on the rest.

`export`, `verify` and `rebuild` in the first position are subcommands; anything
else there is a rollout: a plan name or a workflow id (`rollout-<name>`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rollout.durations import parse_duration
from rollout.errors import ConnectionFailed, NotFoundError, UsageError
from rollout.models import AuditEvent
from rollout.plan import workflow_id_for

if TYPE_CHECKING:
    from activities.audit_store import Anchor, AuditStore, HeadKey, VerifyReport

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
    p.add_argument("--public-key", metavar="FILE", help="verify: the audit key's public half (default: $ROLLOUT_AUDIT_PUBLIC_KEY)")
    p.add_argument("--file", metavar="F", help="verify: check this export (JSON Lines) offline instead of the store")
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
    if args.target != "verify" and (args.public_key or args.file):
        raise UsageError("--public-key and --file apply to `rollout audit verify` only")
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
            first: dict[str, int] = {}
            header = {
                "record": "export",
                "format": "rollout-audit-export:v1",
                "since": since.isoformat() if since else None,
                "exported_at": datetime.now(UTC).isoformat(),
            }
            out.write(json.dumps(header, sort_keys=True) + "\n")
            async for row in store.export(since):
                ev = row.event
                first[ev.rollout_id] = min(first.get(ev.rollout_id, ev.seq), ev.seq)
                out.write(json.dumps({"record": "row", **row.to_json()}, sort_keys=True, ensure_ascii=False) + "\n")
            for head in await store.heads():
                if since is None or head.head.seq >= first.get(head.rollout_id, 1 << 62):
                    out.write(json.dumps(head.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
        except BrokenPipeError:
            return 0
        except Exception as exc:
            raise _store_failed(store, exc) from None
        out.flush()
    finally:
        await store.close()
    return 0


def _head_key(args: argparse.Namespace) -> HeadKey | None:
    from activities.audit_store import AuditKeyError, HeadKey

    try:
        return HeadKey.from_value(args.public_key) if args.public_key else HeadKey.from_env()
    except AuditKeyError as exc:
        raise UsageError(f"audit public key: {exc}") from None


async def _anchors(store: AuditStore, rollout_id: str | None) -> tuple[dict[str, Anchor], dict[str, str]]:
    """The workflow's head and recorded events from Temporal history, per rollout, and
    why a rollout has none (cannot reach Temporal, history past retention)."""
    from activities.history_trail import anchor_from_history
    from worker.connect import connect

    ids = [rollout_id] if rollout_id else await store.rollout_ids()
    missing: dict[str, str] = {}
    anchors: dict[str, Anchor] = {}
    if not ids:
        return anchors, missing
    try:
        client = await connect()
    except ConnectionFailed as exc:
        return anchors, {rid: f"cannot reach Temporal ({exc.message.split('. ')[0]})" for rid in ids}
    for rid in ids:
        anchor = await anchor_from_history(client, rid)
        if anchor is None:
            missing[rid] = "Temporal no longer has its history (closed and past retention, or never started)"
        else:
            anchors[rid] = anchor
    return anchors, missing


def _print_verify(report: VerifyReport, key: HeadKey | None, where: str, as_json: bool) -> int:
    if as_json:
        data = report.to_json()
        data["public_key_id"] = key.key_id if key else None
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        if not report.chains or all(c.rows == 0 and c.ok for c in report.chains):
            print(f"no audit rows in {where}")
        for c in report.chains:
            span = f"seq {c.first_seq}..{c.last_seq}" if c.rows else "no rows"
            heads = f"{c.heads} heads ({c.signed_heads} signed)"
            if c.ok:
                print(f"ok      {c.rollout_id}: {c.rows} rows, {span}, {heads}, head {c.head_hash[:16]}")
            else:
                assert c.broken is not None
                print(f"BROKEN  {c.rollout_id}: first broken row: {c.broken.describe()}")
                for f in sorted(c.faults, key=lambda f: f.seq)[1:]:
                    print(f"        also: {f.describe()}")
            for text in c.checked:
                print(f"        checked: {text}")
            for text in c.unchecked:
                print(f"        NOT CHECKED: {text}")
    if not report.ok:
        first = report.first_broken
        assert first is not None
        print(f"rollout: audit chain broken: {first.describe()}", file=sys.stderr)
        return 1
    if report.unchecked:
        print(
            f"rollout: verified what could be checked; not checked: {'; '.join(report.unchecked)}",
            file=sys.stderr,
        )
    return 0


async def _verify(args: argparse.Namespace, rollout_id: str | None) -> int:
    key = _head_key(args)
    if args.file:
        if args.db:
            raise UsageError("--file checks an export; --db does not apply")
        from activities.audit_store import AuditStoreError, verify_export

        def check_file(path: str) -> VerifyReport:
            with open(path, encoding="utf-8") as fh:
                return verify_export(fh, key=key, rollout_id=rollout_id)

        try:
            report = await asyncio.to_thread(check_file, args.file)
        except OSError as exc:
            raise UsageError(f"--file {args.file}: {exc}") from None
        except AuditStoreError as exc:
            raise UsageError(f"--file {args.file}: {exc}") from None
        for c in report.chains:
            c.unchecked.append("the workflow's head (an offline export is checked against its own heads)")
        return _print_verify(report, key, args.file, args.json)
    store = _open_store(args)
    try:
        try:
            await store.rollout_ids()  # the store is reachable and migrated
        except Exception as exc:
            raise _store_failed(store, exc) from None
        anchors, missing = await _anchors(store, rollout_id)
        try:
            report = await store.verify(rollout_id, key=key, anchors=anchors)
        except Exception as exc:
            raise _store_failed(store, exc) from None
    finally:
        await store.close()
    for c in report.chains:
        if c.rollout_id in missing:
            c.unchecked.append(
                f"the workflow's head: {missing[c.rollout_id]}; the newest rows deleted together with "
                "their heads would not be caught"
            )
    return _print_verify(report, key, store.url, args.json)


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
