"""`webhook` target: POSTs each change as signed JSON; the receiver applies it once per key.

Status meaning (docs/targets.md): 2xx applied (also for a key already applied: answer
the same again); 5xx, 408, 425, 429, timeouts and connection errors are transient and
retried by Temporal with backoff; any other 4xx (or a 3xx: redirects are not followed)
is a refusal, non-retryable, which holds the rollout and pages the owner.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import httpx

from activities.outbound import build_headers, classify, dumps, redact_url, snippet, tls
from activities.targets.base import (
    Target,
    TargetUnavailable,
    exposure_body,
    parse_config,
    read_secret,
    rejected,
)
from rollout.durations import parse_duration
from rollout.models import TargetChange, TargetResult
from rollout.plan import WebhookTarget as WebhookTargetConfig


class WebhookTarget(Target):
    kind: ClassVar[str] = "webhook"

    def __init__(self, config: WebhookTargetConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.transport = transport

    @classmethod
    def from_block(cls, target: dict[str, Any]) -> Self:
        return cls(parse_config(WebhookTargetConfig, target))

    async def apply(self, change: TargetChange) -> TargetResult:
        cfg = self.config
        secret = read_secret(cfg.secret_env, "signing secret") if cfg.secret_env else None
        body = dumps(exposure_body(change))
        headers = build_headers(body, secret=secret, idempotency_key=change.idempotency_key, event="exposure")
        timeout = parse_duration(cfg.timeout).total_seconds()
        where = redact_url(cfg.url)
        try:
            async with httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, transport=self.transport, verify=tls()
            ) as client:
                response = await client.post(cfg.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise TargetUnavailable(f"webhook {where} did not answer within {timeout:g}s") from None
        except httpx.TransportError as exc:
            raise TargetUnavailable(f"webhook {where} unreachable: {type(exc).__name__}: {exc}") from None
        verdict = classify(response.status_code)
        text = snippet(response.text)
        if verdict == "retry":
            raise TargetUnavailable(f"webhook {where} answered {response.status_code}: {text}")
        if verdict == "reject":
            raise rejected(f"webhook {where} refused the change with {response.status_code}: {text}")
        return TargetResult(applied=True, detail=f"{where} answered {response.status_code}")
