"""`rollout plan validate` and `rollout plan show`, through the CLI entry point and the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from rollout.errors import PlanError
from rollout.plan import Threshold, load_plan, parse_plan
from rollout.render import (
    NOT_GRANTED,
    authority_matrix,
    cell,
    code,
    describe_scope,
    describe_stop_rule,
    render_plan_markdown,
)

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "examples" / "support-reply-agent.yaml"
MODEL = REPO / "examples" / "model-version-rollout.yaml"


@pytest.fixture
def invalid_plan(tmp_path: Path) -> Path:
    """The support example with the limited wave's scope shrunk and an unknown key."""
    text = SUPPORT.read_text(encoding="utf-8")
    text = text.replace("scope: {percent: 25,", "scope: {percent: 1,", 1)
    text = text.replace("fallback:", "colour: blue\nfallback:", 1)
    path = tmp_path / "invalid.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code_ = main(argv)
    out, err = capsys.readouterr()
    return code_, out, err


# ---- validate ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SUPPORT, MODEL], ids=["support", "model"])
def test_validate_ok(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(path)
    rc, out, err = run(["plan", "validate", str(path)], capsys)
    assert rc == 0
    n = len(plan.stages)
    assert out == f"ok: {plan.name} ({n} stages, plan_hash {plan.plan_hash()})\n"
    assert err == ""


def test_validate_invalid_structural(invalid_plan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["plan", "validate", str(invalid_plan)], capsys)
    assert rc == 2
    assert out == ""
    assert err.startswith(f"rollout: {invalid_plan}: invalid plan (1 problem)\n")
    assert "  colour: unknown key (remove it or check its spelling) (line " in err


def test_validate_invalid_semantic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SUPPORT.read_text(encoding="utf-8").replace("scope: {percent: 25,", "scope: {percent: 1,", 1)
    text = text.replace("chain: [incident_response, rollout]", "chain: [incident_response, pager]")
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    rc, out, err = run(["plan", "validate", str(path)], capsys)
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"rollout: {path}: invalid plan (2 problems)"
    assert any(
        line.startswith("  stages[1].scope.percent: scope shrinks: 1% is lower than 5% in stage 'pilot' (line ")
        for line in lines
    )
    assert any(line.startswith("  escalation.chain[1]: unknown role 'pager'") for line in lines)


def test_validate_json_ok(capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(SUPPORT)
    rc, out, err = run(["plan", "validate", str(SUPPORT), "--json"], capsys)
    assert rc == 0
    assert json.loads(out) == {
        "valid": True,
        "name": "support-reply-agent",
        "plan_hash": plan.plan_hash(),
        "stages": ["pilot", "limited-25", "system-of-record"],
    }
    assert err == ""


def test_validate_json_invalid(invalid_plan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(invalid_plan)
    rc, out, err = run(["plan", "validate", "--json", str(invalid_plan)], capsys)
    assert rc == 2
    assert err == ""  # scripts read the problems from stdout
    data = json.loads(out)
    assert data == {"valid": False, "problems": info.value.problems}
    assert data["problems"][0].startswith("colour: unknown key")


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    rc, out, err = run(["plan", "validate", str(missing)], capsys)
    assert rc == 2
    assert "file not found" in err
    rc, out, err = run(["plan", "validate", str(missing), "--json"], capsys)
    assert rc == 2
    assert json.loads(out)["valid"] is False


def test_validate_not_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    rc, _, err = run(["plan", "validate", str(path)], capsys)
    assert rc == 2
    assert "(plan): not valid YAML: " in err


def test_plan_without_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan"])
    assert info.value.code == 2
    assert "rollout: error:" in capsys.readouterr().err


def test_validate_without_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "validate"])
    assert info.value.code == 2


# ---- show ----------------------------------------------------------------------------


def test_show_support_example(capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(SUPPORT)
    rc, out, err = run(["plan", "show", str(SUPPORT)], capsys)
    assert rc == 0
    assert err == ""
    assert out.startswith("# Rollout plan: support-reply-agent\n\nDrafts replies to support tickets")
    assert f"plan_hash: `{plan.plan_hash()}`" in out
    for heading in ("## Owners", "## Approvers", "## Fallback path", "## Target and metrics", "## Stages",
                    "## Authority", "## Thresholds", "## Escalation", "## Notifications", "## Handoff"):
        assert f"\n{heading}\n" in out
    assert "| incident_response | carol@example.com |" in out
    assert "Route every ticket to the human queue" in out
    assert "- kind: `log`" in out
    # stages table: tier, scope with segments or all, window, roles, remind_after
    assert "| 1 | pilot | pilot | 5% of internal | 20s | engineering | — |" in out
    assert "| 2 | limited-25 | limited | 25% of internal, smb | 20s | engineering, operations | 24h |" in out
    assert "| 3 | system-of-record | system_of_record | 100% of all segments | 20s | risk, engineering, operations | — |" in out
    # authority matrix: verbs x stages
    assert "| Verb | pilot | limited-25 | system-of-record |" in out
    assert "| send_customer_message | review | auto | auto |" in out
    assert "| refund | forbid | review | review |" in out
    # escalation with identities, SLA and max_hold
    assert "1. page incident_response (carol@example.com)" in out
    assert "2. after 5m unacknowledged, page rollout (alice@example.com)" in out
    assert "max hold: 7d" in out
    # handoff with receiving role and identities
    assert "| system-of-record | Runbook reviewed | operations | hank@example.com |" in out
    assert "separation of duties: risk must be distinct from workflow" in out


def test_show_model_example_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["plan", "show", str(MODEL)], capsys)
    assert rc == 0
    assert "### pilot" in out and "### wave-1" in out
    assert (
        "breach when value > 0.25 for 3 consecutive evaluations every 5s; no data: hold; action: hold" in out
    )
    assert (
        "breach when value > 0.01 for 2 consecutive evaluations every 5s; no data: breach; action: rollback"
        in out
    )
    assert (
        "breach when value < 0.42 for 3 consecutive evaluations every 5s; no data: ignore; action: narrow"
        in out
    )
    assert "Prometheus at `http://127.0.0.1:9090`, evaluated every 5s" in out
    assert "page sre (sam@example.com, tara@example.com)" in out


def test_show_invalid_plan(invalid_plan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["plan", "show", str(invalid_plan)], capsys)
    assert rc == 2
    assert out == ""
    assert "colour: unknown key" in err


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(MODEL)
    rc, out, _ = run(["plan", "show", str(MODEL), "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    assert set(data) == {"plan_hash", "plan"}
    assert data["plan_hash"] == plan.plan_hash()
    assert data["plan"] == json.loads(plan.canonical_json())
    assert data["plan"]["stages"][0]["thresholds"][0]["for"] == 3
    # the printed plan is itself a valid plan with the same hash
    assert parse_plan(json.dumps(data["plan"])).plan_hash() == plan.plan_hash()


# ---- rendering details ----------------------------------------------------------------

LATE_VERB = """\
apiVersion: rollout/v1
name: late-verb
owners: {rollout: a@example.com, incident_response: b@example.com}
approvers: {eng: [c@example.com]}
target: {kind: log}
fallback: Humans do it
escalation: {ack_within: 5m, chain: [incident_response]}
stages:
  - {name: pilot, tier: pilot, scope: {percent: 12.5}, authority: {read: auto}, window: 1h}
  - name: all
    tier: system_of_record
    scope: {percent: 100}
    authority: {write: review}
    approvals: {roles: [eng]}
    window: 1d
    handoff: [{item: "Pager | rota", to: eng}]
"""


def test_render_not_yet_granted_and_escaping() -> None:
    plan = parse_plan(LATE_VERB)
    verbs, rows = authority_matrix(plan)
    assert verbs == ["read", "write"]
    assert rows == [["read", "auto", "auto"], ["write", NOT_GRANTED, "review"]]
    md = render_plan_markdown(plan)
    assert "| write | — | review |" in md
    assert "12.5% of all segments" in md
    assert "Pager \\| rota" in md  # a pipe inside a table cell is escaped
    assert "No thresholds" in md
    assert "None configured" in md
    assert "max hold: none" in md
    assert "| workflow |" not in md  # the optional owner is absent


def test_describe_helpers() -> None:
    t = Threshold.model_validate({"name": "q", "query": "x", "min": 0.4, "max": 1, "for": 1, "action": "narrow"})
    assert describe_stop_rule(t, "30s") == (
        "breach when value > 1 or value < 0.4 for 1 consecutive evaluation every 30s; "
        "no data: hold; action: narrow"
    )
    assert describe_stop_rule(t, None).startswith("breach when value > 1 or value < 0.4 for 1 consecutive evaluation;")
    plan = load_plan(SUPPORT)
    assert describe_scope(plan.stages[0].scope) == "5% of internal"
    assert describe_scope(plan.stages[-1].scope) == "100% of all segments"
    assert code("a`b") == "``a`b``"
    assert code("x") == "`x`"
    assert cell("a|b\nc") == "a\\|b c"


# ---- the installed console script -----------------------------------------------------


def test_console_script_validates_the_example() -> None:
    script = Path(sys.executable).parent / "rollout"
    proc = subprocess.run(
        [str(script), "plan", "validate", "examples/support-reply-agent.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: support-reply-agent (3 stages, plan_hash ")
    assert proc.stdout.strip().endswith(load_plan(SUPPORT).plan_hash() + ")")
