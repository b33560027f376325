"""Pure views for people: times (local + relative), the state directory, status wording, watch view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rollout import timefmt
from rollout.statedir import key_file_name, state_dir_from
from rollout.status_view import phase, render_status, status_line
from rollout.watch_view import change_line, watch_view

NOW = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1), "CET")


def test_relative_times_read_as_people_say_them() -> None:
    assert timefmt.relative(NOW + timedelta(hours=3, minutes=12, seconds=5), NOW) == "in 3h 12m"
    assert timefmt.relative(NOW - timedelta(minutes=5), NOW) == "5m ago"
    assert timefmt.relative(NOW + timedelta(days=2, hours=4), NOW) == "in 2d 4h"
    assert timefmt.relative(NOW + timedelta(hours=3, seconds=5), NOW) == "in 3h"
    assert timefmt.relative(NOW - timedelta(seconds=45), NOW) == "45s ago"
    assert timefmt.relative(NOW, NOW) == "now"


def test_human_times_are_local_with_a_relative_part_and_json_keeps_rfc3339_utc() -> None:
    assert timefmt.human("2026-12-02T13:12:00+00:00", NOW, CET) == "14:12:00 (in 3h 12m)"
    assert timefmt.human("2026-12-03T09:00:00Z", NOW, CET) == "Dec 03 10:00 (in 23h)"
    assert timefmt.human("2025-12-02T09:55:00Z", NOW, CET) == "2025-12-02 10:55 (365d ago)"
    assert timefmt.human(None, NOW, CET) == "-"
    assert timefmt.human("not a time", NOW, CET) == "not a time"
    assert timefmt.rfc3339(datetime(2026, 12, 2, 14, 12, tzinfo=CET)) == "2026-12-02T13:12:00Z"


def test_state_dir_is_rollout_state_dir_else_xdg_else_home_never_the_working_directory() -> None:
    home = Path("/home/u")
    assert state_dir_from({"ROLLOUT_STATE_DIR": "/srv/rollout"}, home) == Path("/srv/rollout")
    assert state_dir_from({"XDG_STATE_HOME": "/x/state"}, home) == Path("/x/state/rollout")
    assert state_dir_from({"XDG_STATE_HOME": "relative/ignored"}, home) == home / ".local/state/rollout"
    assert state_dir_from({}, home) == home / ".local/state/rollout"
    assert state_dir_from({"ROLLOUT_STATE_DIR": "  "}, home) == home / ".local/state/rollout"


def test_key_file_name_is_the_identity_without_path_separators() -> None:
    assert key_file_name("frank@example.com") == "frank@example.com.key"
    assert key_file_name("../../etc/passwd") == "_.._etc_passwd.key"


def status(**over: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "workflow_id": "rollout-agent", "name": "agent", "plan_hash": "ab" * 32,
        "stages": ["pilot", "limited-25", "system-of-record"], "stage": "pilot", "stage_index": 0, "tier": "pilot",
        "status": "awaiting_approval", "exposure": {"percent": 0, "segments": None, "authority": {}},
        "exposure_stage": None, "window_started_at": None, "window_ends_at": None,
        "approvals": {"stage": "pilot", "given": {}, "missing": ["engineering"], "entry": 1},
        "pending_handoff": [], "hold": None, "open_breaches": [], "escalation": None,
        "pending_amendment": None, "target_pending": None, "refused": [], "started_at": "2026-12-02T09:00:00Z",
    }
    st.update(over)
    return st


HELD_AWAITING_LIMITED = status(
    stage="limited-25", stage_index=1, status="held", exposure_stage="pilot",
    exposure={"percent": 5, "segments": ["internal"], "authority": {"read": "auto"}, "frozen": True},
    approvals={"stage": "limited-25", "given": {"engineering": {"actor": "gina@example.com", "at": "2026-12-02T09:50:00Z"}},
               "missing": ["operations"], "entry": 2, "awaiting_since": "2026-12-02T09:40:00Z"},
    hold={"kind": "hold", "reason": "odd replies", "actor": "erin@example.com", "since": "2026-12-02T09:55:00Z",
          "interrupted": "awaiting_approval"},
    escalation={"reason": "hold by erin", "level": 0, "acknowledged_by": None, "next_page_at": "2026-12-02T10:05:00Z",
                "pages": [{"level": 0, "roles": ["incident_response"], "recipients": ["carol@example.com"],
                           "at": "2026-12-02T09:55:00Z", "due_at": "2026-12-02T09:55:00Z"}]},
)


def test_a_hold_while_awaiting_the_next_stage_names_the_scope_in_force() -> None:
    assert phase(HELD_AWAITING_LIMITED) == "held while awaiting approval of limited-25; pilot's scope in force"
    line = status_line(HELD_AWAITING_LIMITED)
    assert "held while awaiting approval of limited-25; pilot's scope in force" in line
    assert "held at limited-25" not in render_status(HELD_AWAITING_LIMITED, NOW, CET)


def test_the_scope_in_force_is_named_whenever_it_is_not_the_stages() -> None:
    awaiting = status(stage="limited-25", exposure_stage="pilot", exposure={"percent": 5})
    assert phase(awaiting) == "awaiting approval of limited-25; pilot's scope in force"
    soaking = status(stage="pilot", status="soaking", exposure_stage="pilot", exposure={"percent": 5})
    assert phase(soaking) == "soaking pilot"
    assert phase(status()) == "awaiting approval of pilot; nothing in force"
    rolled = status(status="rolled_back", hold={"kind": "rollback", "reason": "x", "actor": "a", "since": None,
                                                "interrupted": "soaking"})
    assert phase(rolled) == "rolled back to pilot; nothing in force (fallback path)"
    narrowed = status(stage="limited-25", status="held", exposure_stage="limited-25",
                      exposure={"percent": 5, "narrowed": True},
                      hold={"kind": "narrow", "reason": "x", "actor": "a", "since": None, "interrupted": "soaking"})
    assert phase(narrowed) == "narrowed while soaking limited-25; limited-25 narrowed to the previous stage's scope"


def test_a_closed_rollout_shows_no_open_escalation() -> None:
    aborted = dict(HELD_AWAITING_LIMITED, status="aborted", exposure={"percent": 0}, final_reason="business decision")
    text = render_status(aborted, NOW, CET)
    assert "OPEN" not in text and "next page" not in text
    assert "closed with the rollout (aborted), never acknowledged" in text
    assert "PAGED" not in status_line(aborted)
    assert phase(aborted) == "aborted at limited-25; nothing in force"
    assert watch_view(aborted, NOW, CET).escalation is None


def test_status_times_are_local_with_relative_parts() -> None:
    text = render_status(HELD_AWAITING_LIMITED, NOW, CET)
    assert "OPEN, next page 11:05:00 (in 5m)" in text
    assert "paged carol@example.com at 10:55:00 (5m ago)" in text
    assert "awaited since 10:40:00 (20m ago)" in text


def test_watch_view_ticks_approvals_by_role_and_counts_the_window_down() -> None:
    v = watch_view(HELD_AWAITING_LIMITED, NOW, CET)
    assert [(a.role, a.actor) for a in v.approvals] == [("engineering", "gina@example.com"), ("operations", None)]
    assert [(c.name, c.mark) for c in v.stages] == [
        ("pilot", "exposed"), ("limited-25", "current"), ("system-of-record", "pending")]
    assert v.escalation is not None and "level 0" in v.escalation and "next page 11:05:00 (in 5m)" in v.escalation
    soaking = status(status="soaking", exposure_stage="pilot", exposure={"percent": 5},
                     window_started_at="2026-12-02T09:00:00Z", window_ends_at="2026-12-02T13:12:00Z")
    w = watch_view(soaking, NOW, CET).window
    assert w is not None and w.remaining == "in 3h 12m" and abs(w.fraction - 60 / 252) < 1e-9


def test_the_piped_watch_line_changes_with_the_state_not_with_the_clock() -> None:
    st = status(status="soaking", exposure_stage="pilot", exposure={"percent": 5},
                window_started_at="2026-12-02T09:00:00Z", window_ends_at="2026-12-02T13:12:00Z")
    assert change_line(st) == change_line(dict(st))
    assert change_line(st) != change_line(dict(st, status="held"))
    assert "window ends 2026-12-02T13:12:00Z" in change_line(st)
