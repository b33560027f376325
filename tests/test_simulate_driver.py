"""The pure simulation driver (rollout.simulate): no Prometheus, series in memory."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rollout.plan import Plan, parse_plan
from rollout.simulate import Need, Simulation, SimulationError, latest_at_or_before, simulate, to_ms
from tests.test_simulate import plan_text

START = datetime(2026, 11, 1, tzinfo=UTC)
STEP = 60_000


def plan(**kw: Any) -> Plan:
    return parse_plan(plan_text("http://127.0.0.1:9", "x", **kw))


def noisy_series(days: int, seed: int) -> dict[int, float | None]:
    """Mostly fine, with random bad spells and gaps of random lengths."""
    rng = random.Random(seed)
    out: dict[int, float | None] = {}
    at = to_ms(START)
    bad = gap = 0
    while at <= to_ms(START + timedelta(days=days)):
        if bad == 0 and gap == 0:
            r = rng.random()
            bad = rng.randint(1, 5) if r < 0.004 else 0
            gap = rng.randint(1, 400) if 0.004 <= r < 0.006 else 0
        if gap:
            out[at], gap = None, gap - 1
        elif bad:
            out[at], bad = 0.5, bad - 1
        else:
            out[at] = 0.01
        at += STEP
    return out


def run(p: Plan, values: Mapping[int, float | None], days: int, **kw: Any) -> dict[str, Any]:
    series = {f"{s.name}/error_rate": values for s in p.stages}
    sim = Simulation(p, start=START, end=START + timedelta(days=days), **kw)
    while (need := sim.run()) is not None:
        for t in need.thresholds:
            sim.add(need.key(t), {at: series[need.key(t)].get(at) for at in range(need.start_ms, need.end_ms + 1, need.step_ms)})
    return sim.result()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("on_no_data", "action"), [("hold", "rollback"), ("ignore", "narrow"), ("breach", "hold")])
def test_batched_reports_decide_exactly_what_one_report_per_evaluation_decides(
    seed: int, on_no_data: str, action: str
) -> None:
    p = plan(window="2h", on_no_data=on_no_data, action=action, for_=2)
    values = noisy_series(2, seed)
    one_by_one = run(p, values, 2, max_batch=1)
    batched = run(p, values, 2)
    assert json.dumps(batched, sort_keys=True) == json.dumps(one_by_one, sort_keys=True)
    assert any(e["kind"] == "breach" for e in batched["events"])  # the series did decide things


def test_approvals_come_approve_after_each_stage_awaits_them_from_listed_identities_never_the_owner() -> None:
    p = plan(window="1h")
    values = {to_ms(START) + k * STEP: 0.01 for k in range(24 * 60)}
    result = run(p, values, 1, approve_after=timedelta(minutes=30))
    approved = [(e["at"], e["stage"], e["detail"]) for e in result["events"] if e["kind"] == "approved"]
    assert approved == [
        ("2026-11-01T00:30:00Z", "pilot", "frank@example.com (engineering)"),
        ("2026-11-01T02:00:00Z", "limited", "frank@example.com (engineering)"),
        ("2026-11-01T02:00:00Z", "limited", "hank@example.com (operations)"),
        ("2026-11-01T03:30:00Z", "sor", "erin@example.com (risk)"),
        ("2026-11-01T03:30:00Z", "sor", "frank@example.com (engineering)"),
        ("2026-11-01T03:30:00Z", "sor", "hank@example.com (operations)"),
    ]
    acks = [(e["at"], e["stage"]) for e in result["events"] if e["kind"] == "handoff_acknowledged"]
    assert acks == [("2026-11-01T02:00:00Z", "limited"), ("2026-11-01T03:30:00Z", "sor")]
    assert result["final"]["status"] == "completed"


def test_every_breach_is_one_row_with_its_value_action_and_reason_and_pages_are_acknowledged() -> None:
    p = plan(window="1d", for_=2, action="narrow")
    values = {to_ms(START) + k * STEP: 0.01 for k in range(3 * 24 * 60)}
    values[to_ms(START) + 10 * STEP] = values[to_ms(START) + 11 * STEP] = 0.3
    result = run(p, values, 2)
    rows = [e for e in result["events"] if e["kind"] in ("breach", "contained_narrow", "escalation_page",
                                                           "escalation_acknowledged")]
    assert [(e["at"], e["kind"], e["threshold"], e["value"], e["action"]) for e in rows] == [
        ("2026-11-01T00:11:00Z", "contained_narrow", "error_rate", None, "narrow"),
        ("2026-11-01T00:11:00Z", "escalation_page", None, None, None),
        ("2026-11-01T00:11:00Z", "breach", "error_rate", 0.3, "narrow"),
        ("2026-11-01T00:11:00Z", "escalation_acknowledged", None, None, None),
    ]
    assert "0.3 above max 0.02, 2 consecutive failing evaluation(s)" in rows[2]["detail"]
    assert result["final"] == {"stage": "pilot", "status": "held", "exposure_stage": "pilot"}


def test_a_plan_without_thresholds_needs_no_data_and_completes() -> None:
    text = plan_text("http://127.0.0.1:9", "x", window="1h")
    text = text.replace("thresholds: [{name: error_rate", "x_thresholds: [{name: error_rate")
    lines = [line for line in text.splitlines() if "x_thresholds" not in line]
    p = parse_plan("\n".join(lines) + "\n")
    sim = Simulation(p, start=START, end=START + timedelta(hours=5))
    assert sim.run() is None
    assert sim.result()["final"]["status"] == "completed"
    assert sim.result()["thresholds"] == {}


def test_values_are_asked_for_exactly_on_the_evaluation_grid_of_the_scope_in_force() -> None:
    p = plan(window="1h")
    sim = Simulation(p, start=START + timedelta(seconds=7), end=START + timedelta(hours=3),
                     approve_after=timedelta(seconds=13))
    need = sim.run()
    assert isinstance(need, Need)
    first = to_ms(START) + 20_000 + STEP  # anchor (entry at +7s+13s) plus one interval
    assert (need.stage, need.start_ms, need.step_ms) == ("pilot", first, STEP)
    assert need.end_ms == first + (to_ms(START + timedelta(hours=3)) - first) // STEP * STEP


def test_latest_value_at_or_before_fills_a_grid_from_a_series_on_another_grid() -> None:
    need = Need("pilot", (), 1_000, 5_000, 1_000)
    values = {500: 1.0, 2_500: 2.0, 2_900: math.nan}
    assert latest_at_or_before(values, need) == {1000: 1.0, 2000: None, 3000: values[2_900], 4000: None, 5000: None}


def test_the_in_memory_form_reads_series_off_the_grid_as_the_latest_value_before() -> None:
    p = plan(window="1h")
    shifted = {to_ms(START) + k * STEP + 30_000: 0.01 for k in range(6 * 60)}
    result = simulate(p, {f"{s.name}/error_rate": shifted for s in p.stages}, start=START,
                      end=START + timedelta(hours=5))
    assert result["final"]["status"] == "completed"
    assert result["thresholds"]["pilot/error_rate"]["no_data"] == 0


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (START, START, "must be before"),
        (START, START + timedelta(days=366), "at most 365d"),
        (START.replace(tzinfo=None), START + timedelta(days=1), "time zone"),
    ],
)
def test_a_bad_period_is_refused(start: datetime, end: datetime, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        Simulation(plan(), start=start, end=end)
