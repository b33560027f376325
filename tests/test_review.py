"""`rollout review` on a scripted rollout: the pure state machine (tests/machine_kit.Kit)
produces the audit rows of a rollout with three holds, a rollback, an amendment and a
missed escalation SLA; they are stored in a real audit store (SQLite and PostgreSQL);
`rollout review` runs through the CLI entry, store only (no Temporal), and every
figure is checked against the scenario. The HTML opens in a real headless Chromium;
its screenshot is kept as docs/review.png.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from activities.audit_store import AuditStore
from rollout.machine_model import Acknowledge, Amend, Approve, Resume
from rollout.models import AuditEvent
from rollout.review import build_review, render_html, render_markdown
from tests.audit_support import cli, store_url_for
from tests.machine_kit import Kit
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, plan_dict

REPO = Path(__file__).resolve().parent.parent
RID = "rollout-x"  # the workflow id Kit gives its rollout
H = timedelta(hours=1)
M = timedelta(minutes=1)
SLA = 5 * M


def error_rate(**kw: Any) -> dict[str, Any]:
    return {"name": "error_rate", "query": "sum(rate(errors[5m])) / sum(rate(runs[5m]))", "max": 0.02,
            "for": 2, "on_no_data": "ignore", "action": "hold", **kw}


LATENCY = {"name": "latency_p95", "query": "histogram_quantile(0.95, rate(latency_bucket[5m]))", "max": 800,
           "for": 1, "on_no_data": "ignore", "action": "rollback"}


def scenario_plan() -> dict[str, Any]:
    d = plan_dict()
    d["metrics"] = {"prometheus_url": "http://127.0.0.1:1", "interval": "1h"}
    d["stages"][0].update(window="24h", thresholds=[error_rate()])
    d["stages"][1].update(window="48h", thresholds=[error_rate(), LATENCY])
    d["stages"][2].update(window="72h", thresholds=[error_rate()])
    return d


@dataclass
class Scenario:
    events: list[AuditEvent]
    at: dict[str, datetime] = field(default_factory=dict)  # named moments of the script
    new_plan_hash: str = ""


def soak(k: Kit, stage: str, values: Any = None) -> None:
    """Evaluate every slot until the stage's window is judged; `values(i)` gives the i-th values."""
    i = 0
    while k.s.status == "soaking" and k.status()["stage"] == stage:
        spec = k.s.watch
        assert spec is not None
        k.evaluate(values(i) if values else {t.name: 0.001 for t in spec.thresholds})
        i += 1


def script() -> Scenario:
    """The rollout, step by step; every moment a figure depends on is kept in `at`."""
    sc = Scenario([])
    k = Kit(scenario_plan())
    at = sc.at
    at["start"] = k.now
    # pilot: approved after 2 h
    k.advance(2 * H)
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering", comment="go"))
    at["pilot_entered"] = k.now
    # three breaches of error_rate, each held and resumed with the threshold unchanged
    for _ in range(3):
        k.evaluate({"error_rate": 0.004})
    k.evaluate({"error_rate": 0.05})
    k.evaluate({"error_rate": 0.061})  # second failing: breach -> hold, carol paged
    at["hold1"] = k.now
    assert k.s.status == "held"
    k.advance(3 * M)
    k.send(Acknowledge(actor=IR, escalation=True, comment="looking"))  # within the SLA
    at["ack1"] = k.now
    k.advance(57 * M)
    k.send(Resume(actor=IR, reason="retry storm, not the agent"))
    at["resume1"] = k.now
    k.evaluate({"error_rate": 0.03})
    k.evaluate({"error_rate": 0.045})  # hold 2
    at["hold2"] = k.now
    k.advance(12 * M)  # pages: carol at 0, alice at 5 m, the whole chain at 10 m
    k.send(Acknowledge(actor=IR, escalation=True, comment="sorry, was in a meeting"))  # SLA missed
    at["ack2"] = k.now
    k.advance(48 * M)
    k.send(Resume(actor=IR, reason="flaky upstream"))
    at["resume2"] = k.now
    k.evaluate({"error_rate": 0.025})
    k.evaluate({"error_rate": 0.022})  # hold 3
    at["hold3"] = k.now
    k.advance(4 * M)
    k.send(Resume(actor=IR, reason="upstream fixed"))  # the resume acknowledges, within the SLA
    at["resume3"] = k.now
    soak(k, "pilot")
    at["pilot_clean"] = k.now  # awaiting limited-25
    # limited-25: approvals after 30 m and 4 h
    k.advance(30 * M)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.advance(3 * H + 30 * M)
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))
    at["limited_entered"] = k.now
    k.advance(2 * H)
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))
    at["handoff1"] = k.now
    for _ in range(4):
        k.evaluate({"error_rate": 0.004, "latency_p95": 420.0})
    k.evaluate({"error_rate": 0.004, "latency_p95": 950.0})  # rollback to the pilot
    at["rollback"] = k.now
    assert k.s.status == "rolled_back"
    k.advance(2 * M)
    k.send(Acknowledge(actor=IR, escalation=True))
    at["ack4"] = k.now
    k.advance(58 * M)
    k.send(Resume(actor=IR, reason="cache warmed"))
    at["resume4"] = k.now
    soak(k, "pilot")
    at["pilot_clean2"] = k.now
    # an amendment while awaiting limited-25: the system of record gets a 48 h window, error_rate max 0.03
    k.advance(H)
    new = copy.deepcopy(scenario_plan())
    new["stages"][2]["window"] = "48h"
    new["stages"][2]["thresholds"] = [error_rate(max=0.03)]
    k.send(Amend(actor=OWNER, plan=new, reason="shorter last window"))
    at["amend"] = k.now
    sc.new_plan_hash = k.status()["pending_amendment"]["plan_hash"]
    k.advance(20 * M)
    k.send(Approve(actor=ENG2, amendment=sc.new_plan_hash, role="engineering"))
    k.advance(40 * M)
    k.send(Approve(actor=OPS, amendment=sc.new_plan_hash, role="operations"))
    at["amended"] = k.now
    assert k.status()["plan_hash"] == sc.new_plan_hash
    k.advance(H)
    k.send(Approve(actor=ENG1, stage="limited-25", role="engineering"))
    k.advance(H)
    k.send(Approve(actor=OPS, stage="limited-25", role="operations"))
    at["limited_entered2"] = k.now
    k.advance(2 * H)
    k.send(Acknowledge(actor=OPS, item="Support leads briefed"))  # taken again: the rollback voided it
    at["handoff2"] = k.now
    # error_rate has no data twice in this window (ignored: coverage 46/48)
    soak(k, "limited-25", lambda i: {"error_rate": None if i in (10, 11) else 0.004, "latency_p95": 400.0 + i})
    at["limited_clean"] = k.now
    k.advance(H)
    k.send(Approve(actor=RISK, stage="system-of-record", role="risk"))
    k.advance(H)
    k.send(Approve(actor=ENG2, stage="system-of-record", role="engineering"))
    k.advance(H)
    k.send(Approve(actor=OPS, stage="system-of-record", role="operations"))
    at["sor_entered"] = k.now
    k.advance(H)
    k.send(Acknowledge(actor=OPS, item="On-call rota includes the agent"))
    k.advance(H)
    k.send(Acknowledge(actor=IR, item="Runbook reviewed"))
    soak(k, "system-of-record", lambda i: {"error_rate": 0.02 + 0.0002 * (i % 10)})
    at["completed"] = k.now
    assert k.s.status == "completed"
    sc.events = k.audits()
    return sc


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return script()


@pytest.fixture(params=["sqlite", "postgres"])
async def url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    async with store_url_for(request.param, tmp_path, pg_url) as u:
        monkeypatch.setenv("ROLLOUT_DB_URL", u)
        monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")  # store only: no Temporal history at all
        yield u


@pytest.fixture
async def stored(url: str, scenario: Scenario) -> AsyncIterator[str]:
    """The scenario's rows in a real audit store, written in the batches the shell would use."""
    store = AuditStore.from_url(url)
    try:
        events = scenario.events
        for i in range(0, len(events), 7):
            await store.append(events[i : i + 7])
        assert (await store.verify(RID)).ok
    finally:
        await store.close()
    yield url



def seqs(sc: Scenario, action: str, **payload: Any) -> list[int]:
    return [e.seq for e in sc.events if e.action == action and all(e.payload.get(k) == v for k, v in payload.items())]


def secs(td: timedelta) -> float:
    return td.total_seconds()


# ---- every figure against the scenario --------------------------------------------------


async def test_review_from_the_store_alone_matches_the_scenario(
    stored: str, scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    sc, at = scenario, scenario.at
    code, out, err = await cli(capsys, "review", "x", "--format", "json")  # plan name or workflow id
    assert code == 0, err
    r = json.loads(out)
    # the rows read back from the store give the same review as the rows the machine produced
    assert r == json.loads(json.dumps(build_review(sc.events, rollout_id=RID, now=datetime.now(at["start"].tzinfo))))

    assert (r["status"], r["stage"], r["closed"], r["verdict"]) == ("completed", "system-of-record", True, "stop")
    assert r["rows"] == {"count": len(sc.events), "first_seq": 1, "last_seq": len(sc.events)}
    assert r["period"]["from"] == "2026-01-05T09:00:00Z" and r["period"]["to"] == at["completed"].isoformat().replace("+00:00", "Z")

    # time in each stage and each status
    pilot = (at["pilot_clean"] - at["start"]) + (at["pilot_clean2"] - at["rollback"])
    limited = (at["rollback"] - at["pilot_clean"]) + (at["limited_clean"] - at["pilot_clean2"])
    sor = at["completed"] - at["limited_clean"]
    assert {x["stage"]: x["seconds"] for x in r["time_in_stage"]} == {
        "pilot": secs(pilot), "limited-25": secs(limited), "system-of-record": secs(sor),
    }
    assert [x["stage"] for x in r["time_in_stage"]] == ["pilot", "limited-25", "system-of-record"]
    awaiting = (
        (at["pilot_entered"] - at["start"]) + (at["limited_entered"] - at["pilot_clean"])
        + (at["limited_entered2"] - at["pilot_clean2"]) + (at["sor_entered"] - at["limited_clean"])
    )
    held = (at["resume1"] - at["hold1"]) + (at["resume2"] - at["hold2"]) + (at["resume3"] - at["hold3"])
    rolled_back = at["resume4"] - at["rollback"]
    soaking = (at["completed"] - at["start"]) - awaiting - held - rolled_back
    assert held == 2 * H + 4 * M and rolled_back == H and awaiting == 13 * H
    assert {x["status"]: x["seconds"] for x in r["time_in_status"]} == {
        "awaiting_approval": secs(awaiting), "soaking": secs(soaking), "held": secs(held), "rolled_back": secs(rolled_back),
    }

    # approvals' waiting time by role
    waits = {"engineering": [2 * H, 30 * M, 3 * H, 2 * H], "operations": [4 * H, 4 * H, 3 * H], "risk": [1 * H]}
    by_role = {x["role"]: x for x in r["approvals"]["by_role"]}
    for role, ws in waits.items():
        assert by_role[role]["count"] == len(ws)
        assert by_role[role]["mean_wait_seconds"] == pytest.approx(secs(sum(ws, timedelta())) / len(ws), abs=1e-3)
        assert by_role[role]["max_wait_seconds"] == secs(max(ws))
        assert by_role[role]["seqs"] == [e.seq for e in sc.events if e.action == "approved" and e.role == role]
    assert [x["wait_seconds"] for x in r["approvals"]["given"] if x["role"] == "engineering"] == [secs(w) for w in waits["engineering"]]

    # breaches by threshold: values, limit, action, how each ended
    contained = {e.payload["breach"]: e.seq for e in sc.events if e.action.startswith("contained_")}
    resumes = seqs(sc, "resumed")
    er = r["breaches"]["by_threshold"]["error_rate"]
    assert [(x["value"], x["max"], x["action"], x["applied"], x["stage"]) for x in er] == [
        (0.061, 0.02, "hold", True, "pilot"), (0.045, 0.02, "hold", True, "pilot"), (0.022, 0.02, "hold", True, "pilot"),
    ]
    assert [x["seq"] for x in er] == seqs(sc, "breach")[:3]
    assert [x["containment_seq"] for x in er] == [contained[1], contained[2], contained[3]]
    assert [x["ended"]["seq"] for x in er] == resumes[:3]
    (lat,) = r["breaches"]["by_threshold"]["latency_p95"]
    assert (lat["value"], lat["max"], lat["action"], lat["stage"], lat["ended"]["how"]) == (
        950.0, 800.0, "rollback", "limited-25", f"resumed by {IR}",
    )
    assert r["breaches"]["count"] == 4

    # containments and how they ended
    cs = r["containments"]
    assert [(c["kind"], c["actor"], c["ended"]["how"], c["ended"]["seq"]) for c in cs] == [
        ("hold", "prometheus", f"resumed by {IR}", resumes[0]),
        ("hold", "prometheus", f"resumed by {IR}", resumes[1]),
        ("hold", "prometheus", f"resumed by {IR}", resumes[2]),
        ("rollback", "prometheus", f"resumed by {IR}", resumes[3]),
    ]
    assert [c["ended"]["after_seconds"] for c in cs] == [secs(H), secs(H), secs(4 * M), secs(H)]
    assert cs[3]["stage"] == "pilot" and cs[3]["thresholds"] == ["latency_p95"]
    assert cs[3]["from_stage"] == "limited-25" and cs[0]["from_stage"] is None

    # escalations: time to acknowledge against the SLA, pages sent
    es = r["escalations"]
    assert [e["pages_sent"] for e in es] == [1, 3, 1, 1]
    assert [e["time_to_acknowledge_seconds"] for e in es] == [
        secs(at["ack1"] - at["hold1"]), secs(at["ack2"] - at["hold2"]), secs(at["resume3"] - at["hold3"]),
        secs(at["ack4"] - at["rollback"]),
    ]
    assert [e["time_to_acknowledge_seconds"] for e in es] == [180.0, 720.0, 240.0, 120.0]
    assert [e["sla_seconds"] for e in es] == [secs(SLA)] * 4
    assert [e["sla_met"] for e in es] == [True, False, True, True]
    assert [e["acknowledged"]["via"] for e in es] == ["acknowledge", "acknowledge", "resume", "acknowledge"]
    assert es[1]["paged"] == [OWNER, IR] and [p["level"] for p in es[1]["pages"]] == [0, 1, 2]
    assert [p["at"] for p in es[1]["pages"]] == [
        (at["hold2"] + d).isoformat().replace("+00:00", "Z") for d in (timedelta(0), 5 * M, 10 * M)
    ]

    # coverage of every window
    ws = r["windows"]
    assert [(w["stage"], w["outcome"]) for w in ws] == [
        ("pilot", "interrupted"), ("pilot", "interrupted"), ("pilot", "interrupted"), ("pilot", "clean"),
        ("limited-25", "interrupted"), ("pilot", "clean"), ("limited-25", "clean"), ("system-of-record", "clean"),
    ]
    assert [w["seq"] for w in ws] == seqs(sc, "window_summary")
    cov = [{n: (t["evaluations"], t["with_data"], t["failing"], t["coverage"]) for n, t in w["thresholds"].items()} for w in ws]
    assert cov[0] == {"error_rate": (5, 5, 2, 5 / 24)}
    assert cov[3] == {"error_rate": (24, 24, 0, 1.0)} and cov[5] == {"error_rate": (24, 24, 0, 1.0)}
    assert cov[6] == {"error_rate": (48, 46, 0, 46 / 48), "latency_p95": (48, 48, 0, 1.0)}
    assert cov[7] == {"error_rate": (48, 48, 0, 1.0)}
    assert [v for _, v in ws[0]["thresholds"]["error_rate"]["failing_values"]] == [0.05, 0.061]
    assert len(ws[6]["thresholds"]["error_rate"]["samples"]) == 48
    assert [b["seq"] for b in ws[0]["breaches"]] == [er[0]["seq"]] and ws[0]["holds"][0]["kind"] == "hold"
    assert ws[4]["holds"][0]["kind"] == "rollback" and ws[4]["breaches"][0]["threshold"] == "latency_p95"
    assert r["running_windows"] == []

    # handoff items and who took them
    assert [(h["stage"], h["item"], h["actor"], h["role"]) for h in r["handoff"]["taken"]] == [
        ("limited-25", "Support leads briefed", OPS, "operations"),
        ("limited-25", "Support leads briefed", OPS, "operations"),  # again after the rollback voided it
        ("system-of-record", "On-call rota includes the agent", OPS, "operations"),
        ("system-of-record", "Runbook reviewed", IR, "incident_response"),
    ]
    assert r["handoff"]["open"] == []

    # amendments with their diff
    (am,) = r["amendments"]
    assert (am["plan_hash"], am["outcome"], am["proposed_by"], am["reason"]) == (
        sc.new_plan_hash, "applied", OWNER, "shorter last window",
    )
    assert am["applied_seq"] == seqs(sc, "amendment_applied")[0] and am["window_restarted"] is False
    assert [(a["actor"], a["role"], a["wait_seconds"]) for a in am["approvals"]] == [
        (ENG2, "engineering", secs(20 * M)), (OPS, "operations", secs(H)),
    ]
    assert am["diff"] == [
        {"path": "stages[system-of-record].thresholds[error_rate].max", "old": 0.02, "new": 0.03},
        {"path": "stages[system-of-record].window", "old": "72h", "new": "48h"},
    ]

    # keep / adjust / stop, each resting on its rows
    sug = [(s["verdict"], s["rule"], s["seqs"]) for s in r["suggestions"]]
    esc2 = [e.seq for e in sc.events if e.payload.get("escalation_id") == 2 and e.action.startswith("escalation")]
    assert sug == [
        ("stop", "rollback", seqs(sc, "contained_rollback")),
        ("adjust", "threshold_resumed_unchanged", sorted([x["seq"] for x in er] + resumes[:3])),
        ("adjust", "sla_missed", esc2),
    ]
    assert "error_rate: breached and resumed without change 3 times" in r["suggestions"][1]["text"]
    assert f"seq {cs[3]['seq']} from limited-25 to pilot:" in r["suggestions"][0]["text"]
    assert "acknowledged after 12m, SLA 5m, 3 pages" in r["suggestions"][2]["text"]


async def test_markdown_and_html_reports_carry_the_same_figures(
    stored: str, scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, md, err = await cli(capsys, "review", RID)
    assert code == 0, err
    assert md.startswith(f"# Review: {RID}\n") and "- **Verdict**: **stop**" in md
    assert "| held | 2h 4m |" in md and "| rolled_back | 1h |" in md and "| awaiting_approval | 13h |" in md
    assert "| engineering | 4 | 1h 52m | 3h |" in md and "| operations | 3 | 3h 40m | 4h |" in md
    assert "| 2026-01-07 06:00 UTC | limited-25 | 950 | max 800 | rollback | yes | resumed by carol@example.com |" in md
    assert "| 12m | 5m | **MISSED** |" in md
    assert "| limited-25 | 2026-01-08 11:00 UTC → 2026-01-10 11:00 UTC | clean | error_rate | 48 | 46 | 0 | 96% |" in md
    assert "| `stages[system-of-record].window` | 72h | 48h |" in md
    assert "| system-of-record | Runbook reviewed | carol@example.com | incident_response |" in md
    out = tmp_path / "review.html"
    code, stdout, err = await cli(capsys, "review", RID, "--format", "html", "--out", str(out))
    assert code == 0 and stdout == "" and f"written to {out}" in err and "(stop)" in err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1 + 10  # time in stage + 10 threshold plots
    assert "MISSED" in page and "stages[system-of-record].thresholds[error_rate].max" in page


def test_html_has_no_external_references(scenario: Scenario) -> None:
    page = render_html(build_review(scenario.events, rollout_id=RID, now=scenario.at["completed"]))
    assert not re.search(r"""(src|href|xlink:href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<script|<link|<iframe|<img|<object|<embed|@import|url\(", page, re.I)
    assert "<style>" in page  # the CSS is inline


def test_an_open_rollout_is_reviewed_up_to_now() -> None:
    """A containment still open and an escalation nobody acknowledged: counted up to `now`."""
    k = Kit(scenario_plan())
    k.send(Approve(actor=ENG1, stage="pilot", role="engineering"))
    k.evaluate({"error_rate": 0.5})
    k.evaluate({"error_rate": 0.5})
    held_at = k.now
    k.advance(20 * M)
    r = build_review(k.audits(), rollout_id=RID, now=k.now)
    assert (r["status"], r["closed"], r["verdict"]) == ("held", False, "adjust")
    assert r["containments"][0]["ended"] == {"how": "still open", "at": None, "seq": None, "actor": None,
                                             "after_seconds": secs(20 * M)}
    (esc,) = r["escalations"]
    assert esc["acknowledged"] is None and esc["sla_met"] is False and esc["pages_sent"] == 5  # 0, 5, 10, 15, 20 m
    assert {x["status"]: x["seconds"] for x in r["time_in_status"]}["held"] == secs(k.now - held_at)
    assert [s["rule"] for s in r["suggestions"]] == ["sla_missed"]
    assert "never acknowledged" in r["suggestions"][0]["text"]
    assert "running" not in render_markdown(r)  # the window stopped at the hold


async def test_since_limits_the_period_reviewed(
    stored: str, scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    at = scenario.at
    since = at["pilot_clean2"].isoformat().replace("+00:00", "Z")
    code, out, err = await cli(capsys, "review", RID, "--json", "--since", since)
    assert code == 0, err
    r = json.loads(out)
    assert r["period"]["from"] == since
    assert {x["stage"]: x["seconds"] for x in r["time_in_stage"]} == {
        "limited-25": secs(at["limited_clean"] - at["pilot_clean2"]), "system-of-record": secs(at["completed"] - at["limited_clean"]),
    }
    assert r["breaches"]["count"] == 0 and r["containments"] == [] and r["escalations"] == []
    assert [a["plan_hash"] for a in r["amendments"]] == [scenario.new_plan_hash]  # proposed within the period
    assert [(s["rule"], s["text"].split(":")[0]) for s in r["suggestions"]] == [
        ("threshold_quiet", "keep threshold error_rate"), ("threshold_quiet", "keep threshold latency_p95"),
        ("clean", "keep"),
    ]
    windows = [w["seq"] for w in r["windows"]]
    assert r["suggestions"][0]["seqs"] == windows and r["suggestions"][1]["seqs"] == windows[1:2]  # latency_p95: limited-25 only
    assert r["verdict"] == "keep"


async def test_review_errors_exit_through_the_error_hierarchy(
    stored: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await cli(capsys, "review", "no-such-plan")
    assert code == 1 and "no audit trail for rollout-no-such-plan" in err
    for argv in (["review"], ["review", RID, "--format", "pdf"], ["review", RID, "--since", "last week"],
                 ["review", RID, "--out", str(tmp_path / "missing" / "r.html")], ["review", RID, "extra"]):
        code, _, err = await cli(capsys, *argv)
        assert code == 2, (argv, err)
    code, _, err = await cli(capsys, "review", RID, "--db", "nosuchdriver://x")
    assert code == 2 and "audit store" in err


# ---- the HTML in a real headless Chromium ----------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        raise RuntimeError("chromium and chromedriver are needed: run scripts/install-system-deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1500", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield drv
    finally:
        drv.quit()


@pytest.mark.parametrize("url", ["sqlite"], indirect=True)
async def test_html_review_renders_in_headless_chromium(
    stored: str, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By

    out = tmp_path / "review.html"
    code, _, err = await cli(capsys, "review", RID, "--format", "html", "--out", str(out))
    assert code == 0, err

    def look() -> dict[str, Any]:
        browser.get(out.as_uri())
        found = {
            "title": browser.title,
            "verdict": browser.find_element(By.CSS_SELECTOR, "h1 .verdict").text,
            "svgs": len(browser.find_elements(By.TAG_NAME, "svg")),
            "bars": len(browser.find_elements(By.CSS_SELECTOR, "svg rect[fill='#f08c00']")),  # held segments
            "breach_marks": len(browser.find_elements(By.XPATH, "//*[local-name()='path' and @fill='#c92a2a']")),
            "missed": browser.find_element(By.CSS_SELECTOR, ".missed").text,
            "plot_width": browser.find_elements(By.CSS_SELECTOR, "figure.plot svg")[0].size["width"],
            "resources": browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"),
        }
        (REPO / "docs").mkdir(exist_ok=True)
        assert browser.save_screenshot(str(REPO / "docs" / "review.png"))
        return found

    seen = await asyncio.to_thread(look)
    assert seen["title"] == f"Review: {RID}" and seen["verdict"] == "stop"
    # every breach is marked on its plot: the three error_rate ones and the latency_p95 one of
    # the limited-25 window the rollback interrupted (summarised under limited-25, with both
    # of its thresholds)
    assert seen["svgs"] == 11 and seen["bars"] == 3 and seen["breach_marks"] == 4
    assert seen["missed"] == "MISSED" and seen["plot_width"] == 480
    assert seen["resources"] == []  # nothing loaded from anywhere
    assert (REPO / "docs" / "review.png").stat().st_size > 20_000
