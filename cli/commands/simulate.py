"""`rollout simulate FILE --from T [--to T] [--approve-after D] [--json]`: read-only.

Runs the plan's rules (the state machine the workflow runs) over a past period on the
metrics Prometheus recorded, and prints what would have happened. It starts nothing
and writes nothing. Exit 0 whatever the plan would have done; 2 for a bad plan,
period or a query Prometheus rejects; 3 when Prometheus cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.prometheus_range import RangeFetcher
from cli.commands.common import add_json, print_json
from rollout.durations import format_duration, parse_duration
from rollout.errors import UsageError
from rollout.plan import Plan, load_plan
from rollout.simulate import Need, Simulation, SimulationError, from_ms
from rollout.timefmt import parse, rfc3339

Progress = Callable[[str], None]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="what a plan would have done on recorded metrics (read-only)",
        description=(
            "Replay a plan over a past period: fetch each threshold's series from the plan's Prometheus "
            "(query_range at metrics.interval), run the same state machine the workflow runs (approvals "
            "--approve-after each entry, handoffs and pages acknowledged at once, nobody resumes) and print "
            "the timeline and a table per threshold. Starts nothing, writes nothing."
        ),
    )
    p.add_argument("file", metavar="FILE", help="plan YAML file")
    p.add_argument(
        "--from", dest="start", required=True, metavar="T",
        help="start: RFC 3339 time (2026-11-01T00:00:00Z) or a duration back from now (14d)",
    )
    p.add_argument("--to", dest="end", metavar="T", help="end: RFC 3339 time or a duration back from now (default: now)")
    p.add_argument(
        "--approve-after", default="0s", metavar="D",
        help="each stage is approved this long after it begins awaiting approval (default: at once)",
    )
    add_json(p)
    p.set_defaults(handler=cmd_simulate)


def parse_time(text: str, now: datetime, flag: str) -> datetime:
    """An RFC 3339 time, or a duration (`14d`) back from `now`; whole seconds are kept as given."""
    value = text.strip()
    t = parse(value) if "T" in value or "-" in value[1:] else None
    if t is not None:
        if t.tzinfo is None:
            raise UsageError(f"{flag} {text!r}: give a time zone (e.g. 2026-11-01T00:00:00Z)")
        return t.astimezone(UTC)
    try:
        return now - parse_duration(value)
    except (ValueError, OverflowError):
        raise UsageError(
            f"{flag} {text!r} is neither an RFC 3339 time (2026-11-01T00:00:00Z) nor a duration back from now (14d)"
        ) from None


def parse_approve_after(text: str) -> timedelta:
    if text.strip() in ("0", "0s"):
        return timedelta(0)
    try:
        return parse_duration(text)
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"--approve-after: {exc}") from None


def period(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime]:
    start = parse_time(args.start, now, "--from")
    end = parse_time(args.end, now, "--to") if args.end else now
    if end > now + timedelta(minutes=1):
        raise UsageError(f"--to {rfc3339(end)} is in the future: there are no metrics for it yet")
    return start, end


async def fetch_need(fetcher: RangeFetcher, sim: Simulation, need: Need, progress: Progress | None) -> None:
    """Fetch every threshold of `need` (concurrently) into the simulation."""
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(fetcher.fetch(t, need.start_ms, need.end_ms, need.step_ms) for t in need.thresholds)
    )
    for t, values in zip(need.thresholds, results, strict=True):
        sim.add(need.key(t), values)
    if progress is not None:
        progress(
            f"fetched {need.stage} ({len(need.thresholds)} threshold(s)) "
            f"{rfc3339(from_ms(need.start_ms))} .. {rfc3339(from_ms(need.end_ms))}: "
            f"{need.points * len(need.thresholds)} points in {time.monotonic() - t0:.1f}s"
        )


async def run_simulation(
    plan: Plan,
    *,
    start: datetime,
    end: datetime,
    approve_after: timedelta = timedelta(0),
    progress: Progress | None = None,
    fetcher: RangeFetcher | None = None,
) -> Simulation:
    """Run a simulation to the end of the period, fetching what it needs from Prometheus."""
    try:
        sim = Simulation(plan, start=start, end=end, approve_after=approve_after)
    except SimulationError as exc:
        raise UsageError(str(exc)) from None
    need = sim.run()
    if need is None:
        return sim
    assert plan.metrics is not None  # a Need comes only from thresholds, which need metrics
    own = fetcher is None
    f = fetcher or RangeFetcher(plan.metrics.prometheus_url)
    try:
        while need is not None:
            await fetch_need(f, sim, need, progress)
            need = sim.run()
    finally:
        if own:
            await f.aclose()
    return sim


def _stderr(line: str) -> None:
    print(f"rollout simulate: {line}", file=sys.stderr, flush=True)


async def cmd_simulate(args: argparse.Namespace) -> int:
    plan = load_plan(args.file)
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = period(args, now)
    approve_after = parse_approve_after(args.approve_after)
    sim = await run_simulation(plan, start=start, end=end, approve_after=approve_after, progress=_stderr)
    result = sim.result()
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(render(sim, result))
    return 0


# ---- human output ----------------------------------------------------------------------------

HIDDEN = ("window_summary", "scope_applied")  # in --json; the other rows say the same for people


def _value(v: Any) -> str:
    return "-" if v is None else f"{v:.6g}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(sim: Simulation, result: dict[str, Any]) -> str:
    plan = sim.plan
    out = [
        f"Simulation of {plan.name} (plan_hash {result['plan_hash'][:12]}) "
        f"from {result['from']} to {result['to']} ({format_duration(sim.end - sim.start)})",
        f"Assumed: approvals {format_duration(sim.approve_after)} after each stage awaits them, "
        "handoffs and pages acknowledged at once, nobody resumes a containment.",
        "",
    ]
    rows = [["TIME", "STAGE", "EVENT", "THRESHOLD", "VALUE", "ACTION", "DETAIL"]]
    for e in result["events"]:
        if e["kind"] in HIDDEN:
            continue
        rows.append(
            [e["at"], e["stage"] or "-", e["kind"], e["threshold"] or "-", _value(e["value"]),
             e["action"] or "-", e["detail"] or ""]
        )
    out += _table(rows)
    final = result["final"]
    s = sim.state
    line = f"\nBy {result['to']}: stage {final['stage']}, status {final['status']}, exposure_stage {final['exposure_stage'] or '-'}"
    if s.containment is not None and final["status"] in ("held", "rolled_back"):
        line += f"; contained since {rfc3339(s.containment.since)} ({format_duration(sim.end - s.containment.since)}): {s.containment.reason}"
    out.append(line)
    for problem in sim.refused:
        out.append(f"note: {problem}")
    out.append("")
    trows = [["THRESHOLD", "EVALUATIONS", "FAILING", "NO DATA", "BREACHES", "WORST", "AT"]]
    for key, c in result["thresholds"].items():
        worst, worst_at = sim.worst_of(key)
        trows.append(
            [key, str(c["evaluations"]), str(c["failing"]), str(c["no_data"]), str(c["breaches"]),
             _value(worst), rfc3339(from_ms(worst_at)) if worst_at is not None else "-"]
        )
    out += _table(trows) if len(trows) > 1 else ["(the plan has no thresholds)"]
    return "\n".join(out) + "\n"
