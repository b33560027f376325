"""Times for people: local time with a relative part ("in 3h 12m", "5m ago").

Pure: the current time (and the zone to show) are arguments. `--json` output keeps
RFC 3339 UTC (`rfc3339`); human output uses `human`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo


def parse(value: object) -> datetime | None:
    """An ISO 8601 / RFC 3339 string or a datetime, as an aware datetime (naive means UTC)."""
    if isinstance(value, datetime):
        t = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def rfc3339(t: datetime) -> str:
    """`2026-12-02T14:03:07Z`: UTC, whole seconds unless there is a fraction."""
    u = (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)
    text = u.isoformat()
    return text.replace("+00:00", "Z")


def span(delta: timedelta) -> str:
    """A duration, two most significant units: `3h 12m`, `2d 4h`, `45s`, `0s`."""
    secs = int(abs(delta.total_seconds()))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        n, secs = divmod(secs, size)
        if n or parts:
            parts.append(f"{n}{name}")
        if len(parts) == 2:
            break
    parts = [p for p in parts if not p.startswith("0")] or ["0s"]
    return " ".join(parts)


def relative(t: datetime, now: datetime) -> str:
    """`in 3h 12m`, `5m ago`, or `now` within a second."""
    delta = t - now
    if abs(delta.total_seconds()) < 1:
        return "now"
    return f"in {span(delta)}" if delta > timedelta(0) else f"{span(delta)} ago"


def local(t: datetime, now: datetime, zone: tzinfo | None = None) -> str:
    """Local wall time: `14:03:07` today, `Dec 03 14:03` another day this year, else with the year."""
    lt = t.astimezone(zone)
    ln = now.astimezone(zone)
    if lt.date() == ln.date():
        return lt.strftime("%H:%M:%S")
    if lt.year == ln.year:
        return lt.strftime("%b %d %H:%M")
    return lt.strftime("%Y-%m-%d %H:%M")


def human(value: object, now: datetime, zone: tzinfo | None = None) -> str:
    """`14:03:07 (in 3h 12m)`; `-` for no time; an unparseable value as it is."""
    t = parse(value)
    if t is None:
        return "-" if value in (None, "") else str(value)
    return f"{local(t, now, zone)} ({relative(t, now)})"
