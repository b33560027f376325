"""`file` target: writes an OpenFeature flagd flag definition file, atomically.

The file holds two flags (docs/targets.md):

- `<flag>` (boolean, variants `on`/`off`): `on` for about `percent`% of users, chosen
  by a `fractional` split over `targetingKey`, and, when the stage names segments,
  only for users whose `segment` context attribute is one of them;
- `<flag>-authority` (object): the stage's authority (`{verb: auto|review|forbid}`)
  for users in scope, `{}` for everyone else. Both flags bucket users identically,
  so a user in scope always gets the authority of the stage.

`<flag>` is `target.flag`, or the plan name. Bucketing hashes `"<flag>:" +
targetingKey`, and the `on` range always starts at 0, so widening the percent only
adds users: nobody in the pilot drops out at the next stage.

The file is written to a temporary file in the same directory, flushed to disk, then
renamed over the old one: readers (flagd, a file watcher) see the old or the new
document, never a partial one. A change older than the one in the file (same run,
lower sequence) is not written again.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Self

from activities.targets.base import Target, current_run_id, parse_config
from rollout.models import TargetChange, TargetResult
from rollout.plan import FileTarget as FileTargetConfig

WEIGHT_SCALE = 100  # weights in hundredths of a percent: 2.5% -> 250 of 10000
SEGMENT_ATTRIBUTE = "segment"


def flag_name(config: FileTargetConfig, change: TargetChange) -> str:
    return config.flag or change.plan_name


def _in_scope(flag: str, percent: float, segments: list[str] | None, on: str, off: str) -> Any:
    """JSON Logic selecting `on` for users inside the scope, `off` otherwise."""
    on_weight = round(percent * WEIGHT_SCALE)
    total = 100 * WEIGHT_SCALE
    if on_weight <= 0:
        split: Any = off
    elif on_weight >= total:
        split = on
    else:
        split = {
            "fractional": [
                {"cat": [f"{flag}:", {"var": "targetingKey"}]},
                [on, on_weight],
                [off, total - on_weight],
            ]
        }
    if segments is not None:
        return {"if": [{"in": [{"var": SEGMENT_ATTRIBUTE}, list(segments)]}, split, off]}
    return split


def _flag(variants: dict[str, Any], rule: Any, off: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A flag whose constant rule becomes its default variant (0% or 100% of everyone)."""
    flag: dict[str, Any] = {"state": "ENABLED", "variants": variants, "metadata": metadata}
    if isinstance(rule, str):
        flag["defaultVariant"] = rule
    else:
        flag["defaultVariant"] = off
        flag["targeting"] = rule
    return flag


def flag_document(config: FileTargetConfig, change: TargetChange) -> dict[str, Any]:
    """The flagd flag definition document for a change."""
    flag = flag_name(config, change)
    metadata: dict[str, str | int | float | bool] = {
        "rollout": change.rollout_id,
        "run_id": current_run_id() or "",
        "seq": change.seq,
        "idempotency_key": change.idempotency_key,
        "kind": change.kind,
        "stage": change.stage or "",
        "percent": change.percent,
        "segments": ",".join(change.segments) if change.segments is not None else "*",
        "frozen": change.frozen,
        "plan_hash": change.plan_hash,
        "decided_at": change.decided_at.isoformat(),
    }
    scope_rule = _in_scope(flag, change.percent, change.segments, "on", "off")
    authority_rule = _in_scope(flag, change.percent, change.segments, "granted", "none")
    return {
        "flags": {
            flag: _flag({"on": True, "off": False}, scope_rule, "off", {**metadata, "reason": change.reason}),
            f"{flag}-authority": _flag(
                {"granted": dict(sorted(change.authority.items())), "none": {}}, authority_rule, "none", metadata
            ),
        },
        "metadata": {"rollout": change.rollout_id, "generator": "rollout-controller"},
    }


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _written_seq(path: Path, flag: str, rollout_id: str, run_id: str) -> int | None:
    """The sequence of the change in the file, if it came from this run of this rollout."""
    try:
        doc = json.loads(path.read_bytes())
        meta = doc["flags"][flag]["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("rollout") != rollout_id or meta.get("run_id") != run_id:
        return None
    seq = meta.get("seq")
    return seq if isinstance(seq, int) else None


class FileTarget(Target):
    kind: ClassVar[str] = "file"

    def __init__(self, config: FileTargetConfig) -> None:
        self.config = config

    @classmethod
    def from_block(cls, target: dict[str, Any]) -> Self:
        return cls(parse_config(FileTargetConfig, target))

    async def apply(self, change: TargetChange) -> TargetResult:
        return await asyncio.to_thread(self._apply, change)

    def _apply(self, change: TargetChange) -> TargetResult:
        path = Path(self.config.path)
        flag = flag_name(self.config, change)
        written = _written_seq(path, flag, change.rollout_id, current_run_id() or "")
        if written is not None and written >= change.seq:
            same = written == change.seq
            return TargetResult(
                applied=True,
                detail=f"{path.name} already at #{written}" + ("" if same else " (newer change kept)"),
            )
        data = json.dumps(flag_document(self.config, change), indent=2, sort_keys=True).encode() + b"\n"
        write_atomically(path, data)
        return TargetResult(applied=True, detail=f"wrote flag {flag} to {path.name}")
