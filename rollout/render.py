"""Render a plan as its one-page operating model (Markdown). Pure functions, no I/O.

`render_plan_markdown(plan)` is what `rollout plan show` prints; the smaller helpers
(`describe_scope`, `describe_stop_rule`, ...) are reusable wherever a stage, a scope or
a threshold has to be explained in words (status output, notifications, audit reports).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rollout.plan import (
    FileTarget,
    LogTarget,
    Plan,
    Scope,
    Stage,
    Threshold,
    UnleashTarget,
    WebhookTarget,
)

NOT_GRANTED = "—"  # a verb not yet granted in any stage up to this one


# ---- small formatting helpers -------------------------------------------------------


def fmt_number(value: float) -> str:
    """Shortest faithful text for a number: 5.0 -> '5', 0.02 -> '0.02'."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def code(text: str) -> str:
    """An inline Markdown code span that survives backticks inside `text`."""
    text = " ".join(text.split())
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    out.append("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        out.append("| " + " | ".join(cell(c) for c in row) + " |")
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---- descriptions in words ----------------------------------------------------------


def describe_scope(scope: Scope) -> str:
    """'5% of internal, smb' or '100% of all segments'."""
    segs = "all segments" if scope.segments is None else ", ".join(scope.segments) or "no segments"
    return f"{fmt_number(scope.percent)}% of {segs}"


def describe_stop_rule(threshold: Threshold, interval: str | None) -> str:
    """The threshold's stop rule in words, e.g.
    'breach when value > 0.02 for 3 consecutive evaluations every 30s; no data: hold; action: hold'.
    """
    conds = []
    if threshold.max is not None:
        conds.append(f"value > {fmt_number(threshold.max)}")
    if threshold.min is not None:
        conds.append(f"value < {fmt_number(threshold.min)}")
    when = " or ".join(conds) or "never (no max or min)"
    n = threshold.for_
    count = f"for {n} consecutive evaluation{'' if n == 1 else 's'}"
    every = f" every {interval}" if interval else ""
    return (
        f"breach when {when} {count}{every}; "
        f"no data: {threshold.on_no_data}; action: {threshold.action}"
    )


def describe_target(plan: Plan) -> str:
    t = plan.target
    if isinstance(t, WebhookTarget):
        extra = f", signed with HMAC-SHA256 from ${t.secret_env}" if t.secret_env else ", unsigned"
        return f"webhook {code(t.url)}{extra}, timeout {t.timeout}"
    if isinstance(t, FileTarget):
        flag = f", flag {code(t.flag)}" if t.flag else ""
        return f"file {code(t.path)}{flag}"
    if isinstance(t, UnleashTarget):
        feature = f", feature {code(t.feature)}" if t.feature else ""
        return (
            f"unleash {code(t.url)}{feature}, project {code(t.project)}, "
            f"environment {code(t.environment)}, token from ${t.token_env}"
        )
    if isinstance(t, LogTarget):
        return f"log to {code(t.path)}" if t.path else "log (the worker's log)"
    return str(t.kind)  # pragma: no cover - the union is exhaustive


def role_with_identities(plan: Plan, role: str) -> str:
    ids = plan.role_identities(role)
    return f"{role} ({', '.join(ids)})" if ids else role


def authority_matrix(plan: Plan) -> tuple[list[str], list[list[str]]]:
    """Verbs (in order of first appearance) × stages: effective level, or NOT_GRANTED."""
    verbs: list[str] = []
    for s in plan.stages:
        for verb in s.authority:
            if verb not in verbs:
                verbs.append(verb)
    effective = [plan.effective_authority(i) for i in range(len(plan.stages))]
    rows = [[verb, *[eff.get(verb, NOT_GRANTED) for eff in effective]] for verb in verbs]
    return verbs, rows


# ---- the page -----------------------------------------------------------------------


def _stage_row(plan: Plan, index: int, stage: Stage) -> list[str]:
    roles = ", ".join(stage.approvals.roles) or "none"
    return [
        str(index + 1),
        stage.name,
        stage.tier,
        describe_scope(stage.scope),
        stage.window,
        roles,
        stage.approvals.remind_after or "—",
    ]


def render_plan_markdown(plan: Plan) -> str:
    """The plan as a one-page operating model in Markdown."""
    out: list[str] = [f"# Rollout plan: {plan.name}", ""]
    if plan.description:
        out += [plan.description, ""]
    out += [
        f"- plan_hash: {code(plan.plan_hash())}",
        f"- apiVersion: {code(plan.apiVersion)}",
        f"- workflow id: {code('rollout-' + plan.name)}",
        "",
    ]

    # owners and approvers
    out += ["## Owners", ""]
    owners = plan.owners.by_key()
    out += table(["Owner", "Identity"], [[k, v] for k, v in owners.items()])
    out += ["", "## Approvers", ""]
    if plan.approvers:
        out += table(
            ["Role", "Identities"], [[role, ", ".join(ids)] for role, ids in plan.approvers.items()]
        )
    else:
        out.append("No approver roles.")
    out.append("")
    out += [
        f"The rollout owner ({plan.owners.rollout}) may never approve; "
        "one identity approves at most one role per stage entry.",
        "",
    ]
    for role, others in plan.distinct_from.items():
        out.append(f"- separation of duties: {role} must be distinct from {', '.join(others)}")
    if plan.require_signed_approvals:
        out.append("- approvals must be signed (Ed25519); public keys on file for: " + ", ".join(
            sorted(plan.public_keys)
        ))
    out.append("")

    # fallback, target, metrics
    out += ["## Fallback path", "", plan.fallback, ""]
    out += ["## Target and metrics", "", f"- kind: {code(plan.target.kind)}", f"- {describe_target(plan)}"]
    if plan.metrics is not None:
        out.append(
            f"- metrics: Prometheus at {code(plan.metrics.prometheus_url)}, "
            f"evaluated every {plan.metrics.interval}"
        )
    else:
        out.append("- metrics: none (breaches only from monitors via `report_breach`)")
    out.append("")

    # stages
    out += ["## Stages", ""]
    out += table(
        ["#", "Stage", "Tier", "Scope", "Window", "Approvals (one per role)", "Remind after"],
        [_stage_row(plan, i, s) for i, s in enumerate(plan.stages)],
    )
    out.append("")

    # authority
    out += ["## Authority", ""]
    verbs, rows = authority_matrix(plan)
    if verbs:
        out += table(["Verb", *[s.name for s in plan.stages]], rows)
        out += ["", f"auto: acts alone; review: a human reviews each action; forbid: never; "
                f"{NOT_GRANTED}: not yet granted. Authority only widens from stage to stage."]
    else:
        out.append("No verbs granted.")
    out.append("")

    # thresholds
    out += ["## Thresholds", ""]
    interval = plan.metrics.interval if plan.metrics is not None else None
    any_threshold = False
    for s in plan.stages:
        if not s.thresholds:
            continue
        any_threshold = True
        out += [f"### {s.name}", ""]
        out += table(
            ["Threshold", "Query", "Stop rule"],
            [[t.name, code(t.query), describe_stop_rule(t, interval)] for t in s.thresholds],
        )
        out.append("")
    if any_threshold:
        out += [
            "Thresholds of the stage whose scope is in force are evaluated while not held; "
            "a window is clean only with data for at least 90% of the evaluations.",
            "",
        ]
    else:
        out += ["No thresholds; breaches come only from monitors via `report_breach`.", ""]

    # escalation
    esc = plan.escalation
    out += ["## Escalation", ""]
    for level, role in enumerate(esc.chain):
        prefix = "page" if level == 0 else f"after {esc.ack_within} unacknowledged, page"
        out.append(f"{level + 1}. {prefix} {role_with_identities(plan, role)}")
    out += [
        "",
        f"- acknowledge within: {esc.ack_within} (past the last, the whole chain is paged "
        f"again every {esc.ack_within})",
        f"- max hold: {esc.max_hold} (a hold or narrow this long becomes a rollback)"
        if esc.max_hold
        else "- max hold: none (a hold lasts until resumed)",
        "",
    ]

    # notifications
    out += ["## Notifications", ""]
    if plan.notify:
        for n in plan.notify:
            secret_env = getattr(n, "secret_env", None)
            signed = f", signed with ${secret_env}" if secret_env else ""
            out.append(f"- {n.kind} {code(n.destination())}{signed}")
    else:
        out.append("None configured (escalation pages still go to the chain).")
    out.append("")

    # handoff
    out += ["## Handoff", ""]
    handoff_rows = [
        [s.name, h.item, h.to, ", ".join(plan.role_identities(h.to)) or "—"]
        for s in plan.stages
        for h in s.handoff
    ]
    if handoff_rows:
        out += table(["Stage", "Item", "Receiving role", "Identities"], handoff_rows)
        out += ["", "A stage is left only when its window is clean and all its items are acknowledged."]
    else:
        out.append("No handoff items.")
    out.append("")
    summary = f"{_plural(len(plan.stages), 'stage')}, {_plural(len(handoff_rows), 'handoff item')}"
    out += [f"_{summary}._", ""]
    return "\n".join(out)
