"""Long-running services: `rollout receiver` (the Alertmanager webhook receiver)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from rollout.errors import UsageError

TOKEN_ENV = "ROLLOUT_RECEIVER_TOKEN"  # noqa: S105 - the name of the variable, not a secret


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "receiver",
        help="run the Alertmanager webhook receiver (POST /alertmanager)",
        description=(
            "Serve POST /alertmanager: each firing alert labelled with `rollout` and `threshold` "
            f"becomes a report_breach signal. Requests need `Authorization: Bearer ${TOKEN_ENV}`."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9095, help="port to listen on (default: 9095)")
    p.set_defaults(handler=_receiver)


async def _receiver(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise UsageError(f"{TOKEN_ENV} is not set; the receiver refuses to run without a bearer token")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    from worker.connect import connect
    from worker.receiver import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = await connect()
    print(f"Alertmanager receiver on http://{args.host}:{args.port}/alertmanager", file=sys.stderr)
    task = asyncio.create_task(serve(client, token, args.host, args.port, log_level="info"))
    terminated: list[bool] = []

    def on_sigterm() -> None:
        terminated.append(True)
        task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGTERM stops it gracefully (exit 0)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await task
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except asyncio.CancelledError:
        if not terminated:  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt, exit 130
            raise
        print("Alertmanager receiver stopped", file=sys.stderr)
    return 0
