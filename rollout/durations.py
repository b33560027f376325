"""Durations as written in plans: `30s`, `5m`, `72h`, `14d` (and combinations like `1h30m`)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raise ValueError with a readable message."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '30s', '5m', '72h' or '14d', got {text!r}")
    s = text.strip()
    pos = 0
    total = 0.0
    if not s:
        raise ValueError("empty duration; write e.g. '30s', '5m', '72h' or '14d'")
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r}; write e.g. '30s', '5m', '72h' or '14d'")
    if total <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    """Render a timedelta compactly: 3d, 72h -> 3d, 90s -> 1m30s."""
    secs = round(td.total_seconds())
    if secs == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            n, secs = divmod(secs, size)
            out.append(f"{n}{unit}")
    return "".join(out)
