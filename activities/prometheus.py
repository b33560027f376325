"""A small Prometheus HTTP API client: instant queries via /api/v1/query.

Every failure (unreachable, timeout, HTTP error, `status: error`, an unexpected
body) comes back as a `QueryResult` with `error` set rather than an exception:
for a threshold monitor all of these are "no data", and `on_no_data` decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from activities.outbound import tls


@dataclass(frozen=True)
class QueryResult:
    """The values of an instant query (one per series; empty: no series)."""

    values: list[float] = field(default_factory=list)
    error: str | None = None


def _parse_value(raw: Any) -> float:
    # Prometheus encodes sample values as strings: "0.5", "NaN", "+Inf", "-Inf"
    if isinstance(raw, list | tuple) and len(raw) == 2:
        raw = raw[1]
    if isinstance(raw, str):
        return float(raw)  # float() understands NaN, +Inf, -Inf
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    raise ValueError(f"unexpected sample {raw!r}")


def parse_response(body: Any) -> QueryResult:
    """Turn a decoded /api/v1/query response into values or an error."""
    if not isinstance(body, dict):
        return QueryResult(error="unexpected response: not a JSON object")
    if body.get("status") != "success":
        kind = body.get("errorType") or "error"
        return QueryResult(error=f"prometheus {kind}: {body.get('error') or 'query failed'}")
    data = body.get("data")
    if not isinstance(data, dict):
        return QueryResult(error="unexpected response: no data")
    rtype = data.get("resultType")
    result = data.get("result")
    try:
        if rtype == "vector" and isinstance(result, list):
            values = []
            for series in result:
                if not isinstance(series, dict) or "value" not in series:
                    return QueryResult(error="unexpected response: malformed series")
                values.append(_parse_value(series["value"]))
            return QueryResult(values=values)
        if rtype == "scalar":
            return QueryResult(values=[_parse_value(result)])
    except (TypeError, ValueError) as exc:
        return QueryResult(error=f"unexpected response: {exc}")
    return QueryResult(error=f"unsupported result type {rtype!r}; the query must return a vector or scalar")


class PrometheusClient:
    """Instant queries against one Prometheus server (use as an async context manager)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, verify=tls())

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(self, promql: str, at: datetime | None = None) -> QueryResult:
        """Evaluate `promql` at `at` (default: Prometheus' now)."""
        form = {"query": promql}
        if at is not None:
            form["time"] = f"{at.timestamp():.3f}"
        try:
            resp = await self._http.post(f"{self.base_url}/api/v1/query", data=form)
        except httpx.TimeoutException:
            return QueryResult(error=f"prometheus timed out after {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return QueryResult(error=f"prometheus unreachable: {type(exc).__name__}: {exc}".rstrip(": "))
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("status") in ("success", "error"):
            result = parse_response(body)
            if result.error is None and resp.status_code != 200:
                return QueryResult(error=f"prometheus answered HTTP {resp.status_code}")
            return result
        return QueryResult(error=f"prometheus answered HTTP {resp.status_code} without an API response")
