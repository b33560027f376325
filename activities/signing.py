"""HMAC-SHA256 request signing for webhooks the controller sends, and its verifier.

The controller signs every webhook body (exposure changes and notifications) when the
plan names a `secret_env`. The signature header is

    X-Rollout-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The timestamp is part of the signed material, so a captured request cannot be replayed
later than `tolerance` seconds; the body cannot be altered without the secret. Receivers
call `verify_signature(body, header, secret)` (or port its dozen lines; see
docs/targets.md). Several `v1=` entries may appear (key rotation); any match passes.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Rollout-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Rollout-Event"
DEFAULT_TOLERANCE = 300.0  # seconds a signed request stays acceptable


class SignatureError(Exception):
    """A request whose signature is missing, malformed, stale or wrong."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def compute_signature(body: bytes, secret: str | bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>." + body` under `secret`."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def sign(body: bytes, secret: str | bytes, timestamp: int | None = None) -> str:
    """The `X-Rollout-Signature` header value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={compute_signature(body, secret, t)}"


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its `v1` signatures; raise SignatureError."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("signature timestamp is not an integer") from None
        elif key == "v1":
            signatures.append(value.strip().lower())
    if timestamp is None:
        raise SignatureError("signature header has no timestamp (t=...)")
    if not signatures:
        raise SignatureError("signature header has no v1 signature")
    return timestamp, signatures


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check `header` against `body`; return the signed timestamp or raise SignatureError.

    Refuses a missing header, a timestamp further than `tolerance` seconds from `now`
    (either side: replays and badly skewed clocks), and any signature mismatch
    (compared in constant time).
    """
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = parse_signature_header(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError("signature timestamp outside the tolerance window (replayed or clock skew)")
    expected = compute_signature(body, secret, timestamp)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("signature does not match the body")
    return timestamp
