"""The `file` target: an OpenFeature flagd flag definition file, written atomically.

A real flagd evaluator (the OpenFeature Python SDK with the flagd provider in its
in-process file mode) reads the written file, picks up each rewrite on its own, and
resolves the flag for a large set of users as each stage intends.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from temporalio.testing import ActivityEnvironment

from activities.targets import apply_exposure
from activities.targets.file import write_atomically
from rollout.models import TargetChange
from tests.flagd_support import flagd_clients

FLAG = "support-agent"
USERS = [f"user-{i}@example.com" for i in range(4000)]


def change(
    path: Path,
    seq: int,
    percent: float,
    segments: list[str] | None,
    authority: dict[str, str] | None = None,
    flag: str | None = FLAG,
) -> TargetChange:
    target: dict[str, Any] = {"kind": "file", "path": str(path)}
    if flag is not None:
        target["flag"] = flag
    return TargetChange(
        rollout_id="rollout-support-agent",
        plan_name="support-agent-plan",
        seq=seq,
        idempotency_key=f"rollout-support-agent:{seq}",
        kind="promote",
        stage=f"stage-{seq}",
        percent=percent,
        segments=segments,
        authority=authority if authority is not None else {"read": "auto", "refund": "forbid"},
        plan_hash="cd" * 32,
        reason="approved",
        decided_at=datetime(2030, 1, 1, tzinfo=UTC),
        target=target,
    )


async def apply(c: TargetChange) -> str:
    result = await ActivityEnvironment().run(apply_exposure, c)
    assert result.applied
    return result.detail


@pytest.fixture
def flagd() -> Iterator[Callable[[Path], OpenFeatureClient]]:
    yield from flagd_clients("file-target")


def ctx(user: str, segment: str | None) -> EvaluationContext:
    return EvaluationContext(targeting_key=user, attributes={"segment": segment} if segment else {})


def enabled(client: OpenFeatureClient, segment: str | None) -> set[str]:
    return {u for u in USERS if client.get_boolean_value(FLAG, False, ctx(u, segment))}


def wait_for_seq(client: OpenFeatureClient, seq: int) -> None:
    """Wait until the provider has reloaded the file written for change `seq`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        details = client.get_boolean_details(FLAG, False, ctx("probe", "internal"))
        if details.flag_metadata.get("seq") == seq:
            return
        time.sleep(0.05)
    raise AssertionError(f"flagd did not pick up change #{seq}")


async def test_flagd_resolves_each_stage_as_intended(
    tmp_path: Path, flagd: Callable[[Path], OpenFeatureClient]
) -> None:
    path = tmp_path / "flags" / "flags.json"
    await apply(change(path, 1, 5, ["internal", "beta"]))
    client = flagd(path)

    pilot = enabled(client, "internal")
    assert 0.035 * len(USERS) <= len(pilot) <= 0.065 * len(USERS)
    assert enabled(client, "beta") == pilot  # same bucketing for every listed segment
    assert enabled(client, "external") == set()  # outside the segments
    assert enabled(client, None) == set()  # no segment attribute: outside
    # authority follows the scope: granted in scope, nothing outside
    inside, outside = sorted(pilot)[0], next(u for u in USERS if u not in pilot)
    assert client.get_object_value(f"{FLAG}-authority", {}, ctx(inside, "internal")) == {
        "read": "auto",
        "refund": "forbid",
    }
    assert client.get_object_value(f"{FLAG}-authority", {"x": 1}, ctx(outside, "internal")) == {}
    assert client.get_object_value(f"{FLAG}-authority", {"x": 1}, ctx(inside, "external")) == {}

    # next stage: 25% of every segment; the pilot users stay in
    await apply(change(path, 2, 25, None, {"read": "auto", "refund": "review"}))
    wait_for_seq(client, 2)
    limited = enabled(client, "external")
    assert 0.22 * len(USERS) <= len(limited) <= 0.28 * len(USERS)
    assert enabled(client, None) == limited == enabled(client, "internal")
    assert pilot <= limited
    assert client.get_object_value(f"{FLAG}-authority", {}, ctx(inside, None)) == {
        "read": "auto",
        "refund": "review",
    }

    # fractional percents work (hundredths of a percent)
    await apply(change(path, 3, 37.5, None))
    wait_for_seq(client, 3)
    assert 0.345 * len(USERS) <= len(enabled(client, None)) <= 0.405 * len(USERS)

    await apply(change(path, 4, 100, None))
    wait_for_seq(client, 4)
    assert enabled(client, "anyone") == set(USERS)

    # rollback from the pilot: nothing exposed
    await apply(change(path, 5, 0, None))
    wait_for_seq(client, 5)
    assert enabled(client, "internal") == set()
    assert client.get_object_value(f"{FLAG}-authority", {"x": 1}, ctx(inside, "internal")) == {}


async def test_document_format(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    await apply(change(path, 7, 12.5, ["internal"], flag=None))
    doc = json.loads(path.read_text())
    flag = doc["flags"]["support-agent-plan"]  # no target.flag: the plan name
    assert flag["state"] == "ENABLED"
    assert flag["variants"] == {"on": True, "off": False}
    assert flag["defaultVariant"] == "off"
    assert flag["targeting"] == {
        "if": [
            {"in": [{"var": "segment"}, ["internal"]]},
            {
                "fractional": [
                    {"cat": ["support-agent-plan:", {"var": "targetingKey"}]},
                    ["on", 1250],
                    ["off", 8750],
                ]
            },
            "off",
        ]
    }
    assert flag["metadata"]["seq"] == 7 and flag["metadata"]["percent"] == 12.5
    assert flag["metadata"]["segments"] == "internal"
    authority = doc["flags"]["support-agent-plan-authority"]
    assert authority["variants"] == {"granted": {"read": "auto", "refund": "forbid"}, "none": {}}
    assert authority["defaultVariant"] == "none"
    assert oct(path.stat().st_mode & 0o777) == "0o644"


async def test_repeats_are_idempotent_and_older_changes_do_not_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    assert "wrote" in await apply(change(path, 2, 25, None))
    before = path.stat().st_mtime_ns, path.read_bytes()
    assert "already at #2" in await apply(change(path, 2, 25, None))  # a retried activity
    assert "newer change kept" in await apply(change(path, 1, 5, None))  # late, older change
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    assert "wrote" in await apply(change(path, 3, 50, None))
    assert json.loads(path.read_text())["flags"][FLAG]["metadata"]["seq"] == 3


def _complete_flag_file(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc.get("flags", {}).get(FLAG), dict) and data.endswith(b"}\n")


async def test_concurrent_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    big = {"flags": {f"f{i}": {"state": "ENABLED", "variants": {"on": "x" * 200}} for i in range(1500)}}
    small = {"flags": {"f0": {"state": "ENABLED", "variants": {"on": True}}}}
    bodies = [json.dumps(big).encode(), json.dumps(small).encode()]
    write_atomically(path, bodies[0])
    stop = threading.Event()
    reads: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        n = 0
        while not stop.is_set():
            data = path.read_bytes()
            if data not in bodies and not _complete_flag_file(data):
                problems.append(f"read {len(data)} bytes that are not a whole version")
            n += 1
        reads.append(n)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(150):
            write_atomically(path, bodies[i % 2])
        for seq in range(1, 30):  # and through the activity, alternating sizes
            await apply(change(path, seq, seq % 2 * 50, ["internal"] if seq % 3 else None))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert sum(reads) > 100
    assert sorted(os.listdir(tmp_path)) == ["flags.json"]  # no temporary files left behind


async def test_log_target_prints_and_appends_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exposure.jsonl"
    c = change(path, 4, 25, ["internal"]).model_copy(update={"target": {"kind": "log", "path": str(path)}})
    assert await apply(c) == "logged"
    assert await apply(c) == "already logged"  # a retried activity
    printed = capsys.readouterr().out
    assert "rollout-support-agent #4] promote: stage stage-4, 25% of segments internal" in printed
    [line] = path.read_text().splitlines()
    assert json.loads(line)["idempotency_key"] == "rollout-support-agent:4"
    plain = c.model_copy(update={"target": {"kind": "log"}})
    assert await apply(plain) == "logged"
