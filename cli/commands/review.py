"""`rollout review ID [--since 30d] [--format md|html|json] [--out FILE]`: the periodic
review of a rollout, from its audit trail alone.

Reads the rollout's rows from the audit store (so it works for closed rollouts whose
Temporal history is gone) and reports time in each stage and status, approvals'
waiting time by role, breaches by threshold, containments and how they ended,
escalations against the SLA, coverage of every window, handoff items, amendments
with their diff; then a keep / adjust / stop summary, each suggestion with the
rows (seq) it rests on. `html` is one self-contained file with plots.

The store: --db URL, else $ROLLOUT_DB_URL, else the SQLite file in the state directory.
--since T: the period reviewed starts at T (ISO time, or a duration back from now: 30d).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli.commands.audit import _open_store, _store_failed, parse_since, resolve_id
from rollout.errors import NotFoundError, UsageError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "review",
        help="periodic review of a rollout from its audit trail: keep, adjust or stop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", metavar="ID", help="a plan name or a workflow id (rollout-<name>)")
    p.add_argument("--since", metavar="T", help="review from T (ISO time, or a duration like 30d); default: all")
    p.add_argument("--format", choices=("md", "html", "json"), default="md", help="report format (default md)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--out", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--db", metavar="URL", help="audit store URL (default: $ROLLOUT_DB_URL, else a SQLite file in $ROLLOUT_STATE_DIR)")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from rollout.review import build_review, render_html, render_markdown

    fmt = "json" if args.json else args.format
    rollout_id = resolve_id(args.id)
    now = datetime.now(UTC)
    since = parse_since(args.since, now) if args.since else None
    out_path = Path(args.out) if args.out else None
    if out_path is not None and (out_path.is_dir() or not out_path.absolute().parent.is_dir()):
        raise UsageError(f"--out {args.out}: not a file in an existing directory")
    store = _open_store(args)
    try:
        try:
            events = await store.events(rollout_id)
        except Exception as exc:
            raise _store_failed(store, exc) from None
    finally:
        await store.close()
    if not events:
        raise NotFoundError(f"no audit trail for {rollout_id} in the audit store at {store.url}")
    review = build_review(events, rollout_id=rollout_id, now=now, since=since)
    if fmt == "json":
        text = json.dumps(review, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    elif fmt == "html":
        text = render_html(review)
    else:
        text = render_markdown(review)
    if out_path is None:
        sys.stdout.write(text)
        return 0
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"--out {args.out}: {exc.strerror or exc}") from None
    print(f"review of {rollout_id} ({review['verdict']}) written to {out_path}", file=sys.stderr)
    return 0
