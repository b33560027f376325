"""Every plan validation rule: each failure names its path, says why, and gives the YAML line."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rollout.durations import parse_duration
from rollout.errors import PlanError, UsageError
from rollout.plan import Plan, load_plan, parse_plan

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))

LINE = re.compile(r" \(line (\d+)\)$")


def base() -> dict[str, Any]:
    """A valid plan using every feature; tests mutate a fresh copy."""
    return copy.deepcopy(
        {
            "apiVersion": "rollout/v1",
            "name": "demo-agent",
            "description": "Drafts replies to support tickets",
            "owners": {
                "rollout": "alice@example.com",
                "workflow": "bob@example.com",
                "incident_response": "carol@example.com",
            },
            "approvers": {
                "risk": ["erin@example.com"],
                "engineering": ["frank@example.com", "gina@example.com"],
                "operations": ["hank@example.com"],
            },
            "distinct_from": {"risk": ["workflow"]},
            "target": {
                "kind": "webhook",
                "url": "http://127.0.0.1:8000/exposure",
                "secret_env": "ROLLOUT_WEBHOOK_SECRET",
            },
            "metrics": {"prometheus_url": "http://127.0.0.1:9090", "interval": "30s"},
            "fallback": "Route every ticket to the human queue",
            "escalation": {"ack_within": "5m", "chain": ["incident_response", "rollout"], "max_hold": "7d"},
            "notify": [{"kind": "webhook", "url": "http://127.0.0.1:8000/notify"}],
            "stages": [
                {
                    "name": "pilot",
                    "tier": "pilot",
                    "scope": {"percent": 5, "segments": ["internal"]},
                    "authority": {"read": "auto", "draft": "auto", "send": "review", "refund": "forbid"},
                    "approvals": {"roles": ["engineering"]},
                    "window": "72h",
                    "thresholds": [
                        {
                            "name": "error_rate",
                            "query": "sum(rate(errors[5m])) / sum(rate(runs[5m]))",
                            "max": 0.02,
                            "for": 3,
                            "on_no_data": "hold",
                            "action": "hold",
                        }
                    ],
                    "handoff": [],
                },
                {
                    "name": "limited-25",
                    "tier": "limited",
                    "scope": {"percent": 25, "segments": ["internal", "smb"]},
                    "authority": {"send": "auto", "refund": "review"},
                    "approvals": {"roles": ["engineering", "operations"], "remind_after": "24h"},
                    "window": "5d",
                    "thresholds": [
                        {"name": "error_rate", "query": "errors", "max": 0.02, "for": 3},
                        {"name": "quality", "query": "quality", "min": 0.8, "on_no_data": "ignore",
                         "action": "narrow"},
                    ],
                    "handoff": [{"item": "Support leads briefed", "to": "operations"}],
                },
                {
                    "name": "system-of-record",
                    "tier": "system_of_record",
                    "scope": {"percent": 100},
                    "approvals": {"roles": ["risk", "engineering", "operations"]},
                    "window": "14d",
                    "handoff": [
                        {"item": "On-call rota includes the agent", "to": "operations"},
                        {"item": "Runbook reviewed", "to": "incident_response"},
                    ],
                },
            ],
        }
    )


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def problems_of(text: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_plan(text)
    assert info.value.exit_code == 2
    assert info.value.problems
    return info.value.problems


def mutated(fn: Callable[[dict[str, Any]], Any]) -> str:
    data = base()
    fn(data)
    return dump(data)


def expect(
    text: str,
    path: str,
    fragment: str,
    *,
    line: bool = True,
    line_has: str | None = None,
) -> str:
    """Assert a problem at exactly `path` whose message contains `fragment`.

    `line`: a `(line N)` suffix must be present (absent when False).
    `line_has`: the text on that line of the YAML must contain this.
    """
    problems = problems_of(text)
    found = [p for p in problems if p.startswith(f"{path}: ") and fragment in p]
    assert found, f"no problem at {path!r} containing {fragment!r} in {problems}"
    problem = found[0]
    m = LINE.search(problem)
    if line:
        assert m, f"no line number in {problem!r}"
        if line_has is not None:
            assert line_has in text.splitlines()[int(m.group(1)) - 1], (problem, text)
    else:
        assert m is None, problem
    return problem


def stage(data: dict[str, Any], i: int) -> dict[str, Any]:
    s: dict[str, Any] = data["stages"][i]
    return s


def extra_limited(name: str = "limited-50", percent: float = 50) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "limited",
        "scope": {"percent": percent, "segments": ["internal", "smb", "enterprise"]},
        "approvals": {"roles": ["operations"]},
        "window": "3d",
    }


# ---- the baseline ------------------------------------------------------------------


def test_base_plan_is_valid() -> None:
    plan = parse_plan(dump(base()))
    assert [s.tier for s in plan.stages] == ["pilot", "limited", "system_of_record"]
    assert plan.stages[0].thresholds[0].for_ == 3


def test_plan_error_is_a_usage_error_with_exit_code_2() -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(mutated(lambda d: d.pop("name")))
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 2
    assert info.value.message.startswith("invalid plan (1 problem)\n  name: ")


def test_every_problem_is_reported_at_once() -> None:
    def fn(d: dict[str, Any]) -> None:
        d["escalation"]["chain"].append("nobody")
        stage(d, 1)["scope"]["percent"] = 1
        stage(d, 2)["handoff"] = []

    problems = problems_of(mutated(fn))
    paths = {p.split(": ", 1)[0] for p in problems}
    assert {"escalation.chain[2]", "stages[1].scope.percent", "stages[2].handoff"} <= paths


def test_several_limited_waves_are_valid() -> None:
    plan = parse_plan(mutated(lambda d: d["stages"].insert(2, extra_limited())))
    assert [s.tier for s in plan.stages] == ["pilot", "limited", "limited", "system_of_record"]


def test_pilot_then_system_of_record_without_limited_is_valid() -> None:
    plan = parse_plan(mutated(lambda d: d["stages"].pop(1)))
    assert [s.name for s in plan.stages] == ["pilot", "system-of-record"]


# ---- tiers ---------------------------------------------------------------------------


def test_first_stage_must_be_pilot() -> None:
    text = mutated(lambda d: stage(d, 0).update(tier="limited"))
    expect(text, "stages[0].tier", "the first stage must be tier 'pilot', got 'limited'", line_has="tier")
    expect(text, "stages[0].tier", "tier 'limited' must come after the pilot")


def test_last_stage_must_be_system_of_record() -> None:
    text = mutated(lambda d: stage(d, 2).update(tier="limited"))
    expect(text, "stages[2].tier", "the last stage must be tier 'system_of_record', got 'limited'",
           line_has="tier: limited")
    expect(text, "stages[2].tier", "tier 'limited' must come after the pilot and before system_of_record")


def test_pilot_only_plan_lacks_system_of_record() -> None:
    text = mutated(lambda d: d.update(stages=[d["stages"][0]]))
    expect(text, "stages[0].tier", "the last stage must be tier 'system_of_record', got 'pilot'")


def test_pilot_misplaced() -> None:
    text = mutated(lambda d: stage(d, 1).update(tier="pilot"))
    expect(text, "stages[1].tier", "tier 'pilot' may only be the first stage", line_has="tier: pilot")


def test_system_of_record_misplaced() -> None:
    text = mutated(lambda d: stage(d, 1).update(tier="system_of_record"))
    expect(text, "stages[1].tier", "tier 'system_of_record' may only be the last stage",
           line_has="tier: system_of_record")


def test_system_of_record_first() -> None:
    text = mutated(lambda d: d.update(stages=list(reversed(d["stages"]))))
    expect(text, "stages[0].tier", "the first stage must be tier 'pilot', got 'system_of_record'")
    expect(text, "stages[0].tier", "tier 'system_of_record' may only be the last stage")
    expect(text, "stages[2].tier", "the last stage must be tier 'system_of_record', got 'pilot'")
    expect(text, "stages[2].tier", "tier 'pilot' may only be the first stage")


def test_two_pilots() -> None:
    def fn(d: dict[str, Any]) -> None:
        second = copy.deepcopy(stage(d, 0))
        second["name"] = "pilot-2"
        d["stages"].insert(1, second)

    expect(mutated(fn), "stages[1].tier", "tier 'pilot' may only be the first stage")


def test_limited_after_system_of_record() -> None:
    text = mutated(lambda d: d["stages"].append(extra_limited("limited-late", 100)))
    expect(text, "stages[2].tier", "tier 'system_of_record' may only be the last stage")
    expect(text, "stages[3].tier", "the last stage must be tier 'system_of_record'")


def test_unknown_tier() -> None:
    text = mutated(lambda d: stage(d, 1).update(tier="beta"))
    expect(text, "stages[1].tier", "Input should be 'pilot', 'limited' or 'system_of_record'",
           line_has="tier: beta")


def test_no_stages() -> None:
    expect(mutated(lambda d: d.update(stages=[])), "stages", "at least 1 item", line_has="stages")


# ---- stage names -----------------------------------------------------------------------


def test_duplicate_stage_names() -> None:
    text = mutated(lambda d: stage(d, 1).update(name="pilot"))
    expect(text, "stages[1].name", "duplicate stage name 'pilot' (also stages[0])", line_has="name: pilot")


@pytest.mark.parametrize("name", ["Pilot", "pilot_1", "pilot 1", "", "p" * 64])
def test_bad_stage_name(name: str) -> None:
    text = mutated(lambda d: stage(d, 0).update(name=name))
    expect(text, "stages[0].name", "should match pattern", line_has="name:")


# ---- scope -----------------------------------------------------------------------------


def test_scope_percent_shrinks() -> None:
    text = mutated(lambda d: stage(d, 1)["scope"].update(percent=3))
    expect(text, "stages[1].scope.percent", "scope shrinks: 3% is lower than 5% in stage 'pilot'",
           line_has="percent: 3")


def test_scope_percent_equal_is_fine() -> None:
    parse_plan(mutated(lambda d: stage(d, 1)["scope"].update(percent=5)))


def test_scope_percent_shrinks_at_the_last_stage() -> None:
    text = mutated(lambda d: stage(d, 2)["scope"].update(percent=20))
    expect(text, "stages[2].scope.percent", "20% is lower than 25% in stage 'limited-25'")


@pytest.mark.parametrize("percent", [-1, 100.5, 1000])
def test_scope_percent_out_of_range(percent: float) -> None:
    text = mutated(lambda d: stage(d, 0)["scope"].update(percent=percent))
    expect(text, "stages[0].scope.percent", "Input should be", line_has="percent")


def test_scope_percent_not_a_number() -> None:
    text = mutated(lambda d: stage(d, 0)["scope"].update(percent="5%"))
    expect(text, "stages[0].scope.percent", "valid number", line_has="percent")


def test_scope_percent_nan() -> None:
    text = dump(base()).replace("percent: 5\n", "percent: .nan\n")
    expect(text, "stages[0].scope.percent", "finite number", line_has="percent: .nan")


def test_scope_segments_shrink() -> None:
    text = mutated(lambda d: stage(d, 1)["scope"].update(segments=["smb"]))
    expect(text, "stages[1].scope.segments", "scope shrinks: segments ['internal'] of stage 'pilot' are missing",
           line_has="segments")


def test_scope_segments_omitted_means_all_so_listing_some_later_shrinks() -> None:
    def fn(d: dict[str, Any]) -> None:
        del stage(d, 0)["scope"]["segments"]

    text = mutated(fn)
    expect(text, "stages[1].scope.segments", "stage 'pilot' covers all segments, this stage only")


def test_scope_segments_listed_then_omitted_widens() -> None:
    plan = parse_plan(dump(base()))
    assert plan.stages[1].scope.segments == ["internal", "smb"]
    assert plan.stages[2].scope.segments is None  # all segments: a superset of any list


def test_scope_segments_superset_in_another_order_is_fine() -> None:
    parse_plan(mutated(lambda d: stage(d, 1)["scope"].update(segments=["smb", "internal"])))


def test_scope_missing_percent() -> None:
    text = mutated(lambda d: stage(d, 0).update(scope={"segments": ["internal"]}))
    expect(text, "stages[0].scope.percent", "required field is missing", line_has="scope")


# ---- authority -------------------------------------------------------------------------


def test_authority_narrows() -> None:
    text = mutated(lambda d: stage(d, 1)["authority"].update(read="review"))
    expect(
        text,
        "stages[1].authority.read",
        "authority only widens: 'read' is 'auto' in an earlier stage and may not become 'review'",
        line_has="read: review",
    )


def test_authority_narrows_against_an_earlier_stage_not_the_previous_one() -> None:
    # refund: forbid (pilot) -> review (limited-25) -> forbid (system-of-record)
    text = mutated(lambda d: stage(d, 2).update(authority={"refund": "forbid"}))
    expect(text, "stages[2].authority.refund", "'refund' is 'review' in an earlier stage")


def test_authority_may_stay_or_widen() -> None:
    plan = parse_plan(mutated(lambda d: stage(d, 2).update(authority={"read": "auto", "refund": "auto"})))
    assert plan.effective_authority(2)["refund"] == "auto"


def test_authority_unknown_level() -> None:
    text = mutated(lambda d: stage(d, 0)["authority"].update(read="sometimes"))
    expect(text, "stages[0].authority.read", "Input should be 'auto', 'review' or 'forbid'",
           line_has="read: sometimes")


# ---- roles -----------------------------------------------------------------------------


def test_unknown_approval_role() -> None:
    text = mutated(lambda d: stage(d, 1)["approvals"]["roles"].append("legal"))
    expect(text, "stages[1].approvals.roles[2]", "unknown role 'legal' (known: engineering, operations, risk)",
           line_has="- legal")


def test_owner_key_is_not_an_approval_role() -> None:
    text = mutated(lambda d: stage(d, 0)["approvals"].update(roles=["rollout"]))
    expect(text, "stages[0].approvals.roles[0]", "unknown role 'rollout'")


def test_approval_role_listed_twice() -> None:
    text = mutated(lambda d: stage(d, 0)["approvals"].update(roles=["engineering", "engineering"]))
    expect(text, "stages[0].approvals.roles[1]", "role 'engineering' listed twice")


def test_approval_roles_not_a_list() -> None:
    text = mutated(lambda d: stage(d, 0)["approvals"].update(roles="engineering"))
    expect(text, "stages[0].approvals.roles", "valid list", line_has="roles")


def test_unknown_handoff_receiver() -> None:
    text = mutated(lambda d: stage(d, 2)["handoff"][0].update(to="support"))
    expect(text, "stages[2].handoff[0].to", "unknown role 'support'", line_has="to: support")


def test_handoff_receiver_may_be_an_owner_key() -> None:
    plan = parse_plan(dump(base()))
    assert plan.stages[2].handoff[1].to == "incident_response"


def test_duplicate_handoff_item() -> None:
    text = mutated(lambda d: stage(d, 2)["handoff"][1].update(item="On-call rota includes the agent"))
    expect(text, "stages[2].handoff[1].item", "duplicate handoff item")


def test_unknown_escalation_role() -> None:
    text = mutated(lambda d: d["escalation"]["chain"].append("pager"))
    expect(text, "escalation.chain[2]", "unknown role 'pager'", line_has="- pager")


def test_escalation_chain_may_use_approver_roles() -> None:
    parse_plan(mutated(lambda d: d["escalation"]["chain"].append("operations")))


def test_empty_escalation_chain() -> None:
    text = mutated(lambda d: d["escalation"].update(chain=[]))
    expect(text, "escalation.chain", "at least 1 item", line_has="chain")


def test_approver_role_clashing_with_owner_key() -> None:
    text = mutated(lambda d: d["approvers"].update(rollout=["zed@example.com"]))
    expect(text, "approvers.rollout", "clashes with an owner key", line_has="rollout:")


def test_approver_role_without_identities() -> None:
    text = mutated(lambda d: d["approvers"].update(risk=[]))
    expect(text, "approvers.risk", "at least 1 item", line_has="risk")


@pytest.mark.parametrize("identity", ["erin smith", " erin@example.com", ""])
def test_identity_must_be_single(identity: str) -> None:
    text = mutated(lambda d: d["approvers"].update(risk=[identity]))
    expect(text, "approvers.risk[0]", "single identity")


def test_owner_identity_must_be_single() -> None:
    text = mutated(lambda d: d["owners"].update(rollout="alice and bob"))
    expect(text, "owners.rollout", "single identity", line_has="rollout: alice and bob")


def test_distinct_from_unknown_role() -> None:
    text = mutated(lambda d: d["distinct_from"].update(legal=["workflow"]))
    expect(text, "distinct_from.legal", "unknown role 'legal'", line_has="legal:")


def test_distinct_from_unknown_other_role() -> None:
    text = mutated(lambda d: d["distinct_from"].update(risk=["workflow", "auditors"]))
    expect(text, "distinct_from.risk[1]", "unknown role 'auditors'")


# ---- thresholds ------------------------------------------------------------------------


def test_threshold_without_max_or_min() -> None:
    text = mutated(lambda d: stage(d, 0)["thresholds"][0].pop("max"))
    expect(text, "stages[0].thresholds[0]", "threshold 'error_rate' needs 'max', 'min' or both",
           line_has="name: error_rate")


@pytest.mark.parametrize("value", [0, -1])
def test_threshold_for_below_one(value: int) -> None:
    text = mutated(lambda d: stage(d, 0)["thresholds"][0].update({"for": value}))
    expect(text, "stages[0].thresholds[0].for", "greater than or equal to 1", line_has="for:")


def test_threshold_for_not_an_integer() -> None:
    text = mutated(lambda d: stage(d, 0)["thresholds"][0].update({"for": 2.5}))
    expect(text, "stages[0].thresholds[0].for", "valid integer")


def test_threshold_python_name_for_underscore_is_an_unknown_key() -> None:
    def fn(d: dict[str, Any]) -> None:
        t = stage(d, 0)["thresholds"][0]
        t["for_"] = t.pop("for")

    expect(mutated(fn), "stages[0].thresholds[0].for_", "unknown key", line_has="for_:")


def test_threshold_min_above_max() -> None:
    text = mutated(lambda d: stage(d, 0)["thresholds"][0].update(min=0.5))
    expect(text, "stages[0].thresholds[0].min", "min 0.5 is above max 0.02", line_has="min: 0.5")


def test_threshold_min_equal_max_is_fine() -> None:
    parse_plan(mutated(lambda d: stage(d, 0)["thresholds"][0].update(min=0.02)))


def test_threshold_nan_bound() -> None:
    text = dump(base()).replace("max: 0.02\n    for: 3", "max: .nan\n    for: 3")
    assert ".nan" in text
    expect(text, "stages[0].thresholds[0].max", "finite number", line_has="max: .nan")


def test_duplicate_threshold_name_in_a_stage() -> None:
    text = mutated(lambda d: stage(d, 1)["thresholds"][1].update(name="error_rate"))
    expect(text, "stages[1].thresholds[1].name", "duplicate threshold name 'error_rate'")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("on_no_data", "panic", "Input should be 'hold', 'breach' or 'ignore'"),
        ("action", "page", "Input should be 'hold', 'narrow' or 'rollback'"),
        ("name", "error rate", "should match pattern"),
        ("query", "", "at least 1 character"),
        ("max", "high", "valid number"),
    ],
)
def test_threshold_bad_values(key: str, value: Any, fragment: str) -> None:
    text = mutated(lambda d: stage(d, 0)["thresholds"][0].update({key: value}))
    expect(text, f"stages[0].thresholds[0].{key}", fragment, line_has=f"{key}:")


def test_thresholds_need_metrics() -> None:
    text = mutated(lambda d: d.pop("metrics"))
    expect(text, "stages[0].thresholds", "thresholds need 'metrics.prometheus_url'", line_has="thresholds")
    expect(text, "stages[1].thresholds", "thresholds need 'metrics.prometheus_url'")


def test_no_thresholds_no_metrics_is_fine() -> None:
    def fn(d: dict[str, Any]) -> None:
        d.pop("metrics")
        for s in d["stages"]:
            s.pop("thresholds", None)

    parse_plan(mutated(fn))


# ---- handoff ---------------------------------------------------------------------------


def test_system_of_record_without_handoff() -> None:
    text = mutated(lambda d: stage(d, 2).update(handoff=[]))
    expect(text, "stages[2].handoff", "the system_of_record stage needs at least one handoff item",
           line_has="handoff: []")


def test_system_of_record_with_handoff_omitted() -> None:
    text = mutated(lambda d: stage(d, 2).pop("handoff"))
    # no `handoff` key in the YAML: the line is the stage's own
    expect(text, "stages[2].handoff", "needs at least one handoff item", line_has="name: system-of-record")


def test_handoff_item_missing_fields() -> None:
    text = mutated(lambda d: stage(d, 2)["handoff"].append({"item": "Dashboards"}))
    expect(text, "stages[2].handoff[2].to", "required field is missing", line_has="item: Dashboards")


# ---- durations -------------------------------------------------------------------------

DURATION_FIELDS: list[tuple[str, Callable[[dict[str, Any], Any], None]]] = [
    ("stages[0].window", lambda d, v: stage(d, 0).update(window=v)),
    ("stages[1].approvals.remind_after", lambda d, v: stage(d, 1)["approvals"].update(remind_after=v)),
    ("escalation.ack_within", lambda d, v: d["escalation"].update(ack_within=v)),
    ("escalation.max_hold", lambda d, v: d["escalation"].update(max_hold=v)),
    ("metrics.interval", lambda d, v: d["metrics"].update(interval=v)),
    ("target.timeout", lambda d, v: d["target"].update(timeout=v)),
]


@pytest.mark.parametrize(("path", "setter"), DURATION_FIELDS, ids=[p for p, _ in DURATION_FIELDS])
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("72x", "invalid duration '72x'"),
        ("0s", "duration '0s' must be greater than zero"),
        ("-5m", "invalid duration '-5m'"),
        ("", "empty duration"),
        ("5 m", "invalid duration"),
        ("1h30", "invalid duration"),
        ("h", "invalid duration"),
        (5, "valid string"),
        ("99999999999999999999d", "too long"),
    ],
)
def test_bad_durations(
    path: str, setter: Callable[[dict[str, Any], Any], None], value: Any, fragment: str
) -> None:
    data = base()
    setter(data, value)
    text = dump(data)
    last = path.rsplit(".", 1)[-1]
    expect(text, path, fragment, line_has=f"{last}:")


@pytest.mark.parametrize(("path", "setter"), DURATION_FIELDS, ids=[p for p, _ in DURATION_FIELDS])
@pytest.mark.parametrize("value", ["366d", "365d1s", "53w", "8761h"])
def test_durations_longer_than_365d_are_refused(
    path: str, setter: Callable[[dict[str, Any], Any], None], value: str
) -> None:
    data = base()
    setter(data, value)
    last = path.rsplit(".", 1)[-1]
    expect(dump(data), path, f"duration '{value}' is too long: at most 365d", line_has=f"{last}:")


def test_durations_of_exactly_365d_are_accepted() -> None:
    def fn(d: dict[str, Any]) -> None:
        stage(d, 0)["window"] = "365d"
        d["escalation"]["max_hold"] = "8760h"
        stage(d, 1)["approvals"]["remind_after"] = "52w"

    plan = parse_plan(mutated(fn))
    assert parse_duration(plan.stages[0].window) == timedelta(days=365)


@pytest.mark.parametrize(("window", "interval"), [("20s", "30s"), ("1m", "5m"), ("1h", "1h1s")])
def test_window_shorter_than_metrics_interval_is_refused(window: str, interval: str) -> None:
    def fn(d: dict[str, Any]) -> None:
        stage(d, 1)["window"] = window
        d["metrics"]["interval"] = interval

    problem = expect(mutated(fn), "stages[1].window", "shorter than metrics.interval", line_has="window:")
    assert f"window {window}" in problem and f"({interval})" in problem


def test_window_as_long_as_metrics_interval_is_accepted() -> None:
    def fn(d: dict[str, Any]) -> None:
        for s in d["stages"]:
            s["window"] = "5m"
        d["metrics"]["interval"] = "5m"

    plan = parse_plan(mutated(fn))
    assert {s.window for s in plan.stages} == {"5m"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("72h", timedelta(hours=72)),
        ("14d", timedelta(days=14)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2w", timedelta(weeks=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["72x", "0s", "-5m", "", "  ", "5", "m", "1h30", "5 m", "0m0s"])
def test_durations_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_valid_durations_in_a_plan() -> None:
    def fn(d: dict[str, Any]) -> None:
        stage(d, 0)["window"] = "1h30m"
        d["escalation"]["max_hold"] = "14d"
        d["metrics"]["interval"] = "30s"

    plan = parse_plan(mutated(fn))
    assert parse_duration(plan.stages[0].window) == timedelta(minutes=90)


# ---- unknown keys ----------------------------------------------------------------------

UNKNOWN_KEY_CASES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("colour", lambda d: d.update(colour="blue")),
    ("owners.pager", lambda d: d["owners"].update(pager="x@example.com")),
    ("target.colr", lambda d: d["target"].update(colr=1)),
    ("metrics.step", lambda d: d["metrics"].update(step="1m")),
    ("escalation.ack", lambda d: d["escalation"].update(ack="5m")),
    ("notify[0].channel", lambda d: d["notify"][0].update(channel="#ops")),
    ("stages[0].windw", lambda d: stage(d, 0).update(windw="1h")),
    ("stages[0].scope.pct", lambda d: stage(d, 0)["scope"].update(pct=5)),
    ("stages[1].approvals.role", lambda d: stage(d, 1)["approvals"].update(role="risk")),
    ("stages[0].thresholds[0].maximum", lambda d: stage(d, 0)["thresholds"][0].update(maximum=1)),
    ("stages[2].handoff[0].owner", lambda d: stage(d, 2)["handoff"][0].update(owner="x")),
]


@pytest.mark.parametrize(("path", "fn"), UNKNOWN_KEY_CASES, ids=[p for p, _ in UNKNOWN_KEY_CASES])
def test_unknown_keys_are_errors(path: str, fn: Callable[[dict[str, Any]], None]) -> None:
    last = re.split(r"[.\]]", path)[-1]
    expect(mutated(fn), path, "unknown key (remove it or check its spelling)", line_has=f"{last}:")


def test_unknown_key_for_another_target_kind() -> None:
    # `path` belongs to file targets, not webhook targets
    text = mutated(lambda d: d["target"].update(path="exposure.json"))
    expect(text, "target.path", "unknown key", line_has="path:")


# ---- missing required fields -----------------------------------------------------------

MISSING_CASES: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] = [
    ("apiVersion", lambda d: d.pop("apiVersion"), False),
    ("name", lambda d: d.pop("name"), False),
    ("owners", lambda d: d.pop("owners"), False),
    ("owners.rollout", lambda d: d["owners"].pop("rollout"), True),
    ("owners.incident_response", lambda d: d["owners"].pop("incident_response"), True),
    ("approvers", lambda d: d.pop("approvers"), False),
    ("target", lambda d: d.pop("target"), False),
    ("target.url", lambda d: d["target"].pop("url"), True),
    ("metrics.prometheus_url", lambda d: d["metrics"].pop("prometheus_url"), True),
    ("fallback", lambda d: d.pop("fallback"), False),
    ("escalation", lambda d: d.pop("escalation"), False),
    ("escalation.ack_within", lambda d: d["escalation"].pop("ack_within"), True),
    ("escalation.chain", lambda d: d["escalation"].pop("chain"), True),
    ("stages", lambda d: d.pop("stages"), False),
    ("stages[0].name", lambda d: stage(d, 0).pop("name"), True),
    ("stages[0].tier", lambda d: stage(d, 0).pop("tier"), True),
    ("stages[0].scope", lambda d: stage(d, 0).pop("scope"), True),
    ("stages[0].window", lambda d: stage(d, 0).pop("window"), True),
    ("stages[0].thresholds[0].name", lambda d: stage(d, 0)["thresholds"][0].pop("name"), True),
    ("stages[0].thresholds[0].query", lambda d: stage(d, 0)["thresholds"][0].pop("query"), True),
    ("stages[2].handoff[0].item", lambda d: stage(d, 2)["handoff"][0].pop("item"), True),
    ("notify[0].url", lambda d: d["notify"][0].pop("url"), True),
]


@pytest.mark.parametrize(("path", "fn", "has_line"), MISSING_CASES, ids=[p for p, _, _ in MISSING_CASES])
def test_missing_required_fields(path: str, fn: Callable[[dict[str, Any]], Any], has_line: bool) -> None:
    # a missing key has no line of its own: nested ones point at their parent mapping
    expect(mutated(fn), path, "required field is missing", line=has_line)


def test_missing_target_kind() -> None:
    text = mutated(lambda d: d["target"].pop("kind"))
    expect(text, "target", "Unable to extract tag using discriminator 'kind'", line_has="target:")


# ---- top-level fields ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Support-Agent", "support_agent", "support agent", "", "a" * 64, "agent!"])
def test_bad_plan_name(name: str) -> None:
    text = mutated(lambda d: d.update(name=name))
    expect(text, "name", "String should match pattern '^[a-z0-9-]{1,63}$'", line_has="name:")


def test_longest_plan_name_is_fine() -> None:
    assert parse_plan(mutated(lambda d: d.update(name="a" * 63))).name == "a" * 63


@pytest.mark.parametrize("version", ["rollout/v2", "v1", 1])
def test_wrong_api_version(version: Any) -> None:
    text = mutated(lambda d: d.update(apiVersion=version))
    expect(text, "apiVersion", "Input should be 'rollout/v1'", line_has="apiVersion:")


def test_unknown_target_kind() -> None:
    text = mutated(lambda d: d.update(target={"kind": "carrier-pigeon"}))
    expect(text, "target", "Input tag 'carrier-pigeon' found using 'kind' does not match", line_has="target:")


@pytest.mark.parametrize(
    "target",
    [
        {"kind": "log"},
        {"kind": "log", "path": "rollout.log"},
        {"kind": "file", "path": "exposure.json", "flag": "reply-agent"},
        {"kind": "unleash", "url": "https://unleash.example.com/api", "token_env": "UNLEASH_TOKEN",
         "feature": "reply-agent", "project": "default", "environment": "production"},
        {"kind": "webhook", "url": "https://example.com/hook", "timeout": "3s"},
    ],
)
def test_every_target_kind_is_accepted(target: dict[str, Any]) -> None:
    assert parse_plan(mutated(lambda d: d.update(target=target))).target.kind == target["kind"]


@pytest.mark.parametrize(
    ("target", "path", "fragment"),
    [
        ({"kind": "file", "path": ""}, "target.path", "at least 1 character"),
        ({"kind": "file"}, "target.path", "required field is missing"),
        ({"kind": "file", "path": "x.json", "flag": "bad flag!"}, "target.flag", "should match pattern"),
        ({"kind": "unleash", "url": "https://u.example.com"}, "target.token_env", "required field is missing"),
        ({"kind": "unleash", "url": "u.example.com", "token_env": "T"}, "target.url", "should match pattern"),
        ({"kind": "log", "url": "http://x"}, "target.url", "unknown key"),
    ],
)
def test_target_fields_per_kind(target: dict[str, Any], path: str, fragment: str) -> None:
    expect(mutated(lambda d: d.update(target=target)), path, fragment, line_has="")


def test_webhook_target_url_scheme() -> None:
    text = mutated(lambda d: d["target"].update(url="ftp://example.com"))
    expect(text, "target.url", "should match pattern", line_has="url: ftp://")


def test_unknown_notifier_kind() -> None:
    text = mutated(lambda d: d["notify"][0].update(kind="pager"))
    expect(text, "notify[0]", "'kind' must be one of: webhook, slack, teams, pagerduty, email", line_has="kind: pager")


def test_fallback_must_not_be_empty() -> None:
    expect(mutated(lambda d: d.update(fallback="")), "fallback", "at least 1 character", line_has="fallback:")


def test_wrong_type_for_a_section() -> None:
    expect(mutated(lambda d: d.update(owners="alice@example.com")), "owners", "valid dictionary",
           line_has="owners:")


# ---- signed approvals ------------------------------------------------------------------


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_signed_approvals_without_public_keys() -> None:
    text = mutated(lambda d: d.update(require_signed_approvals=True))
    # `public_keys` is absent from the YAML, so there is no line to point at
    expect(text, "public_keys", "require_signed_approvals is set but approver 'erin@example.com' has no public key",
           line=False)
    problems = problems_of(text)
    assert sum("has no public key" in p for p in problems) == 4  # every approver identity


def test_signed_approvals_with_some_keys_missing() -> None:
    def fn(d: dict[str, Any]) -> None:
        d["require_signed_approvals"] = True
        d["public_keys"] = {ident: _public_key() for ident in ["erin@example.com", "frank@example.com"]}

    text = mutated(fn)
    expect(text, "public_keys", "approver 'gina@example.com' has no public key", line_has="public_keys:")
    problems = problems_of(text)
    assert not any("erin@example.com' has no" in p for p in problems)


def test_signed_approvals_with_all_keys_is_valid() -> None:
    def fn(d: dict[str, Any]) -> None:
        d["require_signed_approvals"] = True
        ids = {x for members in d["approvers"].values() for x in members}
        d["public_keys"] = {ident: _public_key() for ident in sorted(ids)}

    plan = parse_plan(mutated(fn))
    assert plan.require_signed_approvals


@pytest.mark.parametrize(
    "key",
    ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(33)).decode(), ""],
)
def test_bad_public_key(key: str) -> None:
    text = mutated(lambda d: d.update(public_keys={"erin@example.com": key}))
    expect(text, "public_keys.erin@example.com", "not a base64 Ed25519 public key (32 bytes)",
           line_has="erin@example.com:")


def test_require_signed_approvals_must_be_a_boolean() -> None:
    text = mutated(lambda d: d.update(require_signed_approvals="yes please"))
    expect(text, "require_signed_approvals", "valid boolean", line_has="require_signed_approvals:")


# ---- YAML-level problems ---------------------------------------------------------------


def test_duplicate_top_level_key() -> None:
    text = dump(base()).replace("description:", "name: other\ndescription:", 1)
    problem = expect(text, "(plan)", "not valid YAML: duplicate key 'name'")
    assert problem.endswith("(line 3)")
    assert text.splitlines()[2] == "name: other"


def test_duplicate_nested_key() -> None:
    text = dump(base()).replace("  window: 72h\n", "  window: 72h\n  window: 1h\n", 1)
    problem = expect(text, "(plan)", "duplicate key 'window'")
    line = int(LINE.search(problem).group(1))  # type: ignore[union-attr]
    assert text.splitlines()[line - 1].strip() == "window: 1h"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "", "~\n", "---\n"])
def test_plan_must_be_a_mapping(text: str) -> None:
    expect(text, "(plan)", "the plan must be a YAML mapping", line=False)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("apiVersion: rollout/v1\nstages: [1,\nname: x\n", 4),
        ("apiVersion: rollout/v1\nowners:\n  rollout: a\n rogue: b\n", 4),
        ("name: x\n\tdescription: tab\n", 2),
        ("name: 'unterminated\n", 2),
        ("a: b: c\n", 1),
    ],
)
def test_invalid_yaml(text: str, line: int) -> None:
    problem = expect(text, "(plan)", "not valid YAML: ")
    assert problem.endswith(f"(line {line})"), problem


def test_unsafe_yaml_tags_are_refused() -> None:
    expect("!!python/object/apply:os.system ['true']\n", "(plan)", "not valid YAML")


def test_load_plan_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(tmp_path / "nope.yaml")
    assert info.value.problems[0].startswith("(plan): file not found: ")


def test_load_plan_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(PlanError) as info:
        load_plan(bad)
    assert info.value.problems[0].startswith("(plan): cannot read ")


def test_line_numbers_point_at_the_offending_key_in_handwritten_yaml() -> None:
    text = EXAMPLES_BY_NAME["support-reply-agent.yaml"].replace("window: 20s", "window: 20 s", 1)
    problem = expect(text, "stages[0].window", "invalid duration '20 s'")
    line = int(LINE.search(problem).group(1))  # type: ignore[union-attr]
    assert text.splitlines()[line - 1] == "    window: 20 s"


# ---- canonical JSON and plan_hash ------------------------------------------------------


def _reverse_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _reverse_keys(node[k]) for k in reversed(list(node))}
    if isinstance(node, list):
        return [_reverse_keys(x) for x in node]
    return node


def test_plan_hash_stable_across_formatting() -> None:
    data = base()
    block = dump(data)
    flow = yaml.safe_dump(data, default_flow_style=True, sort_keys=False)
    reordered = dump(_reverse_keys(data))
    sorted_keys = yaml.safe_dump(data, sort_keys=True, indent=4, width=40)
    as_json = json.dumps(data, indent=1)
    commented = "# a comment\n\n" + block.replace("\n", "   # trailing\n", 3)
    hashes = {parse_plan(t).plan_hash() for t in (block, flow, reordered, sorted_keys, as_json, commented)}
    assert len(hashes) == 1
    canon = {parse_plan(t).canonical_json() for t in (block, flow, reordered)}
    assert len(canon) == 1


def test_plan_hash_ignores_spelled_out_defaults_and_int_vs_float() -> None:
    def fn(d: dict[str, Any]) -> None:
        d["stages"][1]["thresholds"][0].update(on_no_data="hold", action="hold")  # the defaults
        d["stages"][0]["scope"]["percent"] = 5.0
        d["require_signed_approvals"] = False

    assert parse_plan(mutated(fn)).plan_hash() == parse_plan(dump(base())).plan_hash()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: stage(d, 0).update(window="73h"),
        lambda d: stage(d, 0)["thresholds"][0].update(max=0.03),
        lambda d: stage(d, 0)["scope"].update(percent=6),
        lambda d: d["approvers"]["engineering"].reverse(),
        lambda d: d.update(description="Different words"),
        lambda d: d["escalation"]["chain"].reverse(),
    ],
)
def test_plan_hash_changes_when_a_value_changes(change: Callable[[dict[str, Any]], None]) -> None:
    assert parse_plan(mutated(change)).plan_hash() != parse_plan(dump(base())).plan_hash()


def test_canonical_json_shape() -> None:
    plan = parse_plan(dump(base()))
    canon = plan.canonical_json()
    assert plan.plan_hash() == hashlib.sha256(canon.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", plan.plan_hash())
    assert ", " not in canon and ": " not in canon.replace('": "', "")  # compact separators
    data = json.loads(canon)
    assert list(data) == sorted(data)  # sorted keys
    assert data["stages"][0]["thresholds"][0]["for"] == 3  # the plan's spelling, not `for_`
    assert "for_" not in canon
    # the canonical form is itself a valid plan with the same hash
    assert parse_plan(canon).plan_hash() == plan.plan_hash()


# ---- the examples ----------------------------------------------------------------------

EXAMPLES_BY_NAME = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES}


def test_both_examples_exist() -> None:
    assert {"support-reply-agent.yaml", "model-version-rollout.yaml"} <= set(EXAMPLES_BY_NAME)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path: Path) -> None:
    plan = load_plan(path)
    assert isinstance(plan, Plan)
    assert plan.stages[0].tier == "pilot" and plan.stages[-1].tier == "system_of_record"
    assert load_plan(path).plan_hash() == plan.plan_hash()


def test_model_version_example_uses_every_kind_of_stop_rule() -> None:
    plan = parse_plan(EXAMPLES_BY_NAME["model-version-rollout.yaml"])
    assert plan.target.kind == "log"
    assert plan.metrics is not None
    assert plan.metrics.prometheus_url == "http://127.0.0.1:9090"
    assert parse_duration(plan.metrics.interval) == timedelta(seconds=5)
    assert [s.tier for s in plan.stages] == ["pilot", "limited", "limited", "system_of_record"]
    thresholds = [t for s in plan.stages for t in s.thresholds]
    assert {t.action for t in thresholds} == {"hold", "narrow", "rollback"}
    assert {t.on_no_data for t in thresholds} == {"hold", "breach", "ignore"}
    assert any(t.min is not None for t in thresholds)
    assert all(parse_duration(s.window) <= timedelta(seconds=30) for s in plan.stages)
    assert all(s.handoff for s in plan.stages[1:])
