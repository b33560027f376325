"""Range fetches for `rollout simulate` against a real Prometheus holding backfilled history."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activities.prometheus_range import (
    MAX_POINTS,
    PrometheusUnreachable,
    QueryRejected,
    RangeFetcher,
    chunks,
)
from rollout.plan import Threshold
from tests.promhistory import METRIC, HistoryPrometheus, Sample, series, write_openmetrics
from tests.promstack import free_port

STEP = 60_000  # ms
DAY = 86_400_000
NOW_MS = (int(time.time() * 1000) // STEP) * STEP
START = NOW_MS - 9 * DAY  # 12,960 one-minute points: more than one query can hold
SPIKE_AT = START + 2 * DAY
GAP = (START + 3 * DAY, START + 3 * DAY + 3_600_000)  # no samples for an hour


def _history() -> Iterator[Sample]:
    for labels, at, value in series("flat", START, NOW_MS - STEP, STEP, 0.01):
        if GAP[0] <= at < GAP[1]:
            continue
        yield labels, at, (0.5 if at == SPIKE_AT else value)
    # two series for one query: the worse one is the value, as for the monitor
    yield from series("pair-a", START, START + DAY, STEP, 0.01)
    yield from series("pair-b", START, START + DAY, STEP, 0.03)
    yield from series("nan", START, START + DAY, STEP, math.nan)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HistoryPrometheus]:
    path = Path(tmp_path_factory.mktemp("history")) / "history.om"
    write_openmetrics(path, _history())
    p = HistoryPrometheus(path)
    try:
        yield p
    finally:
        p.close()


def thr(query: str, **kw: object) -> Threshold:
    return Threshold.model_validate({"name": "t", "query": query, "max": 0.02, **kw})


def q(case: str) -> str:
    return f'{METRIC}{{case="{case}"}}'


def test_chunks_never_exceed_the_points_limit_and_cover_the_grid_once() -> None:
    parts = chunks(0, 25_000 * 30_000, 30_000)
    assert [(b - a) // 30_000 + 1 for a, b in parts] == [MAX_POINTS, MAX_POINTS, 3001]
    assert parts[0][0] == 0 and parts[-1][1] == 25_000 * 30_000
    assert all(b2 == a1 + 30_000 for (_, a1), (b2, _) in itertools.pairwise(parts))


async def test_a_period_longer_than_11000_points_is_fetched_in_chunks_with_every_step_present(
    prom: HistoryPrometheus,
) -> None:
    end = NOW_MS - STEP
    async with RangeFetcher(prom.url) as f:
        values = await f.fetch(thr(q("flat")), START, end, STEP)
        assert f.requests == 2
    assert len(values) == (end - START) // STEP + 1 > MAX_POINTS
    assert values[START] == 0.01 and values[end] == 0.01
    assert values[SPIKE_AT] == 0.5
    assert values[SPIKE_AT + STEP] == 0.01


async def test_a_gap_is_no_data_after_prometheus_five_minute_lookback(prom: HistoryPrometheus) -> None:
    async with RangeFetcher(prom.url) as f:
        values = await f.fetch(thr(q("flat")), GAP[0] - STEP, GAP[1], STEP)
    # the last sample before the gap is seen for 5 minutes, then nothing until the gap ends
    assert [values[GAP[0] + k * STEP] for k in range(5)] == [0.01] * 5
    assert values[GAP[0] + 5 * STEP] is None
    assert values[GAP[1] - STEP] is None
    assert values[GAP[1]] == 0.01


async def test_several_series_reduce_to_the_worst_value_and_nan_is_no_data(prom: HistoryPrometheus) -> None:
    async with RangeFetcher(prom.url) as f:
        pair = await f.fetch(thr(f'{METRIC}{{case=~"pair-.*"}}'), START, START + 10 * STEP, STEP)
        low = await f.fetch(thr(f'{METRIC}{{case=~"pair-.*"}}', max=None, min=0.02), START, START + STEP, STEP)
        nan = await f.fetch(thr(q("nan")), START, START + 10 * STEP, STEP)
    assert set(pair.values()) == {0.03}
    assert set(low.values()) == {0.01}
    assert set(nan.values()) == {None}


async def test_range_values_equal_instant_queries_at_the_same_times(prom: HistoryPrometheus) -> None:
    times = [SPIKE_AT - STEP, SPIKE_AT, GAP[0] + 4 * STEP, GAP[0] + 6 * STEP]
    async with RangeFetcher(prom.url) as f:
        values = await f.fetch(thr(q("flat")), times[0], times[-1], STEP)
    async with httpx.AsyncClient() as http:
        for at in times:
            resp = await http.get(f"{prom.url}/api/v1/query", params={"query": q("flat"), "time": at / 1000})
            result = resp.json()["data"]["result"]
            assert values[at] == (float(result[0]["value"][1]) if result else None)


async def test_a_query_prometheus_rejects_raises_its_error_for_exit_2(prom: HistoryPrometheus) -> None:
    async with RangeFetcher(prom.url) as f:
        with pytest.raises(QueryRejected) as err:
            await f.fetch(thr("sum(rate(x[5m])"), START, START + STEP, STEP)
    assert err.value.exit_code == 2
    assert "bad_data" in err.value.message and "parse error" in err.value.message


async def test_an_unreachable_prometheus_raises_with_its_url_for_exit_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with RangeFetcher(url, timeout=2) as f:
        with pytest.raises(PrometheusUnreachable) as err:
            await f.fetch(thr("up"), START, START + STEP, STEP)
    assert err.value.exit_code == 3
    assert url in err.value.message
