# PYTHON_ARGCOMPLETE_OK
"""The `rollout` command line: one entry point, command groups in cli/commands/.

Exit codes: 0 done, 1 refused by the rollout, 2 bad input or usage, 3 cannot reach Temporal,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from rollout.errors import RolloutError

EXIT_INTERRUPTED = 130
DISTRIBUTION = "staged-rollout"

DESCRIPTION = """\
Staged rollouts of automated systems (AI agents, models, new processes): a plan takes
them from a pilot through limited waves to the system of record, under named
approvals, reliability windows, automatic holds and rollbacks, escalation and handoffs.
Each rollout is a durable Temporal workflow; connection settings are Temporal's own
(TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, profiles)."""

EPILOG = """\
examples:
  rollout dev                                   # local Temporal + worker + receiver
  rollout plan validate examples/support-reply-agent.yaml
  rollout start examples/support-reply-agent.yaml --as alice@example.com
  rollout approve support-reply-agent --role engineering --as frank@example.com
  rollout watch support-reply-agent

exit codes: 0 done, 1 refused by the rollout, 2 bad input or usage,
            3 cannot reach Temporal, 130 interrupted (Ctrl-C)
identity:   --as IDENTITY after the command's arguments, or $ROLLOUT_IDENTITY
state:      $ROLLOUT_STATE_DIR (default $XDG_STATE_HOME/rollout, else ~/.local/state/rollout)
completion: eval "$(rollout completion bash)"   (zsh, fish: rollout completion --help)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with a readable line
        self.print_usage(sys.stderr)
        print(f"rollout: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def subcommands(parser: argparse.ArgumentParser, path: str = "rollout") -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(full command, help line, parser) of every command and subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name, ""), sub
                yield from subcommands(sub, f"{path} {name}")


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every command gets a description in its --help: its own, else its help line as a sentence."""
    for _, help_line, sub in subcommands(parser):
        if not sub.description and help_line:
            sub.description = help_line[0].upper() + help_line[1:] + ("" if help_line.endswith(".") else ".")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rollout", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"rollout {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    from cli.commands import REGISTRARS

    for register in REGISTRARS:
        register(sub)
    _describe(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # shell completion: answer and exit
        import argcomplete

        argcomplete.autocomplete(parser)
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
    except KeyboardInterrupt:  # Ctrl-C, also inside asyncio.run (it cancels, then raises this)
        print("rollout: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0


async def _await(aw: Any) -> Any:
    return await aw


def run() -> None:
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.stderr.flush()
    # Leave without interpreter finalisation: the Temporal core runtime's native threads
    # can abort a finalising interpreter (PyGILState_Release) after the work is done.
    os._exit(code)


if __name__ == "__main__":
    run()
