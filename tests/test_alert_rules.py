"""`rollout plan rules`: Prometheus alerting rules generated from a plan's thresholds,
checked with the real `promtool` (check rules, test rules).

The shipped deploy/prometheus/rules.yml is the generator's output for examples/*.yaml,
and deploy/prometheus/rules_test.yml (regenerate with `python -m tests.test_alert_rules`)
shows every generated rule firing while its own stage is exposed and no other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from rollout.alert_rules import (
    BREACH_ALERT,
    NO_DATA_ALERT,
    plan_rule_group,
    render_rules,
    rule_groups,
)
from rollout.plan import Plan, load_plan, validate_plan_data
from tests.plans import plan_dict, with_thresholds

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
SHIPPED_RULES = REPO / "deploy" / "prometheus" / "rules.yml"
SHIPPED_RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yml"

# Series that make every threshold of the example plans fail, and the value each query then has.
EXAMPLE_BAD_SERIES = [
    {"series": 'ranking_errors_total{model="v3"}', "values": "0+10x100"},
    {"series": 'ranking_requests_total{model="v3"}', "values": "0+10x100"},
    {"series": 'ranking_request_seconds_bucket{model="v3",le="1"}', "values": "0x100"},
    {"series": 'ranking_request_seconds_bucket{model="v3",le="+Inf"}', "values": "0+10x100"},
    {"series": 'ranking_ndcg_at_10{model="v3"}', "values": "0.1x100"},
]
EXAMPLE_BAD_VALUES = {"error_rate": "1", "latency_p95": "1", "ndcg_at_10": "0.1"}
EXAMPLE_QUERY_LABELS = {"ndcg_at_10": {"model": "v3"}}  # avg_over_time keeps the series' labels


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        raise RuntimeError("promtool not found; run scripts/install-system-deps.sh")
    return found


def _expected(rule: dict[str, Any], value: str, query_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "exp_labels": {**(query_labels or {}), **rule["labels"]},
        "exp_annotations": {k: v.replace("{{ $value }}", value) for k, v in rule["annotations"].items()},
    }


def _info(plan: str, stage: str) -> dict[str, str]:
    return {"series": f'rollout_exposure_info{{rollout="{plan}",stage="{stage}",instance="worker-1"}}', "values": "1x100"}


def build_rules_test(
    plans: list[Plan],
    rule_file: str,
    bad_series: list[dict[str, str]],
    bad_values: dict[str, str],
    query_labels: dict[str, dict[str, str]],
    eval_time: str = "5m",
) -> dict[str, Any]:
    """A promtool test file: for each plan and each stage exposed in turn, (1) with every
    query failing, exactly that stage's breach rules fire; (2) with no data at all, exactly
    that stage's no-data rules fire; and with nothing exposed nothing fires."""
    tests: list[dict[str, Any]] = []
    for plan in plans:
        group = plan_rule_group(plan)
        if group is None:
            continue
        rules = group["rules"]
        for stage in plan.stages:
            own = [r for r in rules if r["labels"]["stage"] == stage.name]
            breach = [
                _expected(r, bad_values[r["labels"]["threshold"]], query_labels.get(r["labels"]["threshold"]))
                for r in own
                if r["alert"] == BREACH_ALERT
            ]
            no_data = [_expected(r, "1") for r in own if r["alert"] == NO_DATA_ALERT]
            tests.append({
                "name": f"{plan.name}: {stage.name} exposed, every query failing",
                "interval": group["interval"],
                "input_series": [*bad_series, _info(plan.name, stage.name)],
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": BREACH_ALERT, "exp_alerts": breach},
                    {"eval_time": eval_time, "alertname": NO_DATA_ALERT, "exp_alerts": []},
                ],
            })
            tests.append({
                "name": f"{plan.name}: {stage.name} exposed, no data",
                "interval": group["interval"],
                "input_series": [_info(plan.name, stage.name)],
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": BREACH_ALERT, "exp_alerts": []},
                    {"eval_time": eval_time, "alertname": NO_DATA_ALERT, "exp_alerts": no_data},
                ],
            })
        tests.append({
            "name": f"{plan.name}: nothing exposed, every query failing",
            "interval": group["interval"],
            "input_series": [*bad_series, _info("another-rollout", plan.stages[0].name)],
            "alert_rule_test": [
                {"eval_time": eval_time, "alertname": BREACH_ALERT, "exp_alerts": []},
                {"eval_time": eval_time, "alertname": NO_DATA_ALERT, "exp_alerts": []},
            ],
        })
    return {"rule_files": [rule_file], "evaluation_interval": "5s", "tests": tests}


def example_rules_test() -> str:
    doc = build_rules_test([load_plan(p) for p in EXAMPLES], "rules.yml", EXAMPLE_BAD_SERIES, EXAMPLE_BAD_VALUES,
                          EXAMPLE_QUERY_LABELS)
    header = (
        "# promtool test rules deploy/prometheus/rules_test.yml\n"
        "# Generated by `python -m tests.test_alert_rules`: every rule of rules.yml fires while its own\n"
        "# stage is exposed (rollout_exposure_info) and not while another stage, or none, is.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=1_000_000)


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def write_and_test(tmp_path: Path, plans: list[Plan], tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yml").write_text(render_rules(plans), encoding="utf-8")
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": "10s", "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return run_promtool("test", "rules", "test.yml", cwd=tmp_path)


def plan_with(*thresholds: dict[str, Any], stage: int = 0, interval: str = "10s") -> Plan:
    d = with_thresholds(plan_dict("agent"), stage, *thresholds)
    d["metrics"]["interval"] = interval
    return validate_plan_data(d)


# ---- the shipped rules -----------------------------------------------------------------


def test_shipped_rules_are_the_generators_output_for_the_examples() -> None:
    shipped = yaml.safe_load(SHIPPED_RULES.read_text(encoding="utf-8"))
    assert shipped == rule_groups([load_plan(p) for p in EXAMPLES]), (
        "deploy/prometheus/rules.yml is stale: rollout plan rules examples/*.yaml > deploy/prometheus/rules.yml"
    )
    n = sum(len(g["rules"]) for g in shipped["groups"])
    assert n == 19  # 9 thresholds of ranking-model-v3 + 10 no-data rules; support-reply-agent has none


def test_promtool_check_rules_accepts_the_shipped_and_generated_rules(tmp_path: Path) -> None:
    generated = tmp_path / "generated.yml"
    generated.write_text(render_rules([load_plan(p) for p in EXAMPLES]), encoding="utf-8")
    for path in (SHIPPED_RULES, generated):
        r = run_promtool("check", "rules", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS: 19 rules found" in r.stdout


def test_shipped_promtool_test_is_current_and_covers_every_rule() -> None:
    assert SHIPPED_RULES_TEST.read_text(encoding="utf-8") == example_rules_test(), (
        "deploy/prometheus/rules_test.yml is stale: python -m tests.test_alert_rules"
    )
    doc = yaml.safe_load(SHIPPED_RULES_TEST.read_text(encoding="utf-8"))
    keys = {"rollout", "stage", "threshold", "severity", "on_no_data"}
    expected_firing = {
        (case["alertname"], tuple(sorted((k, v) for k, v in a["exp_labels"].items() if k in keys)))
        for t in doc["tests"] for case in t["alert_rule_test"] for a in case["exp_alerts"]
    }
    shipped = yaml.safe_load(SHIPPED_RULES.read_text(encoding="utf-8"))
    every_rule = {(r["alert"], tuple(sorted(r["labels"].items()))) for g in shipped["groups"] for r in g["rules"]}
    assert len(every_rule) == 19
    assert every_rule == expected_firing


def test_each_example_rule_fires_for_its_own_stage_only() -> None:
    r = run_promtool("test", "rules", str(SHIPPED_RULES_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_a_plan_without_thresholds_gives_no_rules() -> None:
    assert rule_groups([load_plan(REPO / "examples" / "support-reply-agent.yaml")]) == {"groups": []}


# ---- what the rules mean, proved with promtool ------------------------------------------

MAX_RULE = {"name": "error_rate", "query": "sum(agent_error_ratio)", "max": 0.02, "for": 3,
            "on_no_data": "ignore", "action": "rollback"}


def test_rule_labels_and_for_is_for_times_interval() -> None:
    group = plan_rule_group(plan_with(MAX_RULE))
    assert group is not None and group["interval"] == "10s"
    [rule] = group["rules"]
    assert rule["for"] == "30s"
    assert rule["labels"] == {"rollout": "agent", "stage": "pilot", "threshold": "error_rate", "severity": "page"}
    assert 'and on() (rollout_exposure_info{rollout="agent",stage="pilot"} == 1)' in rule["expr"]


def test_max_rule_on_one_unlabelled_series_fires_after_for_times_interval(tmp_path: Path) -> None:
    plan = plan_with(MAX_RULE)
    [rule] = plan_rule_group(plan)["rules"]  # type: ignore[index]
    firing = _expected(rule, "0.5")
    r = write_and_test(tmp_path, [plan], [{
        "interval": "10s",
        "input_series": [
            {"series": 'agent_error_ratio{instance="a"}', "values": "0.5x30"},
            _info("agent", "pilot"),
        ],
        "alert_rule_test": [
            {"eval_time": "20s", "alertname": BREACH_ALERT, "exp_alerts": []},  # pending, not yet `for`
            {"eval_time": "30s", "alertname": BREACH_ALERT, "exp_alerts": [firing]},
        ],
    }])
    assert r.returncode == 0, r.stdout + r.stderr


def test_rule_does_not_fire_when_another_stage_is_exposed(tmp_path: Path) -> None:
    plan = plan_with(MAX_RULE)
    r = write_and_test(tmp_path, [plan], [{
        "interval": "10s",
        "input_series": [
            {"series": "agent_error_ratio", "values": "0.5x30"},
            _info("agent", "limited-25"),
            _info("other-rollout", "pilot"),
        ],
        "alert_rule_test": [{"eval_time": "2m", "alertname": BREACH_ALERT, "exp_alerts": []}],
    }])
    assert r.returncode == 0, r.stdout + r.stderr


def test_min_rule_fires_below_min_and_equal_passes(tmp_path: Path) -> None:
    plan = plan_with({"name": "quality", "query": "avg(agent_quality)", "min": 0.4, "for": 1, "on_no_data": "ignore"})
    [rule] = plan_rule_group(plan)["rules"]  # type: ignore[index]
    case: dict[str, Any] = {"interval": "10s", "alert_rule_test": [{"eval_time": "1m", "alertname": BREACH_ALERT}]}
    r = write_and_test(tmp_path, [plan], [
        {**case, "input_series": [{"series": "agent_quality", "values": "0.3x30"}, _info("agent", "pilot")],
         "alert_rule_test": [{**case["alert_rule_test"][0], "exp_alerts": [_expected(rule, "0.3")]}]},
        {**case, "input_series": [{"series": "agent_quality", "values": "0.4x30"}, _info("agent", "pilot")],
         "alert_rule_test": [{**case["alert_rule_test"][0], "exp_alerts": []}]},
    ])
    assert r.returncode == 0, r.stdout + r.stderr


def test_min_and_max_in_one_rule(tmp_path: Path) -> None:
    plan = plan_with({"name": "ratio", "query": "max(agent_ratio)", "min": 0.4, "max": 0.9, "for": 1,
                      "on_no_data": "ignore"})
    [rule] = plan_rule_group(plan)["rules"]  # type: ignore[index]
    cases = []
    for value, fires in (("0.3", True), ("0.95", True), ("0.5", False), ("0.9", False)):
        cases.append({
            "interval": "10s",
            "input_series": [{"series": "agent_ratio", "values": f"{value}x30"}, _info("agent", "pilot")],
            "alert_rule_test": [{"eval_time": "1m", "alertname": BREACH_ALERT,
                                 "exp_alerts": [_expected(rule, value)] if fires else []}],
        })
    r = write_and_test(tmp_path, [plan], cases)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("on_no_data", ["breach", "hold"])
def test_no_data_rule_fires_on_empty_and_nan_results(on_no_data: str, tmp_path: Path) -> None:
    plan = plan_with({**MAX_RULE, "query": "sum(agent_errors) / sum(agent_runs)", "on_no_data": on_no_data})
    rules = plan_rule_group(plan)["rules"]  # type: ignore[index]
    assert [r["alert"] for r in rules] == [BREACH_ALERT, NO_DATA_ALERT]
    no_data = rules[1]
    assert no_data["labels"]["on_no_data"] == on_no_data and no_data["labels"]["threshold"] == "error_rate"
    firing = [_expected(no_data, "1")]
    test = {"interval": "10s"}
    r = write_and_test(tmp_path, [plan], [
        {**test, "input_series": [_info("agent", "pilot")],  # no series at all
         "alert_rule_test": [{"eval_time": "1m", "alertname": NO_DATA_ALERT, "exp_alerts": firing}]},
        {**test, "input_series": [{"series": "agent_errors", "values": "0x30"}, {"series": "agent_runs", "values": "0x30"},
                                  _info("agent", "pilot")],  # 0/0 = NaN
         "alert_rule_test": [{"eval_time": "1m", "alertname": NO_DATA_ALERT, "exp_alerts": firing},
                             {"eval_time": "1m", "alertname": BREACH_ALERT, "exp_alerts": []}]},
        {**test, "input_series": [{"series": "agent_errors", "values": "0x30"}, {"series": "agent_runs", "values": "5x30"},
                                  _info("agent", "pilot")],  # data: 0
         "alert_rule_test": [{"eval_time": "1m", "alertname": NO_DATA_ALERT, "exp_alerts": []}]},
        {**test, "input_series": [{"series": "agent_errors", "values": "0x30"}, _info("agent", "limited-25")],
         "alert_rule_test": [{"eval_time": "1m", "alertname": NO_DATA_ALERT, "exp_alerts": []}]},  # not exposed
    ])
    assert r.returncode == 0, r.stdout + r.stderr


def test_on_no_data_ignore_adds_no_rule() -> None:
    group = plan_rule_group(plan_with(MAX_RULE))
    assert group is not None and [r["alert"] for r in group["rules"]] == [BREACH_ALERT]


def test_rules_for_a_later_stage_and_sub_second_interval() -> None:
    plan = plan_with({**MAX_RULE, "for": 3}, stage=1, interval="500ms")
    group = plan_rule_group(plan)
    assert group is not None and group["interval"] == "500ms"
    [rule] = group["rules"]
    assert rule["for"] == "1s500ms" and rule["labels"]["stage"] == "limited-25"


# ---- the CLI -----------------------------------------------------------------------------


def test_cli_plan_rules_prints_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    model = REPO / "examples" / "model-version-rollout.yaml"
    assert main(["plan", "rules", str(model)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Generated by `rollout plan rules")
    assert yaml.safe_load(out) == rule_groups([load_plan(model)])


def test_cli_plan_rules_invalid_plan_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rollout/v1\nname: x\n", encoding="utf-8")
    assert main(["plan", "rules", str(bad)]) == 2
    assert capsys.readouterr().out == ""


if __name__ == "__main__":  # regenerate deploy/prometheus/rules_test.yml
    SHIPPED_RULES_TEST.write_text(example_rules_test(), encoding="utf-8")
    sys.exit(0)
