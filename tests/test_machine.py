"""One test per rule of DESIGN.md "Rules the workflow enforces" and "Who may act",
against the pure state machine: no Temporal, milliseconds each."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from rollout.machine_model import (
    Abort,
    Acknowledge,
    Amend,
    Approve,
    BreachReported,
    Close,
    DeadlineReached,
    Hold,
    Notify,
    Reject,
    Resolved,
    Resume,
    Rollback,
    TargetAcked,
    TargetFailed,
    event_from_payload,
)
from tests.machine_kit import T0, Kit
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, WORKFLOW_OWNER, plan_dict, with_thresholds

H = timedelta(hours=1)
M = timedelta(minutes=1)


def threshold(**kw: Any) -> dict[str, Any]:
    return {"name": "errors", "query": "q", "max": 0.1, **kw}


def watched(*ts: dict[str, Any], stage: int = 0, interval: str = "1m", **plan: Any) -> dict[str, Any]:
    d = with_thresholds(plan_dict(**plan), stage, *(ts or (threshold(),)))
    d["metrics"]["interval"] = interval
    return d


def through_pilot(k: Kit) -> None:
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    soak(k, 72 * H)


def soak(k: Kit, span: timedelta) -> None:
    """Let time pass; every scheduled evaluation of what is watched passes."""
    end = k.now + span
    while k.s.watch is not None:
        spec = k.s.watch
        nxt = spec.anchor + timedelta(seconds=spec.next_index * spec.interval_seconds)
        if nxt > end:
            break
        k.evaluate({t.name: 0.0 for t in spec.thresholds})
    k.advance(end - k.now)


def into_limited(k: Kit) -> None:
    through_pilot(k)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))


def pilot_soaking(d: dict[str, Any] | None = None, **kw: Any) -> Kit:
    k = Kit(d, **kw)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    return k


# ---- the life of a stage ---------------------------------------------------------------


def test_stage_goes_awaiting_soaking_handoff_then_next_awaiting() -> None:
    k = Kit()
    assert k.s.status == "awaiting_approval"
    into_limited(k)
    assert (k.s.status, k.status()["stage"]) == ("soaking", "limited-25")
    k.advance(7 * 24 * H)
    assert k.s.status == "awaiting_handoff"
    assert [a.action for a in k.audits("awaiting_handoff")] == ["awaiting_handoff"]  # every status change is audited
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))
    assert (k.s.status, k.status()["stage"]) == ("awaiting_approval", "system-of-record")


def test_awaiting_handoff_is_skipped_when_no_items_are_open() -> None:
    k = Kit()
    through_pilot(k)
    assert (k.s.status, k.status()["stage"]) == ("awaiting_approval", "limited-25")
    assert not k.audits("awaiting_handoff")


def test_completed_after_the_last_stage_closes_the_rollout() -> None:
    k = Kit()
    into_limited(k)
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))
    k.advance(7 * 24 * H)
    for role, who in (("risk", RISK), ("engineering", ENG2), ("operations", OPS)):
        k.send(Approve(actor=who, stage="system-of-record", role=role))
    k.send(Acknowledge(actor=OPS, item="On-call rota includes the agent"))
    k.send(Acknowledge(actor=IR, item="Runbook reviewed"))
    k.advance(14 * 24 * H)
    assert k.s.status == "completed"
    assert any(isinstance(c, Close) and c.status == "completed" for c in k.log)


def test_nothing_is_exposed_before_the_pilot_is_entered() -> None:
    st = Kit().status()
    assert st["exposure_stage"] is None and st["exposure"]["percent"] == 0


def test_window_ends_at_is_set_only_while_soaking() -> None:
    k = pilot_soaking()
    assert k.status()["window_ends_at"] == (T0 + 72 * H).isoformat()
    k.send(Hold(actor=RISK, reason="look"))
    assert k.status()["window_ends_at"] is None


# ---- approvals -------------------------------------------------------------------------


def test_entry_needs_one_approval_per_named_role() -> None:
    k = Kit()
    through_pilot(k)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    assert k.s.status == "awaiting_approval" and k.status()["approvals"]["missing"] == ["operations"]
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))
    assert k.s.status == "soaking"


def test_approving_a_stage_that_is_not_awaited_is_refused() -> None:
    k = Kit()
    assert "not awaiting approval" in (k.refusal(Approve(actor=OPS, stage="limited-25", role="operations")) or "")
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    assert "not awaiting approval" in (k.refusal(Approve(actor=ENG2, stage="pilot", role="engineering")) or "")


def test_refusal_reasons_for_approvals() -> None:
    k = Kit()
    through_pilot(k)
    assert "not listed for role" in (k.refusal(Approve(actor=RISK, stage="limited-25", role="engineering")) or "")
    assert "rollout owner" in (k.refusal(Approve(actor=OWNER, stage="limited-25", role="engineering")) or "")
    assert "unknown stage" in (k.refusal(Approve(actor=ENG1, stage="nope", role="engineering")) or "")
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    assert "already approved in this entry" in (k.refusal(Approve(actor=ENG2, stage="limited-25", role="engineering")) or "")


def test_an_identity_approves_once_per_entry_for_any_role() -> None:
    d = plan_dict()
    d["approvers"]["operations"] = [OPS, ENG1]
    k = Kit(d)
    through_pilot(k)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    assert "already approved this entry" in (k.refusal(Approve(actor=ENG1, stage="limited-25", role="operations")) or "")


def test_distinct_from_refuses_the_named_owner() -> None:
    d = plan_dict()
    d["approvers"]["risk"] = [RISK, WORKFLOW_OWNER]
    k = Kit(d)
    into_limited(k)
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))
    k.advance(7 * 24 * H)
    reason = k.refusal(Approve(actor=WORKFLOW_OWNER, stage="system-of-record", role="risk"))
    assert reason is not None and "separation of duties" in reason


def test_approvals_belong_to_one_entry_and_a_rollback_needs_fresh_ones() -> None:
    k = Kit()
    into_limited(k)
    k.send(Rollback(actor=RISK, reason="bad"))
    assert k.s.status == "rolled_back" and k.status()["stage"] == "pilot"
    k.send(Resume(actor=IR, reason="fixed"))
    k.advance(72 * H)
    assert k.status()["stage"] == "limited-25" and k.status()["approvals"]["given"] == {}
    assert k.s.status == "awaiting_approval"


def test_entry_number_counts_each_time_approval_is_awaited_afresh() -> None:
    k = Kit()
    assert k.status()["approvals"]["entry"] == 1
    through_pilot(k)
    assert k.status()["approvals"]["entry"] == 2
    k.send(Reject(actor=OPS, role="operations", reason="not yet"))
    assert k.status()["approvals"]["entry"] == 3


def test_remind_after_notifies_missing_approvers_and_never_pages() -> None:
    d = plan_dict(notify=[{"kind": "webhook", "url": "http://127.0.0.1:9/n"}])
    d["stages"][0]["approvals"]["remind_after"] = "24h"
    k = Kit(d)
    k.advance(25 * H)
    reminders = [n for n in k.notes() if n.event == "approval_reminder"]
    assert len(reminders) == 1 and not reminders[0].page and set(reminders[0].recipients) == {ENG1, ENG2, OWNER}
    assert not [n for n in k.notes() if n.page]


def test_reject_voids_approvals_and_holds_until_resume() -> None:
    k = Kit()
    through_pilot(k)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.send(Reject(actor=OPS, stage="limited-25", role="operations", reason="runbook missing"))
    assert k.s.status == "held" and "runbook missing" in k.status()["hold"]["reason"]
    assert k.status()["approvals"]["given"] == {}
    k.send(Resume(actor=IR, reason="runbook written"))
    assert k.s.status == "awaiting_approval"
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))  # the rejecter may approve later
    k.send(Approve(actor=ENG2, stage="limited-25", role="engineering"))
    assert k.s.status == "soaking"


def test_the_rollout_owner_may_reject_when_listed_for_a_role() -> None:
    k = Kit()
    assert k.refusal(Reject(actor=OWNER, stage="pilot", role="engineering", reason="stop")) is None
    assert "not listed" in (k.refusal(Reject(actor=RISK, stage="pilot", reason="stop")) or "")


def test_no_entry_follows_a_containment_without_a_resume() -> None:
    k = Kit()
    k.send(Hold(actor=RISK, reason="wait"))
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))  # a hold that interrupted awaiting
    assert k.s.status == "held" and k.status()["exposure_stage"] is None
    k.send(Resume(actor=IR, reason="go"))
    assert k.s.status == "soaking"  # the approval kept, entered at once on resume


# ---- windows, thresholds, breaches --------------------------------------------------


def test_window_starts_when_the_target_acknowledges() -> None:
    k = Kit(auto_ack=False)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    assert k.s.status == "soaking" and k.s.window_started_at is None
    assert k.status()["exposure_stage"] is None and k.status()["target_pending"]["kind"] == "promote"
    k.now += 5 * M
    k.send(TargetAcked(seq=k.changes()[-1].seq))
    assert k.s.window_started_at == T0 + 5 * M and k.status()["exposure_stage"] == "pilot"


def test_any_resume_restarts_the_window_from_zero() -> None:
    k = pilot_soaking()
    k.advance(70 * H)
    k.send(Hold(actor=RISK, reason="x"))
    k.send(Resume(actor=IR, reason="y"))
    assert k.s.window_ends_at == k.now + 72 * H


def test_for_n_breaches_on_the_nth_consecutive_failing_evaluation() -> None:
    k = pilot_soaking(watched(threshold(**{"for": 3})))
    k.evaluate({"errors": 0.5})
    k.evaluate({"errors": 0.5})
    assert k.s.status == "soaking"
    k.evaluate({"errors": 0.5})
    assert k.s.status == "held" and k.audits("breach")


def test_max_fails_above_and_equal_passes_min_fails_below() -> None:
    k = pilot_soaking(watched(threshold(max=0.1), {"name": "quality", "query": "q2", "min": 0.8}))
    k.evaluate({"errors": 0.1, "quality": 0.8})
    assert k.s.status == "soaking"
    k.evaluate({"errors": 0.0, "quality": 0.79})
    assert k.s.status == "held" and k.s.containment is not None and k.s.containment.thresholds == ["quality"]


def test_a_passing_evaluation_resets_the_counter() -> None:
    k = pilot_soaking(watched(threshold(**{"for": 2})))
    k.evaluate({"errors": 0.5})
    k.evaluate({"errors": 0.0})
    k.evaluate({"errors": 0.5})
    assert k.s.status == "soaking" and k.s.tracks["errors"].counter == 1


def test_a_long_bad_spell_is_one_breach_and_it_breaches_again_only_after_a_pass() -> None:
    k = Kit(watched(threshold(action="hold")))
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    for _ in range(5):
        k.evaluate({"errors": 0.5})
    assert len(k.audits("breach")) == 1
    k.send(Resume(actor=IR, reason="ok"))  # resume resets the counters (and the latch)
    k.evaluate({"errors": 0.5})
    assert len(k.audits("breach")) == 2


def test_no_data_with_on_no_data_breach_counts_as_failing() -> None:
    k = pilot_soaking(watched(threshold(on_no_data="breach", action="rollback")))
    k.evaluate({"errors": None})
    assert k.s.status == "rolled_back"


def test_no_data_with_on_no_data_hold_contains_with_hold_whatever_the_action() -> None:
    k = pilot_soaking(watched(threshold(on_no_data="hold", action="rollback")))
    k.evaluate({"errors": None})
    assert k.s.status == "held" and k.s.containment is not None and k.s.containment.kind == "hold"


def test_no_data_with_on_no_data_ignore_leaves_the_counter_unchanged() -> None:
    k = pilot_soaking(watched(threshold(on_no_data="ignore", **{"for": 2})))
    k.evaluate({"errors": 0.5})
    k.evaluate({"errors": None})
    assert k.s.tracks["errors"].counter == 1 and k.s.status == "soaking"
    k.evaluate({"errors": 0.5})
    assert k.s.status == "held"


def test_a_window_with_under_90_percent_coverage_holds_with_insufficient_data() -> None:
    d = watched(threshold(on_no_data="ignore"), interval="1h")
    k = pilot_soaking(d)
    for i in range(72):
        k.evaluate({"errors": None if i < 8 else 0.0})  # 64/72 = 0.89
    k.advance(H)
    assert k.s.status == "held" and k.s.containment is not None
    assert k.s.containment.reason == "insufficient data"
    assert k.audits("window_insufficient_data")


def test_a_window_with_90_percent_coverage_is_clean() -> None:
    d = watched(threshold(on_no_data="ignore"), interval="1h")
    k = pilot_soaking(d)
    for i in range(72):
        k.evaluate({"errors": None if i < 7 else 0.0})  # 65/72 >= 0.9
    assert k.s.status == "awaiting_approval" and k.status()["stage"] == "limited-25"
    assert k.audits("window_summary")[-1].payload["thresholds"]["errors"]["evaluations"] == 72


def test_missed_evaluations_count_as_no_data() -> None:
    d = watched(threshold(on_no_data="ignore"), interval="1h")
    k = pilot_soaking(d)
    for _ in range(60):
        k.evaluate({"errors": 0.0})
    k.advance(15 * H)  # the monitor was down: 12 evaluations never made (judged after the grace)
    assert k.s.status == "held" and k.s.containment is not None and k.s.containment.reason == "insufficient data"


def test_the_window_waits_for_the_monitor_to_report_up_to_its_end() -> None:
    d = watched(threshold(on_no_data="ignore"), interval="1h")
    k = pilot_soaking(d)
    for _ in range(71):
        k.evaluate({"errors": 0.0})
    k.advance(H)  # window time is up, last evaluation not reported yet
    assert k.s.status == "soaking" and k.s.window_due
    k.evaluate({"errors": 0.0}, at=T0 + 72 * H)
    assert k.status()["stage"] == "limited-25"


def test_thresholds_of_the_exposed_stage_are_watched_while_awaiting_the_next_approval() -> None:
    k = Kit(watched(interval="1h"))
    through_pilot(k)
    assert k.s.status == "awaiting_approval" and k.s.watch is not None and k.s.watch.stage == "pilot"
    k.evaluate({"errors": 0.5})
    assert k.s.status == "held"


def test_thresholds_are_watched_while_rolled_back_and_a_rollback_goes_one_stage_further() -> None:
    d = with_thresholds(watched(threshold(action="rollback"), interval="1h"), 1, threshold(action="rollback"))
    k = Kit(d)
    into_limited(k)
    k.send(Rollback(actor=RISK, reason="bad"))
    assert k.s.status == "rolled_back" and k.status()["exposure_stage"] == "pilot"
    assert k.s.watch is not None and k.s.watch.stage == "pilot"
    k.evaluate({"errors": 0.5})
    assert k.status()["exposure_stage"] is None and k.status()["exposure"]["percent"] == 0


def test_while_contained_a_breach_applies_only_if_stricter() -> None:
    d = watched(threshold(action="hold"), {"name": "latency", "query": "l", "max": 1, "action": "hold"})
    k = pilot_soaking(d)
    k.send(Hold(actor=RISK, reason="manual"))
    n = len(k.changes())
    k.evaluate({"errors": 0.5, "latency": 0.0})
    assert len(k.changes()) == n and k.audits("breach")[-1].payload["breach"]["applied"] is False
    k.send(BreachReported(source="am", threshold="latency", action="rollback", observed_at=k.now))
    assert k.s.status == "rolled_back"


def test_breaches_in_one_evaluation_are_one_decision_and_the_strictest_wins() -> None:
    d = watched(threshold(action="hold"), {"name": "latency", "query": "l", "max": 1, "action": "narrow"},
                stage=1)
    k = Kit(d)
    into_limited(k)
    k.evaluate({"errors": 0.5, "latency": 5})
    breaches = k.audits("breach")
    assert len(breaches) == 1 and breaches[0].payload["breach"]["action"] == "narrow"
    assert {b["threshold"] for b in breaches[0].payload["breach"]["evidence"]["breaches"]} == {"errors", "latency"}
    assert len(k.audits("contained_narrow")) == 1


def test_report_breach_with_an_unknown_threshold_holds() -> None:
    k = pilot_soaking()
    k.send(BreachReported(source="tool", threshold="nope"))
    assert k.s.containment is not None and k.s.containment.kind == "hold"


def test_report_breach_action_applies_only_when_stricter() -> None:
    k = pilot_soaking(watched(threshold(action="narrow"), stage=1))
    into_limited_from = k
    into_limited_from.advance(72 * H)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))
    k.send(BreachReported(source="am", threshold="errors", action="hold"))
    assert k.s.containment is not None and k.s.containment.kind == "narrow"


def test_repeats_while_contained_are_counted_and_notify_nobody() -> None:
    d = plan_dict(notify=[{"kind": "webhook", "url": "http://127.0.0.1:9/n"}])
    k = pilot_soaking(d)
    k.send(BreachReported(source="am", threshold="x", observed_at=k.now))
    before = len(k.notes())
    for _ in range(200):
        k.send(BreachReported(source="am", threshold="x", observed_at=k.now, detail={"big": "a" * 15000}))
    assert len(k.notes()) == before
    assert k.status()["open_breaches"][0]["repeats"] == 200


def test_a_breach_observed_before_the_stage_entry_or_last_resume_changes_nothing() -> None:
    k = Kit()
    k.advance(H)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    k.send(BreachReported(source="am", threshold="x", observed_at=T0))
    assert k.s.status == "soaking" and "recorded only" in k.audits("breach")[-1].reason


def test_a_breach_with_nothing_exposed_is_recorded_only() -> None:
    k = Kit()
    k.send(BreachReported(source="am", threshold="x"))
    assert k.s.status == "awaiting_approval" and k.audits("breach")


def test_an_alert_for_another_stage_is_recorded_only() -> None:
    k = pilot_soaking()
    k.send(BreachReported(source="am", threshold="x", stage="limited-25"))
    assert k.s.status == "soaking" and "not the exposed stage" in k.audits("breach")[-1].reason


def test_report_resolved_is_recorded_and_never_resumes() -> None:
    k = pilot_soaking()
    k.send(BreachReported(source="am", threshold="x"))
    k.send(Resolved(source="am", threshold="x", observed_at=k.now))
    assert k.s.status == "held" and k.audits("breach_resolved")
    assert k.status()["open_breaches"][0]["evidence"]["resolved"][0]["source"] == "am"


def test_counters_and_coverage_survive_a_json_round_trip() -> None:
    k = pilot_soaking(watched(threshold(**{"for": 3})))
    k.evaluate({"errors": 0.5})
    k.evaluate({"errors": 0.5})
    k.state = type(k.state).model_validate_json(k.state.model_dump_json())
    k.evaluate({"errors": 0.5})
    assert k.s.status == "held"


# ---- containment -------------------------------------------------------------------


def test_hold_freezes_the_target_at_its_scope() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=RISK, reason="x"))
    ch = k.changes()[-1]
    assert ch.kind == "hold" and ch.frozen and ch.percent == 5 and k.s.window_ends_at is None


def test_narrow_cuts_to_the_previous_scope_and_auto_becomes_review() -> None:
    k = Kit(watched(threshold(action="narrow"), stage=1))
    into_limited(k)
    k.evaluate({"errors": 0.5})
    st = k.status()
    assert st["status"] == "held" and st["stage"] == "limited-25" and st["exposure_stage"] == "limited-25"
    assert st["exposure"]["percent"] == 5 and st["exposure"]["narrowed"] is True
    assert st["exposure"]["authority"]["send_customer_message"] == "review"


def test_narrow_in_the_pilot_keeps_the_pilot_scope() -> None:
    k = pilot_soaking(watched(threshold(action="narrow")))
    k.evaluate({"errors": 0.5})
    assert k.status()["exposure"]["percent"] == 5 and k.status()["exposure"]["authority"]["read"] == "review"


def test_rollback_goes_to_the_previous_stage_and_voids_its_approvals_and_handoffs() -> None:
    k = Kit()
    into_limited(k)
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))
    k.send(Rollback(actor=RISK, reason="bad"))
    st = k.status()
    assert st["status"] == "rolled_back" and st["stage"] == "pilot" and st["exposure"]["percent"] == 5
    assert "limited-25" not in st["handoff_acknowledged"]
    assert "not been entered" in (k.refusal(Acknowledge(actor=OPS, item="Support leads briefed")) or "")


def test_rollback_from_the_pilot_exposes_nothing_and_resume_awaits_approval() -> None:
    k = pilot_soaking()
    k.send(Rollback(actor=RISK, reason="bad"))
    assert k.status()["exposure"]["percent"] == 0 and k.status()["exposure_stage"] is None
    k.send(Resume(actor=IR, reason="again"))
    assert k.s.status == "awaiting_approval" and k.status()["approvals"]["given"] == {}


def test_resume_restores_the_exposed_stage_scope() -> None:
    k = Kit(watched(threshold(action="narrow"), stage=1))
    into_limited(k)
    k.evaluate({"errors": 0.5})
    k.send(Resume(actor=IR, reason="fixed"))
    assert k.status()["exposure"]["percent"] == 25 and not k.status()["exposure"]["narrowed"]


def test_a_hold_while_awaiting_keeps_the_approvals_already_given() -> None:
    k = Kit()
    through_pilot(k)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.send(Hold(actor=RISK, reason="wait"))
    k.send(Resume(actor=IR, reason="go"))
    k.advance(72 * H)  # the exposed stage soaks again, then the kept approval still counts
    assert k.status()["stage"] == "limited-25" and "engineering" in k.status()["approvals"]["given"]


def test_max_hold_turns_a_hold_into_a_rollback() -> None:
    k = Kit()
    into_limited(k)
    k.send(Hold(actor=RISK, reason="x"))
    k.advance(7 * 24 * H)
    assert k.s.status == "rolled_back" and "max_hold" in (k.s.containment.reason if k.s.containment else "")


def test_tightening_a_hold_to_a_narrow_does_not_restart_the_max_hold_clock() -> None:
    k = Kit(watched(threshold(action="narrow"), stage=1))
    into_limited(k)
    k.send(Hold(actor=RISK, reason="x"))
    k.advance(3 * 24 * H)
    k.send(BreachReported(source="am", threshold="errors", observed_at=k.now))
    assert k.s.containment is not None and k.s.containment.kind == "narrow"
    k.advance(4 * 24 * H)
    assert k.s.status == "rolled_back"


def test_abort_sets_scope_zero_and_closes_and_later_actions_are_refused() -> None:
    k = pilot_soaking()
    k.send(Abort(actor=OWNER, reason="stop"))
    assert k.s.status == "aborted" and k.changes()[-1].kind == "abort" and k.changes()[-1].percent == 0
    assert any(isinstance(c, Close) and c.status == "aborted" for c in k.log)
    assert "aborted" in (k.refusal(Hold(actor=RISK, reason="x")) or "")
    assert k.status()["escalation"] is None


# ---- escalation ----------------------------------------------------------------------


def test_a_containment_pages_chain0_then_the_next_then_the_whole_chain_again() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=RISK, reason="x"))
    k.advance(5 * M)
    k.advance(5 * M)
    k.advance(5 * M)
    pages = k.s.escalation.pages if k.s.escalation else []
    assert [p.recipients for p in pages] == [[IR], [OWNER], [IR, OWNER], [IR, OWNER]]


def test_a_containment_by_someone_who_may_acknowledge_is_acknowledged_by_them() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=IR, reason="x"))
    assert k.s.escalation is not None and k.s.escalation.acknowledged_by == IR and not k.s.escalation.pages


def test_resume_acknowledges_the_escalation() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=RISK, reason="x"))
    k.send(Resume(actor=OWNER, reason="y"))
    assert k.s.escalation is not None and k.s.escalation.acknowledged_by == OWNER


def test_a_stricter_containment_opens_a_new_escalation_from_chain0() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=RISK, reason="x"))
    k.advance(6 * M)
    first = k.s.escalation
    k.send(Rollback(actor=RISK, reason="worse"))
    assert first is not None and k.s.escalation is not None and k.s.escalation.id == first.id + 1
    assert k.s.escalation.level == 0 and k.s.escalation.pages[0].recipients == [IR]
    assert k.audits("escalation_replaced")


def test_a_page_that_fell_due_late_records_late_by() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=RISK, reason="x"))
    k.now += 9 * M  # workers were down: the timer fires late
    k.send(DeadlineReached())
    page = k.audits("escalation_page")[-1]
    assert page.payload["late_by"] == 240.0


def test_acknowledging_with_no_escalation_open_is_refused() -> None:
    k = pilot_soaking()
    assert "no open escalation" in (k.refusal(Acknowledge(actor=IR, escalation=True)) or "")


# ---- handoff -------------------------------------------------------------------------


def test_handoff_items_may_be_acknowledged_once_the_stage_is_entered_by_the_receiving_role() -> None:
    k = Kit()
    through_pilot(k)
    assert "not been entered" in (k.refusal(Acknowledge(actor=OPS, item="Support leads briefed")) or "")
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))
    assert "goes to 'operations'" in (k.refusal(Acknowledge(actor=RISK, item="Support leads briefed")) or "")
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))
    k.advance(7 * 24 * H)  # window clean, items acknowledged: straight to the next stage
    assert k.status()["stage"] == "system-of-record"


# ---- targets -------------------------------------------------------------------------


def test_idempotency_keys_strictly_increase() -> None:
    k = Kit()
    into_limited(k)
    k.send(Hold(actor=RISK, reason="x"))
    k.send(Resume(actor=IR, reason="y"))
    seqs = [c.seq for c in k.changes()]
    assert seqs == sorted(set(seqs)) and all(c.idempotency_key == f"rollout-x:{c.seq}" for c in k.changes())


def test_a_refused_promotion_holds_at_the_previous_scope_with_target_unreachable() -> None:
    k = Kit(auto_ack=False)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    k.send(TargetFailed(seq=k.changes()[-1].seq, error="HTTP 403", permanent=True))
    st = k.status()
    assert st["status"] == "held" and st["hold"]["reason"] == "target unreachable"
    assert st["exposure"]["percent"] == 0 and st["target_pending"] is None


def test_a_promotion_unacknowledged_after_give_up_after_holds() -> None:
    k = Kit(auto_ack=False)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    k.advance(4 * M)
    assert k.status()["target_pending"]["kind"] == "promote"
    k.advance(2 * M)
    assert k.status()["hold"]["reason"] == "target unreachable"


def test_an_undeliverable_containment_pages_at_once_and_is_retried() -> None:
    k = Kit(auto_ack=False)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    k.send(TargetAcked(seq=k.changes()[-1].seq))
    k.send(Hold(actor=IR, reason="x"))  # acknowledged by its actor: no page for the hold itself
    k.send(TargetFailed(seq=k.changes()[-1].seq, error="HTTP 400", permanent=True))
    assert k.s.escalation is not None and k.s.escalation.pages[0].recipients == [IR]
    tp = k.status()["target_pending"]
    assert tp["undeliverable"] and tp["kind"] == "hold"
    k.advance(2 * M)
    assert k.s.target_pending is not None and k.s.target_pending.retry_at is None  # delivered again


def test_a_containment_supersedes_an_undelivered_promotion() -> None:
    k = Kit(auto_ack=False)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    promo = k.changes()[-1].seq
    k.send(Hold(actor=RISK, reason="wait"))
    assert [c.kind for c in k.s.changes] == []  # nothing exposed: nothing to freeze, the promotion is gone
    assert promo not in [c.seq for c in k.s.changes] and k.status()["exposure_stage"] is None


def test_waiting_for_the_target_never_stops_the_clock() -> None:
    k = Kit(auto_ack=False)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    k.send(TargetAcked(seq=k.changes()[-1].seq))
    k.send(Hold(actor=RISK, reason="x"))  # the freeze hangs at the target
    k.advance(11 * M)
    assert len(k.audits("escalation_page")) >= 3  # 0 m, 5 m (and undeliverable: chain[0] again), 10 m


# ---- amendments -----------------------------------------------------------------------


def amended(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(plan_dict())
    d["description"] = "amended"
    d.update(changes)
    return d


def test_an_amendment_applies_when_approved_by_the_awaited_stage_roles() -> None:
    k = Kit()
    through_pilot(k)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.send(Amend(actor=OWNER, plan=amended()))
    new = k.status()["pending_amendment"]["plan_hash"]
    k.send(Approve(actor=ENG2, amendment=new, role="engineering"))
    k.send(Approve(actor=OPS, amendment=new, role="operations"))
    st = k.status()
    assert st["plan_hash"] == new and st["pending_amendment"] is None and st["approvals"]["given"] == {}


def test_an_amendment_that_changes_an_entered_stage_or_the_name_is_refused() -> None:
    k = pilot_soaking()
    d = amended()
    d["stages"][0]["window"] = "96h"
    assert "already entered" in (k.refusal(Amend(actor=OWNER, plan=d)) or "")
    assert "keeps the plan name" in (k.refusal(Amend(actor=OWNER, plan=amended(name="other"))) or "")
    assert "only the rollout owner" in (k.refusal(Amend(actor=RISK, plan=amended())) or "")


def test_an_amendment_applies_while_held_and_the_window_goes_on_when_its_rules_stay() -> None:
    k = pilot_soaking()
    ends = k.s.window_ends_at
    k.send(Amend(actor=OWNER, plan=amended()))
    new = k.status()["pending_amendment"]["plan_hash"]
    k.send(Approve(actor=ENG1, amendment=new, role="engineering"))
    assert k.status()["plan_hash"] == new and k.s.window_ends_at == ends


def test_a_new_amend_replaces_a_pending_one() -> None:
    k = Kit()
    k.send(Amend(actor=OWNER, plan=amended()))
    first = k.status()["pending_amendment"]["plan_hash"]
    k.send(Amend(actor=OWNER, plan=amended(description="again")))
    assert k.status()["pending_amendment"]["plan_hash"] != first


# ---- messages and who may act ------------------------------------------------------------


def test_only_the_rollout_owner_may_start() -> None:
    k = Kit(started_by=RISK)
    assert k.s.status == "aborted" and any(isinstance(c, Close) and c.status == "refused" for c in k.log)
    assert not k.changes() and k.audits()[0].action == "start_refused"
    assert Kit().audits()[0].action == "started" and Kit().audits()[0].actor == OWNER


def test_anyone_named_may_hold_or_roll_back_and_others_are_refused() -> None:
    k = pilot_soaking()
    assert "not named in the plan" in (k.refusal(Hold(actor="mallory@example.com", reason="x")) or "")
    assert k.refusal(Hold(actor=OPS, reason="x")) is None


def test_only_incident_response_or_the_owner_may_resume_or_acknowledge() -> None:
    k = pilot_soaking()
    k.send(Hold(actor=RISK, reason="x"))
    assert "only the incident-response owner" in (k.refusal(Resume(actor=RISK, reason="y")) or "")
    assert "only the incident-response owner" in (k.refusal(Acknowledge(actor=RISK, escalation=True)) or "")
    assert k.refusal(Resume(actor=OWNER, reason="y")) is None


def test_only_the_owner_may_abort() -> None:
    assert "only the rollout owner" in (Kit().refusal(Abort(actor=IR, reason="x")) or "")


def test_a_refused_signal_is_recorded_and_a_refused_update_leaves_nothing() -> None:
    k = Kit()
    k.send(Approve(actor=OWNER, stage="pilot", role="engineering", via="update"))
    assert k.status()["refused"] == [] and not k.audits("refused")
    k.send(Approve(actor=OWNER, stage="pilot", role="engineering", via="signal"))
    assert len(k.status()["refused"]) == 1 and len(k.audits("refused")) == 1


def test_refusals_keep_only_the_last_100() -> None:
    k = Kit()
    for i in range(130):
        k.send(Approve(actor=f"x{i}@example.com", stage="pilot", role="engineering", via="signal"))
    assert len(k.status()["refused"]) == 100 and k.status()["refused"][-1]["actor"] == "x129@example.com"


def test_a_malformed_signal_is_refused_with_reason_malformed() -> None:
    k = Kit()
    for payload in ("not an object", {"actor": 5}, {"actor": OWNER, "escalation": "yes please"}):
        k.send(event_from_payload("acknowledge", payload, "signal"))
    assert [r["reason"].startswith("malformed: ") for r in k.status()["refused"]] == [True, True, True]
    k.send(event_from_payload("report_breach", {"threshold": "x"}, "signal"))
    assert "source" in k.status()["refused"][-1]["reason"]


def test_every_input_is_bounded_where_it_enters() -> None:
    k = pilot_soaking()
    k.send(event_from_payload("report_breach", {"source": "am", "threshold": "x", "detail": {"a": "b" * 450_000},
                                                "observed_at": k.now.isoformat()}, "signal"))
    assert len(k.s.model_dump_json()) < 60_000
    k.send(event_from_payload("hold", {"actor": RISK, "reason": "r" * 100_000}, "signal"))
    assert len(k.s.containment.reason if k.s.containment else "") < 2_100


def test_every_containment_goes_to_the_notifiers() -> None:
    d = plan_dict(notify=[{"kind": "webhook", "url": "http://127.0.0.1:9/n"}])
    k = pilot_soaking(d)
    k.send(Hold(actor=RISK, reason="x"))
    assert any(isinstance(c, Notify) and c.notification.event == "hold" for c in k.log)


# ---- the fifteen behaviours of issue 11 not covered above ---------------------------------


def test_an_amendment_applied_mid_window_keeps_the_evaluations_already_made() -> None:
    d = watched(threshold(on_no_data="ignore"), interval="1h")
    k = pilot_soaking(d)
    for _ in range(30):
        k.evaluate({"errors": 0.0})
    new_plan = copy.deepcopy(d)
    new_plan["description"] = "amended mid-window"
    k.send(Amend(actor=OWNER, plan=new_plan))
    k.send(Approve(actor=ENG1, amendment=k.status()["pending_amendment"]["plan_hash"], role="engineering"))
    for _ in range(42):
        k.evaluate({"errors": 0.0})
    assert k.status()["stage"] == "limited-25" and k.s.coverage == {"errors": 1.0}


def test_a_manual_hold_while_rolled_back_freezes_the_scope_in_force() -> None:
    k = Kit()
    into_limited(k)
    k.send(Rollback(actor=RISK, reason="bad"))
    assert k.refusal(Hold(actor=RISK, reason="freeze")) is None
    k.send(Hold(actor=RISK, reason="freeze"))
    assert k.s.status == "rolled_back" and k.changes()[-1].frozen and k.changes()[-1].percent == 5


def test_after_a_reject_the_exposed_stage_is_watched_and_contained() -> None:
    k = Kit(watched(threshold(action="rollback"), interval="1h"))
    through_pilot(k)
    k.send(Reject(actor=OPS, stage="limited-25", role="operations", reason="not yet"))
    assert k.refusal(Hold(actor=RISK, reason="x")) is None  # a reject is not a containment
    k.evaluate({"errors": 5.0})
    assert k.s.status == "rolled_back" and k.status()["exposure_stage"] is None


def test_breaches_are_judged_against_the_thresholds_of_the_exposed_stage() -> None:
    d = with_thresholds(watched(threshold(action="rollback"), interval="1h"), 1, threshold(action="hold"))
    k = Kit(d)
    through_pilot(k)  # awaiting limited-25: the pilot's scope is in force
    k.send(BreachReported(source="am", threshold="errors", observed_at=k.now))
    assert k.s.containment is not None and k.s.containment.kind == "rollback"


def test_a_rollback_summarises_the_interrupted_window_under_the_stage_it_soaked() -> None:
    d = with_thresholds(watched(threshold(action="hold"), interval="1h"), 1,
                        {"name": "latency", "query": "l", "max": 1, "action": "rollback"})
    k = Kit(d)
    into_limited(k)
    assert k.s.status == "soaking" and k.s.watch is not None and k.s.watch.stage == "limited-25"
    k.evaluate({"latency": 0.5})
    k.evaluate({"latency": 3.0})  # breach: rollback to the pilot
    assert k.s.status == "rolled_back"
    summary = k.audits("window_summary")[-1].payload
    assert summary["stage"] == "limited-25" and summary["outcome"] == "interrupted"
    assert summary["thresholds"]["latency"]["failing_values"][0][1] == 3.0
    assert summary["thresholds"]["latency"]["max"] == 3.0
