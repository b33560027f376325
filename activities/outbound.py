"""Outbound JSON webhooks: canonical bodies, signed headers, status meaning, safe URLs.

Shared by the `webhook` exposure target and the notifiers, so that every receiver sees
one contract (docs/targets.md): a compact JSON body, `Content-Type: application/json`,
`Idempotency-Key`, `X-Rollout-Event` and, when a secret is configured,
`X-Rollout-Signature`.
"""

from __future__ import annotations

import functools
import json
import ssl
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from activities.signing import EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign

USER_AGENT = "rollout-controller"
# 4xx answers that mean "try again later" rather than "no"
RETRYABLE_4XX = frozenset({408, 425, 429})

Verdict = Literal["applied", "retry", "reject"]


def dumps(doc: Any) -> bytes:
    """Compact, key-sorted JSON: the same document always gives the same bytes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@functools.cache
def tls() -> ssl.SSLContext:
    """The process's one TLS context for outbound HTTP (CA bundle as httpx loads it, honouring
    SSL_CERT_FILE / SSL_CERT_DIR). Building one loads the CA bundle, about 28 ms of CPU: done
    per request it was the largest cost of a breach under load (a delivery and three
    notifications each built one; bench/README.md, storm)."""
    return httpx.create_ssl_context()


def build_headers(body: bytes, *, secret: str | None, idempotency_key: str, event: str) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: idempotency_key,
        EVENT_HEADER: event,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return headers


def classify(status: int) -> Verdict:
    """2xx applied; 5xx, 408, 425 and 429 retried; any other status is a refusal."""
    if 200 <= status < 300:
        return "applied"
    if status >= 500 or status in RETRYABLE_4XX:
        return "retry"
    return "reject"


def redact_url(url: str) -> str:
    """A URL safe to log or record: no credentials, query or fragment.

    Slack incoming-webhook URLs carry their secret in the path, so everything after
    the first path segment of a hooks.slack.com-style URL is masked too.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = parts.path
    if "slack" in host or path.startswith("/services/"):
        first = path.strip("/").split("/", 1)[0]
        path = f"/{first}/***" if first else "/***"
    return urlunsplit((parts.scheme, host, path, "", ""))


def snippet(text: str, limit: int = 200) -> str:
    """The start of a response body, on one line, for error messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
