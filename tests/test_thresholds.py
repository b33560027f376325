"""Pure threshold decisions: failure, counters, no-data semantics, coverage."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rollout import thresholds as th
from rollout.plan import Threshold


def thr(**kw: Any) -> Threshold:
    base: dict[str, Any] = {"name": "error_rate", "query": "q"}
    base.update(kw)
    return Threshold.model_validate(base)


def test_max_fails_only_above() -> None:
    t = thr(max=0.02)
    assert th.classify(t, 0.03) == "fail"
    assert th.classify(t, 0.02) == "pass"  # equal passes
    assert th.classify(t, 0.0) == "pass"


def test_min_fails_only_below() -> None:
    t = thr(min=0.9)
    assert th.classify(t, 0.89) == "fail"
    assert th.classify(t, 0.9) == "pass"
    assert th.classify(t, 5.0) == "pass"


def test_min_and_max() -> None:
    t = thr(min=1.0, max=2.0)
    assert [th.classify(t, v) for v in (0.5, 1.0, 1.5, 2.0, 2.5)] == ["fail", "pass", "pass", "pass", "fail"]


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_no_data_values(value: float | None) -> None:
    assert th.is_no_data(value)
    assert th.classify(thr(max=1.0), value) == "no_data"


def test_worst_value_picks_a_failing_series() -> None:
    assert th.worst_value(thr(max=1.0), [0.5, 3.0, 0.1]) == 3.0
    assert th.worst_value(thr(min=1.0), [0.5, 3.0, 0.1]) == 0.1
    assert th.worst_value(thr(min=1.0, max=2.0), [1.5, 0.5]) == 0.5
    assert th.worst_value(thr(min=1.0, max=2.0), [1.5, 1.2]) == 1.5
    assert th.worst_value(thr(max=1.0), [math.nan, 0.5]) == 0.5
    assert th.worst_value(thr(max=1.0), [math.nan, math.inf]) is None
    assert th.worst_value(thr(max=1.0), []) is None


def test_counter_counts_failures_and_resets_on_pass() -> None:
    t = thr(max=1.0, **{"for": 3})
    c = 0
    for outcome, expected in [("fail", 1), ("fail", 2), ("pass", 0), ("fail", 1), ("fail", 2), ("fail", 3)]:
        c = th.next_counter(t, c, outcome)  # type: ignore[arg-type]
        assert c == expected
    assert th.is_breach(t, c)
    assert not th.is_breach(t, 2)


@pytest.mark.parametrize(
    ("on_no_data", "after"),
    [("breach", 3), ("hold", 3), ("ignore", 2)],
)
def test_no_data_follows_on_no_data(on_no_data: str, after: int) -> None:
    t = thr(max=1.0, on_no_data=on_no_data)
    assert th.next_counter(t, 2, "no_data") == after
    assert th.next_counter(t, 2, "pass") == 0


def test_effective_action() -> None:
    assert th.effective_action(thr(max=1.0, action="rollback", on_no_data="hold"), no_data=True) == "hold"
    assert th.effective_action(thr(max=1.0, action="rollback", on_no_data="hold"), no_data=False) == "rollback"
    assert th.effective_action(thr(max=1.0, action="narrow", on_no_data="breach"), no_data=True) == "narrow"
    assert th.stricter("hold", "rollback") == "rollback"
    assert th.stricter("narrow", "hold") == "narrow"


def test_expected_evaluations_from_wall_clock() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert th.expected_evaluations(start, start + timedelta(hours=72), 30) == 8640
    assert th.expected_evaluations(start, start + timedelta(seconds=10), 0.1) == 100
    assert th.expected_evaluations(start, start + timedelta(seconds=59), 30) == 1
    assert th.expected_evaluations(start, start, 30) == 0
    assert th.evaluation_index(start, start + timedelta(seconds=61), 30) == 2
    with pytest.raises(ValueError):
        th.expected_evaluations(start, start, 0)


def test_coverage_rule() -> None:
    assert th.coverage(9, 10) == pytest.approx(0.9)
    assert th.coverage_ok(9, 10)
    assert not th.coverage_ok(8, 10)
    assert th.coverage(0, 0) == 1.0
    assert th.coverage(12, 10) == 1.0
    ok, short = th.window_clean([thr(name="a", max=1.0), thr(name="b", max=1.0)], {"a": 10, "b": 5}, 10)
    assert not ok and short == ["b"]
    assert th.window_clean([thr(name="a", max=1.0)], {"a": 90}, 100) == (True, [])
