"""The `rollout` command line: one entry point, command groups in rollout/commands/.

Exit codes: 0 done, 1 refused by the rollout, 2 bad input or usage, 3 cannot reach Temporal.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from rollout.errors import RolloutError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with a readable line
        self.print_usage(sys.stderr)
        print(f"rollout: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rollout", description="Staged rollout controller")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    from cli.commands import REGISTRARS

    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return int(result or 0)
    except RolloutError as exc:
        print(f"rollout: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0


async def _await(aw: Any) -> Any:
    return await aw


def run() -> None:
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without interpreter finalisation: the Temporal core runtime's native threads
    # can abort a finalising interpreter (PyGILState_Release) after the work is done.
    os._exit(code)


if __name__ == "__main__":
    run()
