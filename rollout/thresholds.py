"""Pure threshold decisions shared by the Prometheus monitor and the workflow.

No I/O, no clocks: every function takes what it needs, so the workflow can call
them deterministically and the unit tests need nothing running.

- `max` fails when value > max, `min` when value < min (equal passes).
- No data (no value, NaN, +-Inf, an error, Prometheus unreachable) follows
  `on_no_data`: `breach` counts as a failing evaluation, `hold` counts too but
  contains with `hold` whatever the threshold's action, `ignore` leaves the
  counter unchanged.
- A window is clean only if each threshold had data for at least 90% of its
  scheduled evaluations, `floor((window_ends_at - started_at) / interval)`,
  counted from wall-clock time (evaluations that never ran count as no data).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from rollout.plan import Action, Threshold

Outcome = Literal["pass", "fail", "no_data"]

COVERAGE_MIN = 0.9
ACTION_ORDER: tuple[Action, ...] = ("hold", "narrow", "rollback")  # least strict first


def is_no_data(value: float | None) -> bool:
    """An absent value, NaN or an infinity is no data."""
    return value is None or math.isnan(value) or math.isinf(value)


def value_fails(threshold: Threshold, value: float) -> bool:
    """True when a (finite) value breaks the threshold: above `max` or below `min`."""
    if threshold.max is not None and value > threshold.max:
        return True
    return threshold.min is not None and value < threshold.min


def classify(threshold: Threshold, value: float | None) -> Outcome:
    if value is None or is_no_data(value):
        return "no_data"
    return "fail" if value_fails(threshold, value) else "pass"


def worst_value(threshold: Threshold, values: Iterable[float]) -> float | None:
    """One value for a query that returned several series: a failing one if any.

    Non-finite values are dropped; nothing finite left means no data.
    """
    finite = [v for v in values if not is_no_data(v)]
    if not finite:
        return None
    hi, lo = max(finite), min(finite)
    if threshold.max is not None and hi > threshold.max:
        return hi
    if threshold.min is not None and lo < threshold.min:
        return lo
    return hi if threshold.max is not None else lo


def counts_as_failure(threshold: Threshold, outcome: Outcome) -> bool | None:
    """True: a failing evaluation; False: a passing one; None: leaves the counter alone."""
    if outcome == "pass":
        return False
    if outcome == "fail":
        return True
    return None if threshold.on_no_data == "ignore" else True


def next_counter(threshold: Threshold, counter: int, outcome: Outcome) -> int:
    """The consecutive-failure counter after one evaluation."""
    failing = counts_as_failure(threshold, outcome)
    if failing is None:
        return counter
    return counter + 1 if failing else 0


def is_breach(threshold: Threshold, counter: int) -> bool:
    """A threshold with `for: N` breaches on its Nth consecutive failing evaluation."""
    return counter >= threshold.for_


def effective_action(threshold: Threshold, no_data: bool) -> Action:
    """The containment a breach asks for.

    `no_data` is true when the failing run that breached includes evaluations without
    data; with `on_no_data: hold` such a breach is inconclusive and only holds.
    """
    if no_data and threshold.on_no_data == "hold":
        return "hold"
    return threshold.action


def stricter(a: Action, b: Action) -> Action:
    """The stricter of two containments (hold < narrow < rollback)."""
    return a if ACTION_ORDER.index(a) >= ACTION_ORDER.index(b) else b


def expected_evaluations(started_at: datetime, ends_at: datetime, interval_seconds: float) -> int:
    """Scheduled evaluations in a window: floor((ends_at - started_at) / interval)."""
    if interval_seconds <= 0:
        raise ValueError("interval must be greater than zero")
    span = (ends_at - started_at).total_seconds()
    if span <= 0:
        return 0
    # a small epsilon so that 10.0 / 0.1 is 100, not 99
    return math.floor(span / interval_seconds + 1e-9)


def evaluation_index(started_at: datetime, at: datetime, interval_seconds: float) -> int:
    """The index k of the last scheduled evaluation (at started_at + k*interval) not after `at`."""
    return expected_evaluations(started_at, at, interval_seconds)


def coverage(data_count: int, expected: int) -> float:
    """Fraction of scheduled evaluations that had data (1.0 when none were scheduled)."""
    if expected <= 0:
        return 1.0
    return min(1.0, max(0, data_count) / expected)


def coverage_ok(data_count: int, expected: int, minimum: float = COVERAGE_MIN) -> bool:
    return coverage(data_count, expected) >= minimum - 1e-12


def window_clean(
    thresholds: Iterable[Threshold], data_counts: Mapping[str, int], expected: int
) -> tuple[bool, list[str]]:
    """Whether every threshold had enough data; the names of those that did not."""
    short = [t.name for t in thresholds if not coverage_ok(data_counts.get(t.name, 0), expected)]
    return (not short, short)
