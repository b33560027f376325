"""`rollout inbox link --as ID [--ttl 8h]`: a single-use sign-in link to the approval inbox."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cli.commands.common import actor_of, add_actor, add_json, print_json
from rollout.durations import parse_duration
from rollout.errors import UsageError
from worker.inbox import DEFAULT_LINK_TTL, PUBLIC_URL_ENV, SECRET_ENV, public_url_from_env, sign_in_link


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("inbox", help="the browser approval inbox (served by `rollout receiver` and `rollout dev`)")
    inner = p.add_subparsers(dest="inbox_command", metavar="SUBCOMMAND")
    inner.required = True
    link = inner.add_parser(
        "link",
        help="print a single-use sign-in link for an identity",
        description=(
            f"Print a sign-in link for the inbox, signed with ${SECRET_ENV} (the receiver must have the same value), "
            f"valid once and until --ttl has passed. Links start with ${PUBLIC_URL_ENV} "
            "(default http://127.0.0.1:9095)."
        ),
    )
    link.add_argument("--ttl", default="8h", help="how long the link stays valid (default 8h, at most 7d)")
    add_actor(link)
    add_json(link)
    link.set_defaults(handler=cmd_link)


def cmd_link(args: argparse.Namespace) -> int:
    identity = actor_of(args)
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise UsageError(f"{SECRET_ENV} is not set; it must hold the same secret as the receiver's")
    try:
        ttl = parse_duration(args.ttl) if args.ttl else DEFAULT_LINK_TTL
    except (ValueError, OverflowError):
        raise UsageError(f"--ttl {args.ttl!r} is not a duration such as 30m, 8h or 2d") from None
    try:
        url = sign_in_link(secret.encode(), identity, ttl, public_url_from_env())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json({"identity": identity, "url": url, "ttl_seconds": int(ttl.total_seconds())})
    else:
        print(url)
    return 0
