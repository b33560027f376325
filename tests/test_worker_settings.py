"""`rollout worker`'s load settings: flags over ROLLOUT_* variables over defaults, bounded,
and the three task queues one process polls."""

from __future__ import annotations

import pytest

from rollout.errors import UsageError
from worker.main import WorkerSettings
from workflows import queues

VARS = ("ROLLOUT_DELIVERY_SLOTS", "ROLLOUT_AUDIT_SLOTS", "ROLLOUT_NOTIFY_SLOTS", "ROLLOUT_MONITOR_SLOTS",
        "ROLLOUT_MAX_CACHED_WORKFLOWS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in VARS:
        monkeypatch.delenv(v, raising=False)


def test_defaults_without_flags_or_variables() -> None:
    assert WorkerSettings.from_env() == WorkerSettings(delivery_slots=100, audit_slots=20, notify_slots=20,
                                                       monitor_slots=2000, max_cached_workflows=1000)


def test_variables_set_what_flags_leave_alone_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_DELIVERY_SLOTS", " 300 ")
    monkeypatch.setenv("ROLLOUT_MAX_CACHED_WORKFLOWS", "0")
    monkeypatch.setenv("ROLLOUT_MONITOR_SLOTS", "50")
    s = WorkerSettings.from_env({"monitor_slots": 70, "audit_slots": None})
    assert (s.audit_slots, s.notify_slots, s.delivery_slots, s.monitor_slots, s.max_cached_workflows) == (
        20, 20, 300, 70, 0)


@pytest.mark.parametrize(("env", "value", "said"), [
    ("ROLLOUT_AUDIT_SLOTS", "many", "ROLLOUT_AUDIT_SLOTS='many' is not a whole number"),
    ("ROLLOUT_NOTIFY_SLOTS", "0", "ROLLOUT_NOTIFY_SLOTS='0' is out of range"),
    ("ROLLOUT_DELIVERY_SLOTS", "0", "ROLLOUT_DELIVERY_SLOTS='0' is out of range: give a number between 1 and 100000"),
    ("ROLLOUT_MAX_CACHED_WORKFLOWS", "-1", "between 0 and 100000"),
    ("ROLLOUT_MONITOR_SLOTS", "100001", "between 1 and 100000"),
])
def test_a_bad_variable_is_named_with_what_to_set(monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                                                  said: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(UsageError, match=said.replace("(", r"\(").replace(")", r"\)")):
        WorkerSettings.from_env()


def test_a_bad_flag_is_named_as_the_flag() -> None:
    with pytest.raises(UsageError, match="--delivery-slots 0 is out of range"):
        WorkerSettings.from_env({"delivery_slots": 0})


def test_audit_notify_and_monitors_queues_are_named_after_the_rollouts_queue() -> None:
    assert queues.audit("rollouts") == "rollouts-audit"
    assert queues.notify("rollouts") == "rollouts-notify"
    assert queues.monitors("team-a") == "team-a-monitors"


def test_rollout_worker_refuses_a_bad_setting_before_connecting() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "rollout"
    env = {k: v for k, v in os.environ.items() if k not in VARS} | {"TEMPORAL_ADDRESS": "127.0.0.1:1"}
    r = subprocess.run([str(exe), "worker", "--delivery-slots", "0"], capture_output=True, text=True, env=env,
                       timeout=60, check=False)
    assert r.returncode == 2
    assert "--delivery-slots 0 is out of range: give a number between 1 and 100000" in r.stderr
