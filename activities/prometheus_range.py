"""Range queries for `rollout simulate`: a threshold's value at every step of a period.

`RangeFetcher.fetch(threshold, start_ms, end_ms, step_ms)` asks Prometheus'
`/api/v1/query_range` for the grid `start_ms + i * step_ms` (i = 0, 1, ... while
not after `end_ms`) in chunks of at most `MAX_POINTS` points (Prometheus refuses
more than 11,000 points per series in one query) and returns one entry per grid
time, in epoch milliseconds: the value, reduced over series as the monitor does
(`rollout.thresholds.worst_value`), or None for no data (no series at that time,
NaN, an infinity). A range query evaluates the expression as an instant query at
each grid time, so these are the values the monitor would have seen evaluating
at exactly those times.

Unlike the monitor (for which every failure is "no data"), a simulation must not
invent an answer, so failures raise:
- `PrometheusUnreachable` (exit 3): refused connection, timeout, an answer that is
  not the Prometheus API; the message names the URL;
- `QueryRejected` (exit 2): Prometheus answered with an API error (bad PromQL,
  ...); the message shows Prometheus' own error.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import httpx

from activities.outbound import tls
from rollout import thresholds as th
from rollout.errors import ConnectionFailed, UsageError
from rollout.plan import Threshold

MAX_POINTS = 11_000  # Prometheus: "exceeded maximum resolution of 11,000 points per timeseries"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONCURRENCY = 4

Progress = Callable[[int], None]  # called with the number of points of each chunk fetched


class PrometheusUnreachable(ConnectionFailed):
    """Prometheus cannot be reached (or what answered is not Prometheus): exit 3."""


class QueryRejected(UsageError):
    """Prometheus refused or failed the query and said why: exit 2."""


def grid(start_ms: int, end_ms: int, step_ms: int) -> range:
    """The grid times `start_ms + i * step_ms` not after `end_ms` (empty if end < start)."""
    if step_ms <= 0:
        raise ValueError("step must be at least 1 ms")
    return range(start_ms, max(start_ms, end_ms + 1), step_ms)


def chunks(start_ms: int, end_ms: int, step_ms: int, max_points: int = MAX_POINTS) -> list[tuple[int, int]]:
    """Split the grid into (first, last) grid times, each chunk at most `max_points` points."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    points = len(grid(start_ms, end_ms, step_ms))
    out: list[tuple[int, int]] = []
    first = 0
    while first < points:
        last = min(points, first + max_points) - 1
        out.append((start_ms + first * step_ms, start_ms + last * step_ms))
        first = last + 1
    return out


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def parse_matrix(body: Any) -> list[dict[int, float]]:
    """The series of a successful query_range body, each as time (epoch ms) -> value."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise ValueError("not a matrix result")
    out: list[dict[int, float]] = []
    for series in data["result"]:
        values = series.get("values", []) if isinstance(series, dict) else None
        if not isinstance(values, list):
            raise ValueError("malformed series")
        try:
            # sample values are strings: float() reads "NaN", "+Inf", "-Inf" too
            out.append({round(ts * 1000): float(v) for ts, v in values})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed sample: {exc}") from None
    return out


def reduce_series(threshold: Threshold, series: list[dict[int, float]], times: range) -> dict[int, float | None]:
    """One value per time: the worst over series (`worst_value`), None where no data."""
    if len(series) == 1:  # the usual case: no reduction needed, only NaN/Inf as no data
        only = series[0]
        out: dict[int, float | None] = {}
        for at in times:
            v = only.get(at)
            out[at] = v if v is not None and -math.inf < v < math.inf else None
        return out
    return {at: th.worst_value(threshold, [s[at] for s in series if at in s]) for at in times}


class RangeFetcher:
    """Range queries against one Prometheus (use as an async context manager)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_points: int = MAX_POINTS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_points = max_points
        self.requests = 0  # query_range requests made (a test reads it to see the chunking)
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport, verify=tls()
        )

    async def __aenter__(self) -> RangeFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(
        self,
        threshold: Threshold,
        start_ms: int,
        end_ms: int,
        step_ms: int,
        progress: Progress | None = None,
    ) -> dict[int, float | None]:
        """The threshold's value at every grid time from `start_ms` through `end_ms`."""
        parts = await asyncio.gather(
            *(
                self._chunk(threshold.query, first, last, step_ms, progress)
                for first, last in chunks(start_ms, end_ms, step_ms, self.max_points)
            )
        )
        found = [series for part in parts for series in part]
        # series of different chunks are simply more series: each time is in one chunk only
        return reduce_series(threshold, found, grid(start_ms, end_ms, step_ms))

    async def _chunk(
        self, query: str, first: int, last: int, step_ms: int, progress: Progress | None
    ) -> list[dict[int, float]]:
        form = {"query": query, "start": _seconds(first), "end": _seconds(last), "step": _seconds(step_ms)}
        url = f"{self.base_url}/api/v1/query_range"
        async with self._sem:
            self.requests += 1
            try:
                resp = await self._http.post(url, data=form)
            except httpx.TimeoutException:
                raise PrometheusUnreachable(
                    f"Prometheus at {self.base_url} did not answer within {self.timeout:g}s"
                ) from None
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
                raise PrometheusUnreachable(f"cannot reach Prometheus at {self.base_url}: {detail}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        status = body.get("status") if isinstance(body, dict) else None
        if status == "error":
            assert isinstance(body, dict)
            kind = body.get("errorType") or "error"
            raise QueryRejected(
                f"Prometheus at {self.base_url} rejected the query {query!r} ({kind}): "
                f"{body.get('error') or 'no reason given'}"
            )
        if status != "success":
            raise PrometheusUnreachable(
                f"no Prometheus API at {self.base_url}: HTTP {resp.status_code} without an API response"
            )
        try:
            out = parse_matrix(body)
        except ValueError as exc:
            raise QueryRejected(
                f"Prometheus at {self.base_url} answered the query {query!r} with an unusable result: {exc}"
            ) from None
        if progress is not None:
            progress((last - first) // step_ms + 1)
        return out
