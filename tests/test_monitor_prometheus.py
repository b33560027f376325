"""The Prometheus threshold monitor against a real Prometheus scraping a test exporter.

Prometheus scrapes every second; monitors evaluate every 0.5-1s. Each test uses
its own `case` label so that tests never see each other's values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.monitor import MonitorProgress, monitor_thresholds
from rollout.models import MonitorRequest, MonitorResult
from rollout.plan import Threshold
from tests.promstack import Exporter, Prometheus, ready_prometheus, running_exporter

SCRAPE = 1.0  # Prometheus scrape interval in these tests


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    yield from running_exporter()


@pytest.fixture(scope="module")
def prom(exporter: Exporter) -> Iterator[Prometheus]:
    yield from ready_prometheus(exporter)


@pytest.fixture(scope="module")
def flaky_prom(exporter: Exporter) -> Iterator[Prometheus]:
    """A second Prometheus that tests stop and start."""
    yield from ready_prometheus(exporter)


def q(case: str) -> str:
    return f'rollout_test_error_rate{{case="{case}"}}'


def thr(name: str, query: str, **kw: Any) -> Threshold:
    return Threshold.model_validate({"name": name, "query": query, **kw})


def request(
    prom_url: str,
    thresholds: list[Threshold],
    *,
    interval: float = 1.0,
    started_at: datetime | None = None,
    window: float | None = None,
) -> MonitorRequest:
    start = started_at or datetime.now(UTC)
    return MonitorRequest(
        rollout_id="rollout-monitor-test",
        stage="pilot",
        prometheus_url=prom_url,
        interval_seconds=interval,
        thresholds=thresholds,
        started_at=start,
        window_ends_at=None if window is None else start + timedelta(seconds=window),
    )


def ensure(prom: Prometheus, exporter: Exporter, case: str, value: float) -> None:
    """Set the exporter's value and wait until Prometheus has scraped it."""
    exporter.set(case, value)
    if value == value:  # NaN never compares equal; just wait a scrape for it
        prom.wait_for_value(q(case), lambda v: v == value)
    else:
        prom.wait_for_value(q(case), lambda v: v != v)


async def run(req: MonitorRequest, env: ActivityEnvironment | None = None) -> MonitorResult:
    env = env or ActivityEnvironment()
    result: MonitorResult = await asyncio.wait_for(env.run(monitor_thresholds, req), timeout=60)
    return result


async def test_passing_window_ends_clean(prom: Prometheus, exporter: Exporter) -> None:
    ensure(prom, exporter, "pass", 0.01)
    req = request(prom.url, [thr("error_rate", q("pass"), max=0.02, **{"for": 1})], interval=0.5, window=3.0)
    result = await run(req)
    assert result.kind == "window_end"
    assert result.breach is None
    assert result.expected_evaluations == 6
    assert result.data_counts == {"error_rate": 6}
    assert result.coverage == {"error_rate": 1.0}
    assert result.counters == {"error_rate": 0}
    assert datetime.now(UTC) >= req.window_ends_at  # type: ignore[operator]


async def test_raised_error_rate_breaches_within_two_intervals(prom: Prometheus, exporter: Exporter) -> None:
    interval = 1.0
    ensure(prom, exporter, "raise", 0.01)
    req = request(
        prom.url, [thr("error_rate", q("raise"), max=0.05, action="rollback", **{"for": 1})], interval=interval
    )
    task = asyncio.create_task(run(req))
    await asyncio.sleep(2.5)
    assert not task.done(), "a passing threshold must not return"
    t0 = time.monotonic()
    changed_at = datetime.now(UTC)
    exporter.set("raise", 0.5)
    result = await task
    elapsed = time.monotonic() - t0
    print(f"\nthreshold -> breach: {elapsed:.2f}s (interval {interval:g}s, scrape {SCRAPE:g}s)")
    assert elapsed < 2 * interval + SCRAPE * 0.5, f"breach took {elapsed:.2f}s"
    assert result.kind == "breach" and result.breach is not None
    ev = result.breach
    assert ev.source == "prometheus"
    assert ev.threshold == "error_rate"
    assert ev.query == q("raise")
    assert ev.value == 0.5
    assert ev.max == 0.05 and ev.min is None and ev.for_ == 1
    assert ev.action == "rollback"
    assert not ev.no_data
    assert ev.observed_at >= changed_at
    assert ev.samples[-1].value == 0.5
    assert [s.value for s in ev.samples[:-1]] == [0.01] * (len(ev.samples) - 1)
    assert "above max 0.05" in ev.detail["reason"]


async def test_for_three_needs_three_consecutive_failures(prom: Prometheus, exporter: Exporter) -> None:
    ensure(prom, exporter, "for3", 0.5)
    ensure(prom, exporter, "fine", 0.0)
    req = request(
        prom.url,
        [
            thr("fine", q("fine"), max=0.05, **{"for": 1}),
            thr("error_rate", q("for3"), max=0.05, action="narrow", **{"for": 3}),
        ],
        interval=0.5,
    )
    result = await run(req)
    assert result.kind == "breach" and result.breach is not None
    ev = result.breach
    assert ev.threshold == "error_rate" and ev.action == "narrow" and ev.for_ == 3
    assert result.counters == {"fine": 0, "error_rate": 3}
    assert [s.value for s in ev.samples] == [0.5, 0.5, 0.5]
    assert ev.observed_at - req.started_at >= timedelta(seconds=1.5)
    assert ev.detail["evaluation_index"] == 3


async def test_min_threshold(prom: Prometheus, exporter: Exporter) -> None:
    ensure(prom, exporter, "success", 0.5)
    req = request(
        prom.url,
        [
            thr("equal_min", q("success"), min=0.5, **{"for": 1}),  # equal passes
            thr("success_rate", q("success"), min=0.9, **{"for": 2}),
        ],
        interval=0.5,
    )
    result = await run(req)
    assert result.breach is not None
    assert result.breach.threshold == "success_rate"
    assert result.breach.min == 0.9 and result.breach.value == 0.5
    assert "below min 0.9" in result.breach.detail["reason"]
    assert result.counters == {"equal_min": 0, "success_rate": 2}


@pytest.mark.parametrize(
    ("case", "query", "on_no_data", "action", "want_action", "error_part"),
    [
        ("nan", q("nan"), "hold", "rollback", "hold", "NaN"),
        ("inf", q("inf"), "breach", "narrow", "narrow", "NaN or Inf"),
        ("empty", q("never-exported"), "breach", "rollback", "rollback", "no series"),
        ("error", "sum(", "hold", "narrow", "hold", "bad_data"),
    ],
)
async def test_no_data_follows_on_no_data(
    prom: Prometheus,
    exporter: Exporter,
    case: str,
    query: str,
    on_no_data: str,
    action: str,
    want_action: str,
    error_part: str,
) -> None:
    if case == "nan":
        ensure(prom, exporter, "nan", float("nan"))
    if case == "inf":
        ensure(prom, exporter, "inf", float("inf"))
    req = request(
        prom.url,
        [thr("error_rate", query, max=0.05, on_no_data=on_no_data, action=action, **{"for": 2})],
        interval=0.5,
    )
    result = await run(req)
    assert result.breach is not None
    ev = result.breach
    assert ev.no_data and ev.value is None
    assert ev.action == want_action
    assert len(ev.samples) == 2 and all(s.value is None for s in ev.samples)
    assert error_part in (ev.samples[-1].error or "") or (case == "nan" and "NaN" in (ev.samples[-1].error or ""))
    assert result.data_counts == {"error_rate": 0}


async def test_no_data_ignored_never_promotes(prom: Prometheus) -> None:
    req = request(
        prom.url,
        [thr("error_rate", q("never-exported"), max=0.05, on_no_data="ignore", **{"for": 1})],
        interval=0.5,
        window=2.0,
    )
    result = await run(req)
    assert result.kind == "window_end"
    assert result.counters == {"error_rate": 0}
    assert result.expected_evaluations == 4
    assert result.coverage == {"error_rate": 0.0}


async def test_prometheus_down_is_no_data(flaky_prom: Prometheus, exporter: Exporter) -> None:
    ensure(flaky_prom, exporter, "down", 0.01)
    req = request(
        flaky_prom.url,
        [thr("error_rate", q("down"), max=0.05, on_no_data="hold", action="rollback", **{"for": 2})],
        interval=0.5,
    )
    task = asyncio.create_task(run(req))
    try:
        await asyncio.sleep(1.6)
        assert not task.done()
        t0 = time.monotonic()
        flaky_prom.stop()
        result = await task
    finally:
        if flaky_prom.proc is None:
            flaky_prom.start()
    print(f"\nprometheus down -> hold: {time.monotonic() - t0:.2f}s")
    assert result.breach is not None
    ev = result.breach
    assert ev.action == "hold" and ev.no_data
    assert "unreachable" in (ev.samples[-1].error or "")
    assert any(s.value == 0.01 for s in ev.samples)


async def test_prometheus_gap_fails_coverage(flaky_prom: Prometheus, exporter: Exporter) -> None:
    ensure(flaky_prom, exporter, "gap", 0.01)
    req = request(
        flaky_prom.url,
        [thr("error_rate", q("gap"), max=0.05, on_no_data="ignore", **{"for": 1})],
        interval=0.5,
        window=5.0,
    )
    task = asyncio.create_task(run(req))
    try:
        await asyncio.sleep(1.2)
        flaky_prom.stop()
        await asyncio.sleep(1.5)
    finally:
        await asyncio.to_thread(flaky_prom.start)
    result = await task
    assert result.kind == "window_end"
    assert result.expected_evaluations == 10
    assert result.counters == {"error_rate": 0}
    assert 0 < result.data_counts["error_rate"] <= 7
    assert result.coverage["error_rate"] < 0.9


async def test_missed_evaluations_count_as_no_data(prom: Prometheus, exporter: Exporter) -> None:
    """Workers down for most of the window: the slots nobody evaluated are no data, not failures."""
    ensure(prom, exporter, "missed", 0.01)
    start = datetime.now(UTC) - timedelta(seconds=4)
    req = request(
        prom.url,
        [thr("error_rate", q("missed"), max=0.05, on_no_data="breach", **{"for": 1})],
        interval=0.5,
        started_at=start,
        window=5.5,
    )
    result = await run(req)
    assert result.kind == "window_end"
    assert result.expected_evaluations == 11
    assert result.data_counts["error_rate"] <= 4
    assert result.coverage["error_rate"] < 0.9


async def test_resumes_from_heartbeat(prom: Prometheus, exporter: Exporter) -> None:
    ensure(prom, exporter, "resume", 0.5)
    req = request(prom.url, [thr("error_rate", q("resume"), max=0.05, **{"for": 4})], interval=0.5)
    beats: list[Any] = []
    env1 = ActivityEnvironment()
    env1.on_heartbeat = lambda *details: beats.append(details[0])
    task = asyncio.create_task(run(req, env1))
    deadline = time.monotonic() + 10
    while not (beats and MonitorProgress.model_validate(beats[-1]).counters["error_rate"] >= 2):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    env1.cancel()  # the worker goes away mid-window
    with pytest.raises(asyncio.CancelledError):
        await task
    last = MonitorProgress.model_validate(beats[-1])
    assert last.counters["error_rate"] in (2, 3)
    before = last.counters["error_rate"]

    env2 = ActivityEnvironment()
    env2.info = dataclasses.replace(env2.info, attempt=2, heartbeat_details=[beats[-1]])
    t0 = time.monotonic()
    result = await run(req, env2)
    assert result.breach is not None
    assert result.counters["error_rate"] == 4
    # only the missing evaluations ran after the restart
    assert time.monotonic() - t0 < (4 - before) * 0.5 + 0.8
    assert result.data_counts["error_rate"] >= 4
    assert len(result.breach.samples) >= 4
    assert result.breach.samples[0].at < result.breach.samples[-1].at


async def test_heartbeat_of_another_window_is_ignored(prom: Prometheus, exporter: Exporter) -> None:
    ensure(prom, exporter, "other", 0.5)
    req = request(prom.url, [thr("error_rate", q("other"), max=0.05, **{"for": 2})], interval=0.5)
    stale = MonitorProgress(
        rollout_id=req.rollout_id,
        stage=req.stage,
        started_at=req.started_at - timedelta(hours=1),
        last_index=7200,
        counters={"error_rate": 1},
    ).model_dump(mode="json")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[stale])
    result = await run(req, env)
    assert result.breach is not None
    assert result.breach.detail["evaluation_index"] == 2
