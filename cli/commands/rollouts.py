"""Rollout commands for every role: start, status, list, watch and the human actions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.commands.common import actor_of, add_actor, add_json, clock, print_json
from cli.signing import sign_payload
from rollout import timefmt
from rollout.errors import RefusedError, UsageError
from rollout.plan import load_plan
from rollout.status_view import STATUSES, awaited_stage, render_status
from worker import client as rc
from worker.connect import connect


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "start", help="start a rollout from a plan file (the rollout owner only)",
        description="Start a rollout from a plan file. Only the plan's rollout owner may start it: "
                    "--as IDENTITY or $ROLLOUT_IDENTITY is required and goes to the workflow as started_by.",
    )
    p.add_argument("file", metavar="FILE", help="plan YAML file")
    p.add_argument("--id", help="workflow id (default rollout-<plan name>)")
    add_actor(p)
    add_json(p)
    p.set_defaults(handler=cmd_start)

    p = sub.add_parser("status", help="show a rollout's state (times local, --json in UTC)")
    p.add_argument("id", metavar="ID", help="workflow id or plan name")
    add_json(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("list", help="list rollouts (from search attributes)")
    p.add_argument("--stage", help="only rollouts at this stage")
    p.add_argument("--status", choices=STATUSES, metavar="STATUS", help="only rollouts in this status: " + ", ".join(STATUSES))
    add_json(p)
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser(
        "approve", help="approve stage entry for a role (or an amendment)",
        description="Approve entry to the stage awaited, for one role. Without --stage, the one stage "
                    "awaited (read from the rollout's status) is approved.",
    )
    p.add_argument("id", metavar="ID", help="workflow id or plan name")
    p.add_argument("--stage", help="the stage to approve (default: the one stage awaited)")
    p.add_argument("--role", required=True, help="the role you approve for")
    p.add_argument("--comment")
    p.add_argument("--amendment", help="approve the pending amendment with this plan_hash instead of a stage")
    p.add_argument("--key", help="Ed25519 private key file (rollout keygen) when the plan requires signed approvals")
    add_actor(p)
    add_json(p)
    p.set_defaults(handler=cmd_approve)

    p = sub.add_parser("reject", help="reject entry to the awaited stage (holds the rollout)")
    p.add_argument("id")
    p.add_argument("--stage", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--role")
    add_actor(p)
    add_json(p)
    p.set_defaults(handler=cmd_simple, action="reject")

    for name, verb in (("hold", "hold the rollout at its scope"), ("resume", "resume a held or rolled-back rollout"),
                       ("rollback", "roll back to the previous stage's scope"), ("abort", "abort: scope zero, closes")):
        p = sub.add_parser(name, help=verb)
        p.add_argument("id")
        p.add_argument("--reason", required=True)
        add_actor(p)
        add_json(p)
        p.set_defaults(handler=cmd_simple, action=name)

    p = sub.add_parser("ack", help="acknowledge a handoff item or an escalation")
    p.add_argument("id")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--item")
    g.add_argument("--escalation", action="store_true")
    p.add_argument("--stage", help="stage of the handoff item (default: the latest entered stage with it)")
    p.add_argument("--key", help="Ed25519 private key file (rollout keygen) when the plan requires signatures")
    add_actor(p)
    add_json(p)
    p.set_defaults(handler=cmd_ack)

    p = sub.add_parser("amend", help="propose an amended plan (applies once approved)")
    p.add_argument("id")
    p.add_argument("file")
    p.add_argument("--reason")
    add_actor(p)
    add_json(p)
    p.set_defaults(handler=cmd_amend)


def _done(args: argparse.Namespace, action: str, ident: str, result: dict[str, Any]) -> int:
    if getattr(args, "json", False):
        print_json({"action": action, "rollout": ident, **result})
    else:
        print(f"{action}: done; {ident} is {result.get('status')} at {result.get('stage')}")
    return 0


async def cmd_start(args: argparse.Namespace) -> int:
    plan = load_plan(args.file)
    actor = actor_of(args)  # no identity: exit 2
    if actor != plan.owners.rollout:
        raise RefusedError(f"only the rollout owner ({plan.owners.rollout}) may start this rollout, not {actor}")
    client = await connect(identity=actor)
    handle = await rc.start(client, plan, workflow_id=args.id, started_by=actor)
    if args.json:
        print_json({"workflow_id": handle.id, "run_id": handle.result_run_id, "plan_hash": plan.plan_hash()})
    else:
        print(f"started {handle.id} (plan_hash {plan.plan_hash()[:12]}); awaiting approval of {plan.stages[0].name}")
        print(f"  watch it: rollout watch {handle.id}")
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    client = await connect()
    st = await rc.status(client, args.id)
    if args.json:
        print_json(st)
    else:
        now, zone = clock()
        print(render_status(st, now, zone))
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    client = await connect()
    rows = await rc.list_rollouts(client, stage=args.stage, status=args.status)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no rollouts match")
        return 0
    now, zone = clock()
    width = max(len(r["workflow_id"]) for r in rows)
    print(f"{'ROLLOUT':<{width}}  {'STAGE':<20} {'STATUS':<18} {'OWNER':<24} STARTED")
    for r in rows:
        started = timefmt.human(r.get("started_at"), now, zone)
        print(f"{r['workflow_id']:<{width}}  {r['stage'] or '-':<20} {r['status'] or '-':<18} {r['owner'] or '-':<24} {started}")
    return 0


async def cmd_approve(args: argparse.Namespace) -> int:
    actor = actor_of(args)
    if args.stage and args.amendment:
        raise UsageError("approve takes --stage STAGE or --amendment PLAN_HASH, not both")
    payload: dict[str, Any] = {"actor": actor, "role": args.role, "comment": args.comment}
    client = await connect(identity=actor)
    if args.amendment:
        payload["amendment"] = args.amendment
    else:
        payload["stage"] = args.stage or await _awaited(client, args.id)
    if args.key:
        payload = await sign_payload(client, args.id, "approve", payload, Path(args.key))
    result = await rc.act(client, args.id, "approve", payload)
    return _done(args, "approve", args.id, result)


async def _awaited(client: Any, ident: str) -> str:
    """The one stage whose entry is awaited, from the rollout's status; refused when none is."""
    st = await rc.status(client, ident)
    stage = awaited_stage(st)
    if stage is None:
        raise RefusedError(
            f"{st.get('workflow_id', ident)} awaits no stage approval (it is {st.get('status')} at {st.get('stage')}); "
            "pass --stage STAGE to name one"
        )
    return stage


async def cmd_simple(args: argparse.Namespace) -> int:
    actor = actor_of(args)
    payload: dict[str, Any] = {"actor": actor, "reason": args.reason}
    if args.action == "reject":
        payload.update(stage=args.stage, role=args.role)
    client = await connect(identity=actor)
    result = await rc.act(client, args.id, args.action, payload)
    return _done(args, args.action, args.id, result)


async def cmd_ack(args: argparse.Namespace) -> int:
    actor = actor_of(args)
    payload: dict[str, Any] = {"actor": actor}
    if args.escalation:
        payload["escalation"] = True
    else:
        payload["item"] = args.item
        if args.stage:
            payload["stage"] = args.stage
    client = await connect(identity=actor)
    if args.key and not args.escalation:
        payload = await sign_payload(client, args.id, "acknowledge", payload, Path(args.key))
    result = await rc.act(client, args.id, "acknowledge", payload)
    return _done(args, "ack", args.id, result)


async def cmd_amend(args: argparse.Namespace) -> int:
    actor = actor_of(args)
    plan = load_plan(args.file)
    client = await connect(identity=actor)
    payload = {"actor": actor, "plan": plan.model_dump(mode="json", by_alias=True), "reason": args.reason}
    result = await rc.act(client, args.id, "amend", payload)
    if args.json:
        print_json({"action": "amend", "rollout": args.id, "amendment": plan.plan_hash(), **result})
    else:
        print(f"amendment {plan.plan_hash()} proposed; approve it with:")
        print(f"  rollout approve {args.id} --amendment {plan.plan_hash()} --role ROLE --as IDENTITY")
    return 0
