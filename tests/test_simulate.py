"""`rollout simulate` against a real Prometheus holding backfilled history (days of it).

The history is generated here, written as OpenMetrics, turned into TSDB blocks by
`promtool tsdb create-blocks-from openmetrics` and served by a real Prometheus. Every
plan reads one `case` of the series, one sample a minute; evaluations run every
minute on the same grid, so an evaluation sees exactly the sample at its time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from activities.prometheus_range import MAX_POINTS, RangeFetcher
from cli.commands.simulate import run_simulation
from cli.main import main
from rollout.plan import parse_plan
from rollout.timefmt import rfc3339
from tests.promhistory import METRIC, HistoryPrometheus, Sample, series, write_openmetrics
from tests.promstack import free_port

STEP = 60_000  # ms: one sample a minute, and the plans' interval
HOUR = 3_600_000
DAY = 24 * HOUR
NOW_MS = (int(time.time() * 1000) // STEP) * STEP
T0 = (NOW_MS - 10 * DAY) // HOUR * HOUR  # the simulated period starts here (whole hour)
SPIKE_SHORT = T0 + 3 * HOUR  # two bad samples: one short of `for: 3`
SPIKE = T0 + 6 * HOUR  # three bad samples: a breach on the third
GAP = (T0 + 6 * HOUR, T0 + 9 * HOUR)  # three hours without samples
LOOKBACK = 5 * 60_000  # Prometheus' default lookback delta


def _history() -> Iterator[Sample]:
    begin = NOW_MS - 15 * DAY
    yield from series("clean", begin, NOW_MS, STEP, 0.01)
    for labels, at, value in series("spike", begin, NOW_MS, STEP, 0.01):
        bad = SPIKE_SHORT <= at < SPIKE_SHORT + 2 * STEP or SPIKE <= at < SPIKE + 3 * STEP
        yield labels, at, 0.5 if bad else value
    for labels, at, value in series("gap", begin, NOW_MS, STEP, 0.01):
        if not GAP[0] <= at < GAP[1]:
            yield labels, at, value


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HistoryPrometheus]:
    path = Path(tmp_path_factory.mktemp("history")) / "history.om"
    write_openmetrics(path, _history())
    p = HistoryPrometheus(path)
    try:
        yield p
    finally:
        p.close()


def plan_text(
    url: str,
    case: str,
    *,
    window: str = "1d",
    for_: int = 3,
    on_no_data: str = "hold",
    action: str = "rollback",
    query: str | None = None,
) -> str:
    q = query or f'{METRIC}{{case="{case}"}}'
    threshold = (
        f"{{name: error_rate, query: '{q}', max: 0.02, for: {for_}, on_no_data: {on_no_data}, action: {action}}}"
    )
    stages = []
    for name, tier, pct, roles, handoff in (
        ("pilot", "pilot", 5, "[engineering]", "[]"),
        ("limited", "limited", 25, "[engineering, operations]", "[{item: Support briefed, to: operations}]"),
        ("sor", "system_of_record", 100, "[risk, engineering, operations]", "[{item: Runbook reviewed, to: operations}]"),
    ):
        stages.append(
            f"  - name: {name}\n    tier: {tier}\n    scope: {{percent: {pct}}}\n"
            f"    approvals: {{roles: {roles}}}\n    window: {window}\n"
            f"    thresholds: [{threshold}]\n    handoff: {handoff}\n"
        )
    return (
        "apiVersion: rollout/v1\nname: sim-test\n"
        "owners: {rollout: alice@example.com, workflow: bob@example.com, incident_response: carol@example.com}\n"
        "approvers: {risk: [erin@example.com], engineering: [alice@example.com, frank@example.com],"
        " operations: [hank@example.com]}\n"
        "target: {kind: log}\n"
        f"metrics: {{prometheus_url: '{url}', interval: 1m}}\n"
        "fallback: humans answer every ticket\n"
        "escalation: {ack_within: 5m, chain: [incident_response, rollout], max_hold: 7d}\n"
        "stages:\n" + "".join(stages)
    )


def write_plan(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return str(path)


def iso(ms: int) -> str:
    return rfc3339(datetime.fromtimestamp(ms / 1000, UTC))


def simulate_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main(["simulate", *argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result: dict[str, Any] = json.loads(out.out)
    return result


def kinds(result: dict[str, Any], *wanted: str) -> list[tuple[str, str | None, str]]:
    return [(e["at"], e["stage"], e["kind"]) for e in result["events"] if e["kind"] in wanted]


def test_a_clean_series_completes_every_stage_after_one_clean_window_each(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "clean"))
    result = simulate_json(capsys, plan, "--from", iso(T0), "--to", iso(T0 + 4 * DAY))
    assert kinds(result, "stage_entered", "window_clean", "completed") == [
        (iso(T0), "pilot", "stage_entered"),
        (iso(T0 + DAY), "pilot", "window_clean"),
        (iso(T0 + DAY), "limited", "stage_entered"),
        (iso(T0 + 2 * DAY), "limited", "window_clean"),
        (iso(T0 + 2 * DAY), "sor", "stage_entered"),
        (iso(T0 + 3 * DAY), "sor", "window_clean"),
        (iso(T0 + 3 * DAY), "sor", "completed"),
    ]
    assert not kinds(result, "breach", "contained_hold", "contained_rollback")
    assert result["final"] == {"stage": "sor", "status": "completed", "exposure_stage": "sor"}
    for stage in ("pilot", "limited", "sor"):  # 1440 one-minute evaluations per one-day window
        assert result["thresholds"][f"{stage}/error_rate"] == {
            "evaluations": 1440, "failing": 0, "no_data": 0, "breaches": 0
        }
    assert result["from"] == iso(T0) and result["to"] == iso(T0 + 4 * DAY)
    parsed = parse_plan(Path(plan).read_text())
    assert result["plan_hash"] == parsed.plan_hash()


def test_a_spike_held_for_its_for_evaluations_breaches_at_the_third_with_the_thresholds_action(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "spike", action="rollback"))
    result = simulate_json(capsys, plan, "--from", iso(T0), "--to", iso(T0 + 4 * DAY))
    breaches = [e for e in result["events"] if e["kind"] == "breach"]
    # the two-sample spike (one short of `for: 3`) breaches nothing; the three-sample one on its third
    assert [(e["at"], e["stage"], e["threshold"], e["value"], e["action"]) for e in breaches] == [
        (iso(SPIKE + 2 * STEP), "pilot", "error_rate", 0.5, "rollback")
    ]
    assert kinds(result, "contained_rollback") == [(iso(SPIKE + 2 * STEP), "pilot", "contained_rollback")]
    assert result["final"] == {"stage": "pilot", "status": "rolled_back", "exposure_stage": None}
    tally = result["thresholds"]["pilot/error_rate"]
    assert tally["failing"] == 5 and tally["breaches"] == 1
    # rolled back from the pilot, nothing is exposed: no more evaluations
    assert tally["evaluations"] == (SPIKE + 2 * STEP - T0) // STEP


def test_ignored_no_data_in_a_gap_holds_nothing_early_and_ends_the_window_in_insufficient_data(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the gap (3h, less the 5 min Prometheus still sees the last sample) is over 10% of the 1-day window
    assert GAP[1] - GAP[0] - LOOKBACK > DAY // 10
    plan = write_plan(tmp_path, plan_text(prom.url, "gap", on_no_data="ignore"))
    result = simulate_json(capsys, plan, "--from", iso(T0), "--to", iso(T0 + 4 * DAY))
    decided = kinds(result, "breach", "window_insufficient_data", "contained_hold", "contained_rollback", "window_clean")
    assert decided == [
        (iso(T0 + DAY), "pilot", "window_insufficient_data"),
        (iso(T0 + DAY), "pilot", "contained_hold"),
    ]
    hold = next(e for e in result["events"] if e["kind"] == "contained_hold")
    assert hold["detail"] == "insufficient data" and hold["action"] == "hold"
    assert result["final"] == {"stage": "pilot", "status": "held", "exposure_stage": "pilot"}
    empty = (GAP[1] - GAP[0] - LOOKBACK) // STEP
    assert result["thresholds"]["pilot/error_rate"]["no_data"] == empty
    assert result["thresholds"]["pilot/error_rate"]["breaches"] == 0


def test_held_no_data_in_the_same_gap_holds_at_its_for_th_empty_evaluation_whatever_the_action(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "gap", on_no_data="hold", action="rollback"))
    result = simulate_json(capsys, plan, "--from", iso(T0), "--to", iso(T0 + 8 * DAY))
    first_empty = GAP[0] + LOOKBACK  # the last sample before the gap is still seen 5 minutes on
    breach = next(e for e in result["events"] if e["kind"] == "breach")
    assert (breach["at"], breach["stage"], breach["threshold"], breach["value"], breach["action"]) == (
        iso(first_empty + 2 * STEP), "pilot", "error_rate", None, "hold"
    )
    assert kinds(result, "contained_hold", "contained_rollback") == [
        (iso(first_empty + 2 * STEP), "pilot", "contained_hold"),
        # nobody resumes: after max_hold (7d) the hold becomes a rollback
        (iso(first_empty + 2 * STEP + 7 * DAY), "pilot", "contained_rollback"),
    ]


def test_from_14d_with_the_default_to_runs_up_to_now(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "clean", window="3d"))
    before = datetime.now(UTC).replace(microsecond=0)
    result = simulate_json(capsys, plan, "--from", "14d")
    after = datetime.now(UTC)
    start = datetime.fromisoformat(result["from"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(result["to"].replace("Z", "+00:00"))
    assert before - timedelta(days=14) <= start <= after - timedelta(days=14)
    assert before <= end <= after
    assert result["final"]["status"] == "completed"
    assert [e["stage"] for e in result["events"] if e["kind"] == "window_clean"] == ["pilot", "limited", "sor"]


async def test_a_period_longer_than_11000_points_per_series_is_fetched_in_chunks(prom: HistoryPrometheus) -> None:
    plan = parse_plan(plan_text(prom.url, "clean", window="12d"))
    start = datetime.fromtimestamp(T0 / 1000, UTC) - timedelta(days=3)
    end = start + timedelta(days=12, minutes=1)
    async with RangeFetcher(prom.url) as fetcher:
        sim = await run_simulation(plan, start=start, end=end, fetcher=fetcher)
        requests = fetcher.requests
    result = sim.result()
    points = 12 * DAY // STEP  # evaluations in the pilot's 12-day window
    assert points > MAX_POINTS
    assert requests >= 2  # at least two query_range requests for the pilot's one series
    assert result["thresholds"]["pilot/error_rate"]["evaluations"] == points
    assert result["thresholds"]["pilot/error_rate"]["no_data"] == 0
    assert kinds(result, "window_clean") == [(rfc3339(start + timedelta(days=12)), "pilot", "window_clean")]


def test_the_same_plan_and_data_give_the_same_output_byte_for_byte(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "spike", action="narrow"))
    outputs = []
    for _ in range(2):
        assert main(["simulate", plan, "--from", iso(T0), "--to", iso(T0 + 2 * DAY), "--json"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert '"contained_narrow"' in outputs[0]


def test_human_output_is_a_timeline_then_a_table_per_threshold(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "spike", action="hold"))
    assert main(["simulate", plan, "--from", iso(T0), "--to", iso(T0 + 2 * DAY), "--approve-after", "1h"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    breach = next(line for line in lines if line.split()[2:3] == ["breach"])
    assert breach.startswith(iso(SPIKE + 2 * STEP)) and "error_rate" in breach and "0.5" in breach and "hold" in breach
    assert any(line.startswith(iso(T0 + HOUR)) and line.split()[2] == "stage_entered" for line in lines)
    row = next(line for line in lines if line.startswith("pilot/error_rate"))
    assert row.split()[3:7] == ["0", "1", "0.5", iso(SPIKE_SHORT)]  # no data, breaches, worst value, its time
    assert "status held" in out.out
    assert "fetched pilot" in out.err  # progress goes to stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "2026-11-02T00:00:00Z", "--to", "2026-11-01T00:00:00Z"], "must be before --to"),
        (["--from", "400d"], "at most 365d"),
        (["--from", "yesterday"], "neither an RFC 3339 time"),
        (["--from", "1d", "--approve-after", "soon"], "--approve-after"),
    ],
)
def test_a_bad_period_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    plan = write_plan(tmp_path, plan_text("http://127.0.0.1:9", "clean"))
    assert main(["simulate", plan, *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_plan_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path, plan_text("http://127.0.0.1:9", "clean").replace("tier: pilot", "tier: limited"))
    assert main(["simulate", plan, "--from", "1d"]) == 2
    assert "invalid plan" in capsys.readouterr().err


def test_an_unreachable_prometheus_is_exit_3_naming_its_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    plan = write_plan(tmp_path, plan_text(url, "clean"))
    assert main(["simulate", plan, "--from", "1d"]) == 3
    assert url in capsys.readouterr().err


def test_a_query_prometheus_rejects_is_exit_2_with_its_error(
    prom: HistoryPrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, plan_text(prom.url, "clean", query="sum(rate(x[5m])"))
    assert main(["simulate", plan, "--from", "1d"]) == 2
    err = capsys.readouterr().err
    assert "rejected the query" in err and "parse error" in err
