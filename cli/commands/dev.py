"""`rollout dev` (the embedded stack) and `rollout worker` (the worker process)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "dev",
        help="run Temporal's dev server, the worker and the receiver in one process",
        description=(
            "Run the embedded stack: Temporal's dev server (persisted to --db), the worker and the "
            "Alertmanager receiver, in one process; prints the Temporal UI address.\n\n"
            "Ports are fixed (defaults below): one in use stops `rollout dev` at once, naming it (exit 2). "
            "A component that stops (dev server, worker, receiver) stops everything (exit 1). The dev "
            "server lives exactly as long as `rollout dev`, even when it is killed. Ctrl-C stops "
            "everything (exit 130), SIGTERM too (exit 0); state survives restarts."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=7233, help="Temporal frontend port (default 7233)")
    p.add_argument("--ui-port", type=int, default=8233, help="Temporal UI port (default 8233)")
    p.add_argument("--http-port", type=int, default=9095, help="Alertmanager receiver port (default 9095)")
    p.add_argument("--db", type=Path, help="dev server database file (default: temporal.db in the state directory, "
                   "$ROLLOUT_STATE_DIR, else $XDG_STATE_HOME/rollout, else ~/.local/state/rollout)")
    p.set_defaults(handler=cmd_dev)

    p = sub.add_parser("worker", help="run the worker (workflow + activities) on task queue $ROLLOUT_TASK_QUEUE")
    p.add_argument(
        "--metrics-address",
        default=os.environ.get("ROLLOUT_METRICS_ADDRESS"),
        help="serve Prometheus metrics at HOST:PORT/metrics (default $ROLLOUT_METRICS_ADDRESS; off when unset)",
    )
    for flag, env, what, default in (
        ("--delivery-slots", "ROLLOUT_DELIVERY_SLOTS", "target deliveries run at once, on <queue>", 100),
        ("--audit-slots", "ROLLOUT_AUDIT_SLOTS", "audit batches written at once, on <queue>-audit", 20),
        ("--notify-slots", "ROLLOUT_NOTIFY_SLOTS", "notification batches sent at once, on <queue>-notify", 20),
        ("--monitor-slots", "ROLLOUT_MONITOR_SLOTS", "threshold monitors run at once, on <queue>-monitors", 2000),
        ("--max-cached-workflows", "ROLLOUT_MAX_CACHED_WORKFLOWS", "open rollouts kept in memory", 1000),
    ):
        p.add_argument(flag, type=int, metavar="N", help=f"{what} (default ${env}, else {default})")
    p.set_defaults(handler=cmd_worker)


async def cmd_dev(args: argparse.Namespace) -> int:
    from worker.devstack import run_dev

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return await run_dev(args.port, args.ui_port, args.http_port, args.db)


async def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from cli.main import EXIT_INTERRUPTED
    from worker.main import WorkerSettings, run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = WorkerSettings.from_env({name: getattr(args, name) for name in (
        "delivery_slots", "audit_slots", "notify_slots", "monitor_slots", "max_cached_workflows")})
    stopped_by = await run_worker(metrics_address=args.metrics_address, settings=settings)
    # Ctrl-C is an interruption (130, like every command); SIGTERM a requested stop (0)
    return EXIT_INTERRUPTED if stopped_by == signal.SIGINT else 0
