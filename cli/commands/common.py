"""Helpers shared by the command groups: identity, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, tzinfo
from typing import Any

from rollout.errors import UsageError


def add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="actor", metavar="IDENTITY", help="who acts (default: $ROLLOUT_IDENTITY)")


def actor_of(args: argparse.Namespace) -> str:
    actor = getattr(args, "actor", None) or os.environ.get("ROLLOUT_IDENTITY")
    if not actor:
        raise UsageError("who is acting? pass --as IDENTITY or set ROLLOUT_IDENTITY")
    return str(actor)


def clock() -> tuple[datetime, tzinfo | None]:
    """Now (UTC) and the local zone, for human output (`rollout.timefmt`); `--json` stays UTC."""
    now = datetime.now(UTC)
    return now, now.astimezone().tzinfo


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
