"""Plain-text email over SMTP.

- an escalation page goes to the paged identities (`recipients`); an approval reminder
  to the approvers it reminds;
- every containment and stage change goes to the notifier's `to` (the rollout owner);
- other events are skipped.

`smtp://` upgrades with STARTTLS whenever the server offers it; `smtps://` is TLS from
the first byte. Credentials come from the worker's environment (`username_env`,
`password_env`) and are never sent over a connection that is not encrypted. The body
names what happened, the command that acknowledges a page and the inbox link.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import urlsplit

from activities.notifiers.common import SKIPPED, Settings, ack_commands, inbox_link
from rollout.models import Notification
from rollout.plan import EmailNotifier

OWNER_EVENTS = frozenset(
    {"stage_entered", "hold", "narrow", "rollback", "resumed", "rejected", "completed", "aborted", "target_undeliverable"}
)


class _Failed(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def recipients(notifier: EmailNotifier, n: Notification) -> list[str]:
    """Who gets `n`: paged (or reminded) identities for a page (reminder), `to` for a
    containment or stage change, nobody otherwise."""
    if n.page or n.event == "approval_reminder":
        return [r for r in n.recipients if "@" in r]
    if n.event in OWNER_EVENTS:
        return list(notifier.to)
    return []


def subject(n: Notification) -> str:
    head = "PAGE: " if n.page else ""
    where = f" at {n.stage}" if n.stage else ""
    return f"[rollout] {head}{n.plan_name} {n.event.replace('_', ' ')}{where} ({n.status})"


def body_text(n: Notification) -> str:
    lines = [n.summary, ""]
    lines.append(f"Rollout:  {n.rollout_id}")
    if n.stage:
        lines.append(f"Stage:    {n.stage}")
    lines.append(f"Status:   {n.status}")
    lines.append(f"When:     {n.occurred_at.isoformat()}")
    if n.recipients:
        lines.append(f"{'Paged' if n.page else 'For'}:    {', '.join(n.recipients)}")
    commands = ack_commands(n)
    if commands:
        lines += ["", "Acknowledge with:"] + [f"  {c}" for c in commands]
    lines += ["", f"Approval inbox: {inbox_link()}", "", f"Plan {n.plan_hash[:12]}, decision {n.seq}.", ""]
    return "\n".join(lines)


def build_message(notifier: EmailNotifier, n: Notification, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = notifier.from_
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject(n)
    msg["Date"] = format_datetime(n.occurred_at)
    msg["Message-ID"] = make_msgid(idstring=f"{n.seq}.{n.event}", domain=notifier.from_.rpartition("@")[2])
    msg["X-Rollout-Id"] = n.rollout_id
    msg["X-Rollout-Event"] = n.event
    msg.set_content(body_text(n))
    return msg


def _credentials(notifier: EmailNotifier) -> tuple[str, str] | None:
    if not notifier.username_env and not notifier.password_env:
        return None
    names = [x for x in (notifier.username_env, notifier.password_env) if x]
    values = [os.environ.get(x) for x in names]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise _Failed(f"environment variable {', '.join(missing)} is not set on the worker", False)
    user = os.environ.get(notifier.username_env or "", "")
    password = os.environ.get(notifier.password_env or "", "")
    return user, password


def _send_blocking(notifier: EmailNotifier, msg: EmailMessage, to: list[str]) -> None:
    parts = urlsplit(notifier.smtp_url)
    host = parts.hostname or "localhost"
    implicit_tls = parts.scheme == "smtps"
    port = parts.port or (465 if implicit_tls else 25)
    context = ssl.create_default_context()
    creds = _credentials(notifier)
    try:
        smtp: smtplib.SMTP
        if implicit_tls:
            smtp = smtplib.SMTP_SSL(host, port, timeout=Settings.request_timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=Settings.request_timeout)
        with smtp:
            smtp.ehlo()
            encrypted = implicit_tls
            if not implicit_tls and smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
                encrypted = True
            if creds is not None:
                if not encrypted:
                    raise _Failed("the SMTP server offers no STARTTLS; credentials are never sent in clear text", False)
                smtp.login(*creds)
            smtp.send_message(msg, from_addr=notifier.from_, to_addrs=to)
    except _Failed:
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(f"{who} ({code})" for who, (code, _) in exc.recipients.items())
        raise _Failed(f"recipients refused: {refused}", False) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise _Failed(f"SMTP authentication failed ({exc.smtp_code})", False) from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise _Failed(f"SMTP {exc.smtp_code}: {text[:120]}", exc.smtp_code < 500) from None
    except ssl.SSLError as exc:
        raise _Failed(f"TLS failed: {exc.reason or type(exc).__name__}", False) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise _Failed(f"unreachable: {type(exc).__name__}", True) from None


async def send(notifier: EmailNotifier, n: Notification) -> str | None:
    to = recipients(notifier, n)
    if not to:
        return SKIPPED if not (n.page or n.event == "approval_reminder") else "no paged identity has an email address"
    msg = build_message(notifier, n, to)
    delay = Settings.backoff_seconds
    error = "not attempted"
    for attempt in range(1, Settings.attempts + 1):
        try:
            await asyncio.to_thread(_send_blocking, notifier, msg, to)
            return None
        except _Failed as exc:
            error = f"{exc} (attempt {attempt} of {Settings.attempts})"
            if not exc.retryable:
                return str(exc)
        if attempt < Settings.attempts:
            await asyncio.sleep(delay)
            delay *= 2
    return error
