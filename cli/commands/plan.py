"""`rollout plan validate FILE`, `rollout plan show FILE`, `rollout plan rules FILE...`: offline, no Temporal needed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.commands.common import add_json, print_json
from rollout.alert_rules import render_rules
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

    rules = sub.add_parser(
        "rules",
        help="print Prometheus alerting rules generated from the plan's thresholds",
        description=(
            "Print a Prometheus rule file: one alert per stage and threshold (labels rollout, stage, "
            "threshold; `for` = for x metrics.interval) that fires only while that stage is exposed "
            "(rollout_exposure_info, exported by the worker), plus a no-data alert for on_no_data "
            "breach or hold. Several plans give one file."
        ),
    )
    rules.add_argument("files", metavar="FILE", nargs="+", help="plan YAML file(s)")
    rules.set_defaults(handler=cmd_rules)


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


def cmd_rules(args: argparse.Namespace) -> int:
    plans = [load_plan(f) for f in args.files]
    sys.stdout.write(render_rules(plans, sources=args.files))
    return 0
