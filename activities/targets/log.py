"""`log` target: prints each change (and optionally appends it as a JSON line). For demos."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar, Self

from activities.targets.base import Target, exposure_body, parse_config
from rollout.models import TargetChange, TargetResult
from rollout.plan import LogTarget as LogTargetConfig


def describe(change: TargetChange) -> str:
    """One readable line for a change."""
    segments = "all segments" if change.segments is None else "segments " + ",".join(change.segments)
    authority = ", ".join(f"{verb}={level}" for verb, level in sorted(change.authority.items())) or "none"
    stage = change.stage or "(nothing exposed)"
    frozen = " frozen" if change.frozen else ""
    return (
        f"[rollout {change.rollout_id} #{change.seq}] {change.kind}{frozen}: stage {stage}, "
        f"{change.percent:g}% of {segments}; authority {authority}; reason: {change.reason}"
    )


class LogTarget(Target):
    kind: ClassVar[str] = "log"

    def __init__(self, config: LogTargetConfig) -> None:
        self.config = config

    @classmethod
    def from_block(cls, target: dict[str, Any]) -> Self:
        return cls(parse_config(LogTargetConfig, target))

    async def apply(self, change: TargetChange) -> TargetResult:
        print(describe(change), flush=True)
        if self.config.path:
            body = exposure_body(change)
            line = json.dumps(body, sort_keys=True)
            appended = await asyncio.to_thread(
                _append_once, Path(self.config.path), (body["run_id"], change.idempotency_key), line
            )
            if not appended:
                return TargetResult(applied=True, detail="already logged")
        return TargetResult(applied=True, detail="logged")


def _append_once(path: Path, key: tuple[str | None, str], line: str) -> bool:
    """Append `line` unless a line with the same (run id, idempotency key) is already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for existing in f:
                try:
                    seen = json.loads(existing)
                    if (seen.get("run_id"), seen.get("idempotency_key")) == key:
                        return False
                except ValueError:
                    continue
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    return True
