"""Prometheus alerting rules generated from a plan's thresholds (`rollout plan rules FILE`).

So that the Alertmanager path and the controller's own polling judge the same
numbers, each threshold of each stage becomes one alerting rule:

- `expr`: the threshold's query compared with its `max` (value above it fails) and/or
  `min` (value below it fails), joined with the info metric the worker exports,
  `rollout_exposure_info{rollout, stage} 1`, so that a rule fires only while its stage
  is the one whose scope is in force (`exposure_stage`):

      (<query>) > <max> and on() (rollout_exposure_info{rollout="x",stage="y"} == 1)

  `and on()` keeps the query's own labels (none, for the usual single unlabelled
  series) and matches any series of the info metric, however many workers export it;
- `for`: the threshold's `for` × `metrics.interval` (the group is evaluated every
  `metrics.interval`, the controller's own cadence);
- labels `rollout` (plan name), `stage`, `threshold`, `severity: page`.

`on_no_data: breach` and `hold` add a second rule, `RolloutThresholdNoData`, that fires
when the query has no finite value (empty result, NaN, ±Inf), as the controller counts
no data. Its label `on_no_data` says which: `breach` is reported as a breach of the
threshold (its action applies), `hold` is inconclusive and only holds (the receiver
reports it without a threshold name, which the rollout treats as `hold`).
`on_no_data: ignore` adds none.

Pure: no I/O; the CLI prints `render_rules(...)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import yaml

from rollout.durations import parse_duration
from rollout.plan import Plan, Stage, Threshold

EXPOSURE_INFO = "rollout_exposure_info"
BREACH_ALERT = "RolloutThresholdBreached"
NO_DATA_ALERT = "RolloutThresholdNoData"
RULE_LABELS = ("rollout", "stage", "threshold")


def prometheus_duration(td: timedelta) -> str:
    """A Prometheus duration for `td`, exact to the millisecond: 15s, 1m30s, 1h, 1500ms."""
    ms = round(td.total_seconds() * 1000)
    if ms <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            n, ms = divmod(ms, size)
            out.append(f"{n}{unit}")
    return "".join(out)


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def promql_number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


def exposure_selector(plan_name: str, stage: str) -> str:
    return f"{EXPOSURE_INFO}{{rollout={promql_string(plan_name)},stage={promql_string(stage)}}}"


def _exposed(plan_name: str, stage: str) -> str:
    return f"and on() ({exposure_selector(plan_name, stage)} == 1)"


def failing_expr(plan_name: str, stage: str, t: Threshold) -> str:
    """The PromQL that has a value while `t` fails and `stage` is the exposed one."""
    parts = []
    if t.max is not None:
        parts.append(f"({t.query}) > {promql_number(t.max)}")
    if t.min is not None:
        parts.append(f"({t.query}) < {promql_number(t.min)}")
    cond = parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"
    return f"{cond} {_exposed(plan_name, stage)}"


def no_data_expr(plan_name: str, stage: str, t: Threshold) -> str:
    """The PromQL that has a value while `t`'s query has no finite value (empty, NaN, ±Inf)."""
    return f"absent((({t.query}) > -Inf) < +Inf) {_exposed(plan_name, stage)}"


def _limits(t: Threshold) -> str:
    parts = []
    if t.max is not None:
        parts.append(f"at most {promql_number(t.max)}")
    if t.min is not None:
        parts.append(f"at least {promql_number(t.min)}")
    return " and ".join(parts)


def stage_rules(plan: Plan, stage: Stage, interval: timedelta) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for t in stage.thresholds:
        labels = {"rollout": plan.name, "stage": stage.name, "threshold": t.name, "severity": "page"}
        wait = prometheus_duration(interval * t.for_)
        evals = f"{t.for_} consecutive evaluation{'s' if t.for_ != 1 else ''} every {prometheus_duration(interval)}"
        rules.append(
            {
                "alert": BREACH_ALERT,
                "expr": failing_expr(plan.name, stage.name, t),
                "for": wait,
                "labels": dict(labels),
                "annotations": {
                    "value": "{{ $value }}",
                    "summary": f"{plan.name} {stage.name}: {t.name} = {{{{ $value }}}}, must be {_limits(t)}",
                    "description": (
                        f"Threshold {t.name} of stage {stage.name} failed {evals} while {stage.name}'s scope "
                        f"is in force; the rollout applies its action ({t.action}). Query: {t.query}"
                    ),
                },
            }
        )
        if t.on_no_data in ("breach", "hold"):
            then = (
                f"a breach of {t.name} (action {t.action})"
                if t.on_no_data == "breach"
                else "inconclusive: the rollout holds"
            )
            rules.append(
                {
                    "alert": NO_DATA_ALERT,
                    "expr": no_data_expr(plan.name, stage.name, t),
                    "for": wait,
                    "labels": {**labels, "on_no_data": t.on_no_data},
                    "annotations": {
                        "summary": f"{plan.name} {stage.name}: no data for {t.name}",
                        "description": (
                            f"The query of threshold {t.name} returned no finite value for {evals} while "
                            f"{stage.name}'s scope is in force; on_no_data: {t.on_no_data} ({then}). "
                            f"Query: {t.query}"
                        ),
                    },
                }
            )
    return rules


def plan_rule_group(plan: Plan) -> dict[str, Any] | None:
    """One rule group for a plan (None when no stage has a threshold)."""
    if plan.metrics is None:
        return None
    interval = parse_duration(plan.metrics.interval)
    rules = [r for stage in plan.stages for r in stage_rules(plan, stage, interval)]
    if not rules:
        return None
    return {"name": f"rollout-{plan.name}", "interval": prometheus_duration(interval), "rules": rules}


def rule_groups(plans: Iterable[Plan]) -> dict[str, Any]:
    """The `groups:` document for the given plans (in order; plans without thresholds add nothing)."""
    groups = [g for g in (plan_rule_group(p) for p in plans) if g is not None]
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_rules(plans: Iterable[Plan], *, sources: Iterable[str] = ()) -> str:
    """The rules as a Prometheus rule file (YAML), with a header naming the source plans."""
    names = list(sources)
    header = "# Generated by `rollout plan rules"
    header += (" " + " ".join(names)) if names else ""
    header += "`; do not edit: regenerate from the plans.\n"
    header += "# Each rule fires only while its stage is exposed (rollout_exposure_info, exported by the worker).\n"
    body = yaml.dump(rule_groups(plans), Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    return header + body
