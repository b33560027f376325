"""`rollout completion [bash|zsh|fish]`: the shell code that completes `rollout` (argcomplete)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "completion",
        help="print shell completion code for rollout (bash, zsh, fish)",
        description=(
            "Print the code that makes your shell complete rollout's commands, flags and choices.\n\n"
            "  bash:  eval \"$(rollout completion bash)\"      (add it to ~/.bashrc)\n"
            "  zsh:   eval \"$(rollout completion zsh)\"       (add it to ~/.zshrc)\n"
            "  fish:  rollout completion fish | source        (or save it in ~/.config/fish/completions/)\n\n"
            "Same as argcomplete's `register-python-argcomplete rollout`."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", nargs="?", choices=SHELLS, default="bash", help="the shell (default bash)")
    p.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["rollout"], shell=args.shell))
    return 0
