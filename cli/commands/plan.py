"""`rollout plan validate FILE` and `rollout plan show FILE`: offline, no Temporal needed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.commands.common import add_json, print_json
from rollout.errors import PlanError
from rollout.plan import load_plan
from rollout.render import render_plan_markdown


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    plan = subparsers.add_parser("plan", help="validate or show a plan (offline)")
    sub = plan.add_subparsers(dest="plan_command", metavar="SUBCOMMAND")
    sub.required = True

    validate = sub.add_parser(
        "validate",
        help="check a plan; exit 0 if valid, 2 with one line per problem if not",
        description="Validate a plan file. Exit 0 when valid, 2 when not (one `path: message` per problem).",
    )
    validate.add_argument("file", metavar="FILE", help="plan YAML file")
    add_json(validate)
    validate.set_defaults(handler=cmd_validate)

    show = sub.add_parser(
        "show",
        help="render the plan as its one-page operating model (Markdown)",
        description="Render a plan as Markdown: owners, stages, authority, thresholds, escalation, handoff.",
    )
    show.add_argument("file", metavar="FILE", help="plan YAML file")
    add_json(show)
    show.set_defaults(handler=cmd_show)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        if args.json:
            print_json({"valid": False, "problems": exc.problems})
            return exc.exit_code
        raise
    plan_hash = plan.plan_hash()
    if args.json:
        print_json(
            {"valid": True, "name": plan.name, "plan_hash": plan_hash, "stages": [s.name for s in plan.stages]}
        )
    else:
        n = len(plan.stages)
        print(f"ok: {plan.name} ({n} stage{'' if n == 1 else 's'}, plan_hash {plan_hash})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    plan = load_plan(args.file)
    if args.json:
        print_json({"plan_hash": plan.plan_hash(), "plan": json.loads(plan.canonical_json())})
    else:
        sys.stdout.write(render_plan_markdown(plan))
    return 0
