"""`rollout watch ID`: follow a rollout live until it completes or is aborted.

In a terminal it redraws one view in place (rich): the stages as a progress line, the
window's countdown, approvals ticked off by role, open breaches, the escalation's level
and next page, a change the target has not taken yet. Piped (or with TERM=dumb), it
prints one line per change instead; `--json` prints the status object per change.
Returns 0 at a terminal status (completed, aborted); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime, tzinfo
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.commands.common import add_json, clock
from rollout import timefmt
from rollout.status_view import CLOSED, status_line
from rollout.watch_view import WatchView, change_line, watch_view
from worker import client as rc
from worker.connect import connect

_MARKS = {
    "done": ("✔", "green"),
    "current": ("●", "bold cyan"),
    "exposed": ("◐", "yellow"),
    "pending": ("○", "dim"),
    "failed": ("✘", "red"),
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "watch",
        help="follow a rollout live until it completes or is aborted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", metavar="ID", help="workflow id or plan name")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between status reads (default 1)")
    add_json(p)
    p.set_defaults(handler=cmd_watch)


def render(view: WatchView) -> RenderableType:
    """The live view of one moment, as a rich renderable."""
    stages = Text()
    for i, cell in enumerate(view.stages):
        if i:
            stages.append(" ── ", style="dim")
        mark, style = _MARKS[cell.mark]
        stages.append(f"{mark} {cell.name}", style=style)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("rollout", Text(view.title))
    grid.add_row("status", Text(view.headline, style="red" if "held" in view.headline or "rolled" in view.headline
                                else "green" if view.closed else ""))
    grid.add_row("stages", stages)
    grid.add_row("exposure", Text(view.exposure))
    if view.window is not None:
        w = view.window
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=w.fraction, width=30),
                    Text(f"{w.stage} window ends {w.ends_at} ({w.remaining})"))
        grid.add_row("window", bar)
    if view.approvals_stage is not None:
        ticks = Text()
        for i, a in enumerate(view.approvals):
            if i:
                ticks.append("   ")
            if a.actor:
                ticks.append(f"☑ {a.role} ({a.actor})", style="green")
            else:
                ticks.append(f"☐ {a.role}", style="yellow")
        grid.add_row("approvals", Text.assemble(f"{view.approvals_stage}: ", ticks))
    for item in view.handoff:
        grid.add_row("handoff", Text(f"☐ {item}", style="yellow"))
    if view.hold:
        grid.add_row("hold", Text(view.hold, style="red"))
    for b in view.breaches:
        grid.add_row("breach", Text(b, style="red"))
    if view.escalation:
        grid.add_row("escalation", Text(view.escalation, style="bold red"))
    if view.target:
        grid.add_row("target", Text(view.target, style="yellow"))
    return Group(grid)


async def cmd_watch(args: argparse.Namespace) -> int:
    client = await connect()
    console = Console(highlight=False)
    if args.json:
        return await _watch_lines(client, args, lambda st: json.dumps(st, sort_keys=True, default=str))
    if not console.is_terminal:
        return await _watch_lines(client, args, change_line, stamp=True)
    return await _watch_live(client, args, console)


async def _watch_lines(client: Any, args: argparse.Namespace, line_of: Any, stamp: bool = False) -> int:
    last: str | None = None
    while True:
        st = await rc.status(client, args.id)
        line = str(line_of(st))  # what changed is judged on the state alone, never the clock
        if line != last:
            if stamp:  # people read it: local times with their relative part, as of now
                now, zone = clock()
                print(f"[{timefmt.local(now, now, zone)}] {status_line(st, now, zone)}", flush=True)
            else:
                print(line, flush=True)
            last = line
        if st.get("status") in CLOSED:
            return 0
        await asyncio.sleep(args.interval)


async def _watch_live(client: Any, args: argparse.Namespace, console: Console) -> int:
    def frame(st: dict[str, Any]) -> RenderableType:
        now, zone = clock()
        return _with_footer(render(watch_view(st, now, zone)), now, zone)

    st = await rc.status(client, args.id)
    with Live(frame(st), console=console, refresh_per_second=4, auto_refresh=False, transient=False) as live:
        loop = asyncio.get_running_loop()
        next_read = loop.time()
        while True:
            if loop.time() >= next_read:
                st = await rc.status(client, args.id)
                next_read = loop.time() + args.interval
            live.update(frame(st), refresh=True)  # the countdown moves even when the state does not
            if st.get("status") in CLOSED:
                return 0
            await asyncio.sleep(min(1.0, args.interval))


def _with_footer(body: RenderableType, now: datetime, zone: tzinfo | None) -> RenderableType:
    return Group(body, Text(f"updated {timefmt.local(now, now, zone)} · Ctrl-C to stop watching", style="dim"))

