"""Email notifications against a real SMTP server (aiosmtpd) on 127.0.0.1: STARTTLS,
credentials from the environment, pages to the paged identities, containments and
stage changes to the rollout owner, plain text with the acknowledge command and the
inbox link."""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from activities.notifiers.common import Settings
from activities.notify import notify_all
from rollout.models import Notification
from rollout.plan import EmailNotifier

USER_ENV, PASSWORD_ENV = "ROLLOUT_TEST_SMTP_USER", "ROLLOUT_TEST_SMTP_PASSWORD"
USER, PASSWORD = "rollouts", "smtp-pass-8c1f"
OWNER = "alice@example.com"


@dataclass
class Received:
    envelope_from: str
    rcpt: list[str]
    message: Message
    tls: bool
    login: str | None


@dataclass
class Mailbox:
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), email.message_from_bytes(raw), session.ssl is not None, login)
        )
        return "250 OK"


def _authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, trusted by the client through SSL_CERT_FILE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("smtp-tls")
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def smtp_server(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Mailbox, str]]:
    """A real SMTP server that offers STARTTLS and requires it before AUTH."""
    cert_file, key_file = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticate,
        auth_require_tls=True,
    )
    controller.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("ROLLOUT_PUBLIC_URL", "https://rollouts.example.com")
    monkeypatch.setattr(Settings, "backoff_seconds", 0.01)
    try:
        yield mailbox, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


def notifier(url: str, **kw: Any) -> EmailNotifier:
    fields: dict[str, Any] = {
        "kind": "email", "smtp_url": url, "from": "rollouts@example.com", "to": [OWNER],
        "username_env": USER_ENV, "password_env": PASSWORD_ENV,
    }
    fields.update(kw)
    return EmailNotifier.model_validate(fields, by_alias=True)


def notification(n: EmailNotifier, event: str, **overrides: Any) -> Notification:
    base: dict[str, Any] = {
        "rollout_id": "rollout-support-agent",
        "plan_name": "support-agent",
        "seq": 21,
        "event": event,
        "summary": "support-agent hold: odd replies (by erin@example.com)",
        "stage": "pilot",
        "status": "held",
        "plan_hash": "ef" * 32,
        "occurred_at": dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "notifiers": [n],
    }
    base.update(overrides)
    return Notification(**base)


def text_of(message: Message) -> str:
    assert message.get_content_type() == "text/plain"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(message.get_content_charset() or "utf-8").replace("\r\n", "\n")


async def test_page_goes_to_the_paged_identities_over_starttls_with_the_ack_command_and_inbox_link(
    smtp_server: tuple[Mailbox, str],
) -> None:
    mailbox, url = smtp_server
    n = notification(
        notifier(url),
        "escalation_page",
        page=True,
        summary="PAGE carol@example.com (incident_response): support-agent held: odd replies",
        recipients=["carol@example.com", "dave@example.com"],
        ack_command=None,
    )
    result = await notify_all(n)
    assert result.failed == {} and result.delivered == [f"email {url}"]
    [mail] = mailbox.received
    assert mail.tls and mail.login == USER  # upgraded with STARTTLS before the credentials were sent
    assert mail.envelope_from == "rollouts@example.com"
    assert mail.rcpt == ["carol@example.com", "dave@example.com"]  # the owner is not paged here
    assert mail.message["From"] == "rollouts@example.com"
    assert mail.message["To"] == "carol@example.com, dave@example.com"
    assert mail.message["Subject"] == "[rollout] PAGE: support-agent escalation page at pilot (held)"
    assert mail.message["X-Rollout-Id"] == "rollout-support-agent"
    body = text_of(mail.message)
    assert "rollout ack rollout-support-agent --escalation --as carol@example.com" in body
    assert "rollout ack rollout-support-agent --escalation --as dave@example.com" in body
    assert "Approval inbox: https://rollouts.example.com/inbox" in body
    assert PASSWORD not in body


@pytest.mark.parametrize("event", ["hold", "narrow", "rollback", "stage_entered", "resumed", "completed", "aborted"])
async def test_containments_and_stage_changes_go_to_the_rollout_owner(smtp_server: tuple[Mailbox, str], event: str) -> None:
    mailbox, url = smtp_server
    result = await notify_all(notification(notifier(url), event))
    assert result.failed == {}
    [mail] = mailbox.received
    assert mail.rcpt == [OWNER]
    assert mail.message["Subject"] == f"[rollout] support-agent {event.replace('_', ' ')} at pilot (held)"
    body = text_of(mail.message)
    assert body.startswith("support-agent hold: odd replies (by erin@example.com)\n")
    assert "Approval inbox: https://rollouts.example.com/inbox" in body


async def test_other_events_send_no_mail(smtp_server: tuple[Mailbox, str]) -> None:
    mailbox, url = smtp_server
    result = await notify_all(notification(notifier(url), "amended"))
    assert mailbox.received == [] and result.delivered == [] and result.failed == {}


async def test_wrong_credentials_are_a_recorded_failure_never_retried(
    smtp_server: tuple[Mailbox, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox, url = smtp_server
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    result = await notify_all(notification(notifier(url), "hold"))
    assert result.failed == {f"email {url}": "SMTP authentication failed (535)"}
    assert mailbox.received == []


async def test_unset_credential_variable_is_named(smtp_server: tuple[Mailbox, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = smtp_server
    monkeypatch.delenv(PASSWORD_ENV)
    result = await notify_all(notification(notifier(url), "hold"))
    assert list(result.failed.values()) == [f"environment variable {PASSWORD_ENV} is not set on the worker"]


async def test_unreachable_server_is_retried_then_recorded() -> None:
    url = f"smtp://127.0.0.1:{_free_port()}"
    result = await notify_all(notification(notifier(url, username_env=None, password_env=None), "hold"))
    assert result.failed == {f"email {url}": "unreachable: ConnectionRefusedError (attempt 3 of 3)"}


async def test_credentials_are_never_sent_without_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that offers no STARTTLS gets no password (and no mail from a notifier that has one)."""
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, auth_require_tls=False, authenticator=_authenticate)
    controller.start()
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    try:
        url = f"smtp://127.0.0.1:{port}"
        result = await notify_all(notification(notifier(url), "hold"))
        plain = await notify_all(notification(notifier(url, username_env=None, password_env=None), "hold"))
    finally:
        controller.stop()
    assert result.failed == {
        f"email {url}": "the SMTP server offers no STARTTLS; credentials are never sent in clear text"
    }
    assert plain.failed == {} and len(mailbox.received) == 1 and not mailbox.received[0].tls
