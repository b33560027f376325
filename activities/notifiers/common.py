"""What every notifier shares: the inbox link, acknowledge commands, HTTP with retries."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import httpx

from activities.outbound import classify, snippet
from rollout.models import Notification

PUBLIC_URL_ENV: Final = "ROLLOUT_PUBLIC_URL"
DEFAULT_PUBLIC_URL: Final = "http://127.0.0.1:9095"  # `rollout receiver` / `rollout dev` default port
SKIPPED: Final = "skipped"  # the event is not for this kind of notifier


class Settings:
    """Retry knobs, per process; tests shorten them."""

    attempts = 3  # per receiver, inside one activity attempt
    backoff_seconds = 0.5  # doubled after each failed attempt
    request_timeout = 5.0  # per HTTP request or SMTP conversation
    max_retry_after = 10.0  # a Retry-After longer than this is cut to it (the notifier has a deadline)


def public_url() -> str:
    """The receiver's address as people reach it (links in notifications and sign-in links)."""
    return (os.environ.get(PUBLIC_URL_ENV) or DEFAULT_PUBLIC_URL).rstrip("/")


def inbox_link() -> str:
    return f"{public_url()}/inbox"


def escalation_id(n: Notification) -> str:
    """A stable id for the escalation a notification is about: the workflow's own when it
    gives one (`details.escalation_id`), else one per rollout."""
    given = n.details.get("escalation_id")
    if isinstance(given, str) and given:
        return given
    return f"{n.rollout_id}:escalation"


def ack_commands(n: Notification) -> list[str]:
    """The command(s) that acknowledge a page: the given one, or one per paged identity."""
    if n.ack_command:
        return [n.ack_command]
    if not n.page:
        return []
    if not n.recipients:
        return [f"rollout ack {n.rollout_id} --escalation"]
    return [f"rollout ack {n.rollout_id} --escalation --as {who}" for who in n.recipients]


class NotDelivered(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def post_once(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise NotDelivered(f"no answer within {Settings.request_timeout:g}s", True) from None
    except httpx.TransportError as exc:
        raise NotDelivered(f"unreachable: {type(exc).__name__}", True) from None
    verdict = classify(response.status_code)
    if verdict != "applied":
        raise NotDelivered(
            f"HTTP {response.status_code}: {snippet(response.text, 120)}",
            verdict == "retry",
            retry_after_seconds(response.headers.get("retry-after")),
        )


async def post_with_retries(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """POST with retries on 408/425/429, 5xx and network errors, honouring Retry-After;
    None when delivered, else the last error."""
    delay = Settings.backoff_seconds
    error = "not attempted"
    for attempt in range(1, Settings.attempts + 1):
        try:
            await post_once(client, url, body, headers)
            return None
        except NotDelivered as exc:
            error = f"{exc} (attempt {attempt} of {Settings.attempts})"
            if not exc.retryable:
                return str(exc)
            wait = delay if exc.retry_after is None else min(exc.retry_after, Settings.max_retry_after)
        if attempt < Settings.attempts:
            await asyncio.sleep(wait)
            delay *= 2
    return error
