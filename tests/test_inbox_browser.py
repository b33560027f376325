"""The approval inbox in a real headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium), against a real Temporal dev server running the real worker.

Sign in with a link; see the awaited approval; approve; the rollout enters the stage; a
second identity of the same entry sees it gone; the owner sees no approve button and a
forged approval post from the owner's session is refused with the reason shown; an
expired or reused link is refused; a form post without the CSRF token is refused.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from rollout.plan import validate_plan_data
from tests.plans import ENG1, ENG2, OWNER, plan_dict
from worker import client as rc
from worker.example_target import running
from worker.inbox import Inbox, InboxConfig, RolloutReader, sign_in_link
from worker.receiver import create_app

REPO = Path(__file__).resolve().parent.parent
SECRET = b"inbox-secret-" + uuid.uuid4().hex.encode()
T = TypeVar("T")


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError("chromium and chromedriver are needed: run scripts/install-system-deps.sh")
    return browser, driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1400", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    service = Service(executable_path=driver)
    drv = webdriver.Chrome(options=options, service=service)
    try:
        yield drv
    finally:
        drv.quit()  # ends chromedriver and the browser it started


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Selenium blocks; the inbox is served by this event loop, so call it from a thread."""
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
async def inbox_url(dev_env: WorkflowEnvironment, cli_worker: AuditStore, tmp_path: Path) -> AsyncIterator[str]:
    config = InboxConfig(secret=SECRET, trusted_proxy=None, public_url=None, state_dir=tmp_path, poll_seconds=2)
    inbox = Inbox(dev_env.client, config, reader=RolloutReader(dev_env.client, ttl=0.2))
    app = create_app(dev_env.client, "receiver-token", routes=inbox.routes())
    async with running(app) as base:
        yield base


async def sign_in(drv: WebDriver, base: str, identity: str) -> None:
    await run(drv.delete_all_cookies)
    link = sign_in_link(SECRET, identity, timedelta(hours=1), base)
    await run(drv.get, link)
    button = await run(drv.find_element, By.ID, "sign-in")
    await run(button.click)
    await wait_for(lambda: drv.find_element(By.ID, "identity").text == identity, "signed-in page")


async def wait_for(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if await run(check):
                return
        except NoSuchElementException as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def approve_buttons(drv: WebDriver, wid: str) -> list[Any]:
    return drv.find_elements(By.CSS_SELECTOR, f'article.approval[data-rollout="{wid}"] button[data-action="approve"]')


async def status_of(dev_env: WorkflowEnvironment, wid: str) -> dict[str, Any]:
    return await rc.status(dev_env.client, wid)


async def test_inbox_sign_in_approve_and_refusals_in_chromium(
    dev_env: WorkflowEnvironment, inbox_url: str, browser: WebDriver, tmp_path: Path
) -> None:
    base, drv = inbox_url, browser
    plan = validate_plan_data(plan_dict(name=f"inbox-{uuid.uuid4().hex[:6]}"))
    handle = await rc.start(dev_env.client, plan, started_by=OWNER)
    wid = handle.id
    deadline = time.monotonic() + 20
    while (await status_of(dev_env, wid)).get("status") != "awaiting_approval":
        assert time.monotonic() < deadline, "the rollout never awaited approval"
        await asyncio.sleep(0.2)

    # the owner: their rollout awaits others, without an approve button
    await sign_in(drv, base, OWNER)
    await wait_for(lambda: bool(drv.find_elements(By.CSS_SELECTOR, f'article.owned[data-rollout="{wid}"]')), "owner's card")
    assert await run(approve_buttons, drv, wid) == []
    owned = await run(drv.find_element, By.CSS_SELECTOR, f'article.owned[data-rollout="{wid}"]')
    assert "engineering" in await run(lambda: owned.text) and ENG1 in await run(lambda: owned.text)

    # a forged approval post from the owner's session: the workflow refuses, the reason is shown
    forge = f"""
      var f = document.createElement('form'); f.method = 'post'; f.action = '/inbox/act';
      var fields = {{csrf: document.querySelector('input[name=csrf]').value, rollout: '{wid}',
                    action: 'approve', stage: 'pilot', role: 'engineering'}};
      for (var k in fields) {{ var i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = fields[k]; f.appendChild(i); }}
      document.body.appendChild(f); f.submit();
    """
    await run(drv.execute_script, forge)
    await wait_for(lambda: bool(drv.find_elements(By.CSS_SELECTOR, "[data-flash=refused]")), "refusal shown", within=45)
    refusal = await run(lambda: drv.find_element(By.CSS_SELECTOR, "[data-flash=refused]").text)
    assert f"{wid}: approve refused:" in refusal and "owner" in refusal, refusal
    assert (await status_of(dev_env, wid))["approvals"]["given"] == {}

    # a form post without the CSRF token is refused before anything reaches the workflow
    no_csrf = forge.replace("csrf: document.querySelector('input[name=csrf]').value,", "")
    await run(drv.execute_script, no_csrf)
    await wait_for(lambda: bool(drv.find_elements(By.ID, "refusal")), "CSRF refusal")
    assert "CSRF token is missing or wrong" in await run(lambda: drv.find_element(By.ID, "refusal").text)

    # an approver signs in with a link and sees the awaited approval
    await sign_in(drv, base, ENG1)
    await wait_for(lambda: bool(approve_buttons(drv, wid)), "the awaited approval")
    card = await run(drv.find_element, By.CSS_SELECTOR, f'article.approval[data-rollout="{wid}"]')
    text = await run(lambda: card.text)
    assert "Approve entry to pilot" in text and "nothing exposed → 5% of internal" in text
    assert "send_customer_message" in text and "refund" in text  # the authority it widens to
    shot = tmp_path / "inbox.png"
    await run(drv.save_screenshot, str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ROLLOUT_INBOX_SCREENSHOT"):  # refresh docs/inbox.png for the README
        shutil.copyfile(shot, os.environ["ROLLOUT_INBOX_SCREENSHOT"])

    # approve: the rollout enters the stage
    [button] = await run(approve_buttons, drv, wid)
    await run(button.click)
    await wait_for(lambda: bool(drv.find_elements(By.CSS_SELECTOR, "[data-flash=done]")), "approval done")
    assert "pilot approved as engineering" in await run(lambda: drv.find_element(By.CSS_SELECTOR, "[data-flash=done]").text)
    deadline = time.monotonic() + 20
    while True:
        st = await status_of(dev_env, wid)
        if st.get("exposure_stage") == "pilot":
            break
        assert time.monotonic() < deadline, f"the rollout did not enter the pilot: {st.get('status')}"
        await asyncio.sleep(0.2)
    assert st["approvals"]["given"]["engineering"]["actor"] == ENG1 or st["stage"] == "pilot"

    # a second identity of the same entry sees it gone
    await sign_in(drv, base, ENG2)
    await wait_for(lambda: bool(drv.find_elements(By.ID, f"row-{wid}")), "the read-only row")
    assert await run(approve_buttons, drv, wid) == []
    row = await run(lambda: drv.find_element(By.ID, f"row-{wid}").text)
    assert "pilot" in row and "awaiting_approval" not in row

    # an expired link and a reused link are refused
    expired = sign_in_link(SECRET, ENG2, timedelta(hours=1), base, now=time.time() - 7200)
    await run(drv.delete_all_cookies)
    await run(drv.get, expired)
    assert "this link has expired" in await run(lambda: drv.find_element(By.CSS_SELECTOR, ".flash.refused").text)
    link = sign_in_link(SECRET, ENG2, timedelta(hours=1), base)
    for attempt in range(2):
        await run(drv.delete_all_cookies)
        await run(drv.get, link)
        await run(lambda: drv.find_element(By.ID, "sign-in").click())
        if attempt == 0:
            await wait_for(lambda: drv.find_element(By.ID, "identity").text == ENG2, "first use signs in")
    # the second use's answer is a new page: wait for it rather than read the one being left
    await wait_for(lambda: bool(drv.find_elements(By.CSS_SELECTOR, ".flash.refused")), "reused link refused")
    refused = await run(lambda: drv.find_element(By.CSS_SELECTOR, ".flash.refused").text)
    assert "already used" in refused
    assert await run(lambda: drv.find_elements(By.ID, "identity")) == []
