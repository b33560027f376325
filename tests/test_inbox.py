"""The approval inbox without a browser: who sees which button (the workflow's rules, as
hints), sign-in by trusted proxy header or signed link, cookie flags, and the CLI link."""

from __future__ import annotations

import base64
import copy
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from temporalio.testing import WorkflowEnvironment

from cli.main import main as cli_main
from rollout.plan import Plan, validate_plan_data
from tests.plans import ENG1, ENG2, IR, OPS, OWNER, RISK, plan_dict
from worker.example_target import running
from worker.inbox import (
    TEMPLATES,
    Inbox,
    InboxConfig,
    RolloutInfo,
    SignInRefused,
    build_view,
    sign_in_link,
    verify_token,
)
from worker.receiver import create_app

SECRET = b"test-inbox-secret"


def plan(**changes: Any) -> Plan:
    return validate_plan_data(plan_dict(**changes))


def status(p: Plan, **over: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "workflow_id": f"rollout-{p.name}",
        "name": p.name,
        "plan_hash": p.plan_hash(),
        "owners": p.owners.by_key(),
        "stage": "pilot",
        "status": "awaiting_approval",
        "exposure": {"percent": 0, "segments": None, "authority": {}},
        "exposure_stage": None,
        "window_ends_at": None,
        "approvals": {"stage": "pilot", "entry": 1, "given": {}, "missing": ["engineering"], "awaiting_since": None},
        "pending_handoff": [],
        "open_breaches": [],
        "escalation": None,
        "pending_amendment": None,
        "target_pending": None,
        "refused": [],
    }
    st.update(over)
    return st


def render(view: Any) -> str:
    return TEMPLATES.get_template("_content.html").render(
        view=view, csrf="x", flashes=[], public_url="http://127.0.0.1:9095", generated_at="now", elapsed_ms=1.0
    )


def test_an_approver_sees_the_awaited_approval_with_what_it_widens_to() -> None:
    p = plan()
    view = build_view(ENG1, [RolloutInfo("rollout-support-agent", status(p), plan=p)])
    [item] = view.approvals
    assert item.stage == "pilot" and item.roles == ["engineering"] and item.entry == 1
    assert item.missing == {"engineering": [ENG1, ENG2]}  # the owner, though listed, never approves
    assert [(c.what, c.before, c.after) for c in item.authority][-1] == ("refund", "-", "forbid")
    assert 'data-action="approve"' in render(view)


def test_the_owner_sees_their_rollout_awaiting_others_without_an_approve_button() -> None:
    p = plan()  # alice owns it and is also listed for engineering
    view = build_view(OWNER, [RolloutInfo("rollout-support-agent", status(p), plan=p)])
    assert view.approvals == []
    [owned] = view.owned
    assert owned.missing == {"engineering": [ENG1, ENG2]}
    html = render(view)
    assert 'data-action="approve"' not in html and "You own this rollout" in html


def test_an_identity_that_approved_this_entry_gets_no_second_button() -> None:
    p = plan()
    st = status(p, stage="limited-25", approvals={
        "stage": "limited-25", "entry": 2, "missing": ["operations"],
        "given": {"engineering": {"role": "engineering", "actor": ENG1, "at": "2030-01-01T00:00:00Z"}},
    })
    assert build_view(ENG1, [RolloutInfo("w", st, plan=p)]).approvals == []
    [item] = build_view(OPS, [RolloutInfo("w", st, plan=p)]).approvals
    assert item.roles == ["operations"]
    assert [(c.before, c.after) for c in item.scope] == [("5% of internal", "25% of internal, smb")]
    assert "handoff before leaving: Support leads briefed (operations)" in item.plan_changes


def test_separation_of_duties_hides_the_button() -> None:
    d = plan_dict()
    d["approvers"]["risk"] = [RISK, "bob@example.com"]  # bob is the workflow owner; risk is distinct_from workflow
    p = validate_plan_data(d)
    st = status(p, stage="system-of-record", approvals={"stage": "system-of-record", "entry": 3, "given": {},
                                                      "missing": ["risk", "engineering", "operations"]})
    assert build_view("bob@example.com", [RolloutInfo("w", st, plan=p)]).approvals == []
    assert [i.roles for i in build_view(RISK, [RolloutInfo("w", st, plan=p)]).approvals] == [["risk"]]


def test_a_signed_plan_shows_the_command_instead_of_a_button() -> None:
    d = plan_dict()
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = base64.b64encode(raw).decode()
    d["require_signed_approvals"] = True
    d["public_keys"] = {who: key for who in (RISK, ENG1, ENG2, OWNER, OPS)}
    p = validate_plan_data(d)
    view = build_view(ENG1, [RolloutInfo("rollout-support-agent", status(p), plan=p)])
    html = render(view)
    assert 'data-action="approve"' not in html
    assert f"rollout approve rollout-support-agent --stage pilot --role engineering --key YOUR_KEY_FILE --as {ENG1}" in html


def test_pending_amendment_shows_the_plan_diff_to_those_who_may_approve_it() -> None:
    p = plan()
    changed = copy.deepcopy(plan_dict())
    changed["stages"][0]["window"] = "96h"
    new = validate_plan_data(changed)
    st = status(p, status="soaking", pending_amendment={
        "plan_hash": new.plan_hash(), "proposed_by": OWNER, "proposed_at": None, "approvals": {}, "missing": ["engineering"]})
    [item] = build_view(ENG2, [RolloutInfo("w", st, plan=p, amended_plan=new)]).amendments
    assert "-  window: 72h" in item.diff and "+  window: 96h" in item.diff
    assert build_view(OWNER, [RolloutInfo("w", st, plan=p, amended_plan=new)]).amendments == []


def test_open_escalations_go_to_incident_response_and_owner_and_handoffs_to_their_receivers() -> None:
    p = plan()
    st = status(p, status="held", escalation={"reason": "error_rate", "level": 0, "acknowledged_by": None,
                                              "pages": [{"recipients": [IR], "at": "x"}], "started_at": "x"},
                pending_handoff=[{"stage": "limited-25", "item": "Support leads briefed", "to": "operations",
                                  "identities": [OPS]}])
    infos = [RolloutInfo("w", st, plan=p)]
    assert [e.paged for e in build_view(IR, infos).escalations] == [[IR]]
    assert len(build_view(OWNER, infos).escalations) == 1
    assert build_view(ENG1, infos).escalations == [] and build_view(ENG1, infos).handoffs == []
    [task] = build_view(OPS, infos).handoffs
    assert task.item == "Support leads briefed"
    acked = dict(st, escalation=dict(st["escalation"], acknowledged_by=IR))
    assert build_view(IR, [RolloutInfo("w", acked, plan=p)]).escalations == []


def test_link_tokens_are_bound_to_their_signature_purpose_and_expiry() -> None:
    link = sign_in_link(SECRET, ENG1, timedelta(minutes=5), "https://inbox.example.com")
    assert link.startswith("https://inbox.example.com/inbox/login?token=")
    token = parse_qs(urlsplit(link).query)["token"][0]
    assert verify_token(SECRET, "link", token, time.time())["sub"] == ENG1
    with pytest.raises(SignInRefused, match="not signed by this inbox"):
        verify_token(b"another secret", "link", token, time.time())
    with pytest.raises(SignInRefused, match="not signed by this inbox"):
        verify_token(SECRET, "session", token, time.time())  # a link is not a session cookie
    body, _, mac = token.partition(".")
    with pytest.raises(SignInRefused):
        verify_token(SECRET, "link", body[:-2] + "xx." + mac, time.time())
    with pytest.raises(SignInRefused, match="expired"):
        verify_token(SECRET, "link", token, time.time() + 301)


# The inbox asks every running rollout on the shared dev server for its status, 5 s each at
# most: rollouts other tests left without a worker make a page take that long (and the page
# says "status unavailable" for them). These tests are about sessions and headers, not speed.
PAGE_TIMEOUT = 30.0


@pytest.fixture
async def served(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Any]:
    async def serve(trusted_proxy: str | None) -> Any:
        config = InboxConfig(secret=SECRET, trusted_proxy=trusted_proxy, public_url=None, state_dir=tmp_path)
        return running(create_app(dev_env.client, "tok", routes=Inbox(dev_env.client, config).routes()))

    yield serve


async def test_proxy_header_is_trusted_only_from_the_trusted_proxy(served: Any) -> None:
    headers = {"X-Auth-Request-Email": RISK}
    async with await served("127.0.0.1") as base, httpx.AsyncClient(timeout=PAGE_TIMEOUT) as http:
        r = await http.get(f"{base}/inbox", headers=headers)
        assert r.status_code == 200 and f'<strong id="identity">{RISK}</strong>' in r.text
    async with await served("10.1.2.3") as base, httpx.AsyncClient(timeout=PAGE_TIMEOUT) as http:
        r = await http.get(f"{base}/inbox", headers=headers)
        assert r.status_code == 401 and RISK not in r.text


async def test_link_sets_an_httponly_samesite_strict_session_and_pages_carry_security_headers(served: Any) -> None:
    async with await served(None) as base, httpx.AsyncClient(base_url=base, timeout=PAGE_TIMEOUT) as http:
        assert (await http.get("/inbox/fragment")).status_code == 401
        link = sign_in_link(SECRET, ENG2, timedelta(minutes=5), base)
        token = parse_qs(urlsplit(link).query)["token"][0]
        r = await http.post("/inbox/login", data={"token": token})
        assert r.status_code == 303 and r.headers["location"] == "/inbox"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/inbox" in cookie
        page = await http.get("/inbox")
        assert page.status_code == 200 and ENG2 in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert (await http.get("/inbox/fragment")).status_code == 200
        assert (await http.get("/inbox/static/inbox.js")).status_code == 200
        refused = await http.post("/inbox/act", data={"rollout": "rollout-x", "action": "approve", "csrf": "forged"})
        assert refused.status_code == 403 and "CSRF" in refused.text


def test_cli_prints_a_link_signed_with_the_inbox_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROLLOUT_INBOX_SECRET", SECRET.decode())
    monkeypatch.setenv("ROLLOUT_PUBLIC_URL", "https://rollouts.example.com/")
    assert cli_main(["inbox", "link", "--as", ENG1, "--ttl", "2h"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("https://rollouts.example.com/inbox/login?token=")
    claims = verify_token(SECRET, "link", parse_qs(urlsplit(link).query)["token"][0], time.time())
    assert claims["sub"] == ENG1 and 7190 <= claims["exp"] - time.time() <= 7200
    assert cli_main(["inbox", "link", "--as", ENG1, "--ttl", "30d"]) == 2
    monkeypatch.delenv("ROLLOUT_INBOX_SECRET")
    assert cli_main(["inbox", "link", "--as", ENG1]) == 2
    assert "ROLLOUT_INBOX_SECRET is not set" in capsys.readouterr().err


async def test_the_background_refresh_shows_a_message_without_taking_it_from_the_page(served: Any) -> None:
    async with await served(None) as base, httpx.AsyncClient(base_url=base, timeout=PAGE_TIMEOUT) as http:
        link = sign_in_link(SECRET, ENG2, timedelta(minutes=5), base)
        await http.post("/inbox/login", data={"token": parse_qs(urlsplit(link).query)["token"][0]})
        csrf = re.search(r'name="csrf" value="([^"]+)"', (await http.get("/inbox")).text)
        assert csrf is not None
        r = await http.post("/inbox/act", data={"rollout": "rollout-no-such-rollout", "action": "approve",
                                                 "stage": "pilot", "role": "engineering", "csrf": csrf.group(1)})
        assert r.status_code == 303
        # the page's refresh runs between the action and the redirect's page load
        assert "rollout-no-such-rollout" in (await http.get("/inbox/fragment")).text
        page = (await http.get("/inbox")).text
        assert "data-flash=" in page and "rollout-no-such-rollout" in page
        assert "rollout-no-such-rollout" not in (await http.get("/inbox")).text  # shown once, then gone
