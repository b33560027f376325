"""Command groups of the `rollout` CLI. Each module exposes `register(subparsers)`.

A command's handler is set with `parser.set_defaults(handler=fn)`; `fn(args)` returns
an exit code (or an awaitable of one) and raises `RolloutError` subclasses to refuse.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

Registrar = Callable[["argparse._SubParsersAction[Any]"], None]

_MODULES = ("plan", "rollouts", "watch", "keygen", "dev", "audit", "services", "completion", "simulate", "inbox", "review")


def _load() -> list[Registrar]:
    out: list[Registrar] = []
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cli.commands.{name}":
                continue  # command group not built yet
            raise
        out.append(mod.register)
    return out


REGISTRARS: list[Registrar] = _load()
