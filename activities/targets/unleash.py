"""`unleash` target: drives a feature flag's gradual rollout through the Unleash admin API.

For the plan's `feature` (default: the plan name) in `project` and `environment`, the
controller keeps one `flexibleRollout` strategy titled `rollout-controller`:

- `parameters.rollout`: the stage's percent (whole percents, rounded down, so exposure
  never exceeds the scope), `stickiness: default`, `groupId: <feature>`; plus
  `rolloutId`, `rolloutKey`, `rolloutSeq` and `rolloutRun` naming the change that set it;
- a constraint `segment IN [...]` when the stage names segments (the `segment`
  context field is created when missing);
- one strategy variant `authority` whose JSON payload is the stage's authority.

The flag is created (type `release`) when missing, and the environment is switched on
while anything is exposed and off at 0%. The admin token is read from the env var named
by `token_env` and sent as `Authorization`. Re-applying a change is harmless (every
request sets absolute state), and a change older than the one recorded on the strategy
(same run, lower sequence) is not written.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Self
from urllib.parse import quote

import httpx

from activities.outbound import USER_AGENT, classify, redact_url, snippet, tls
from activities.targets.base import (
    Target,
    TargetUnavailable,
    current_run_id,
    parse_config,
    read_secret,
    rejected,
)
from rollout.models import TargetChange, TargetResult
from rollout.plan import UnleashTarget as UnleashTargetConfig

STRATEGY_TITLE = "rollout-controller"
SEGMENT_CONTEXT = "segment"
TIMEOUT_SECONDS = 10.0


def whole_percent(percent: float) -> int:
    return max(0, min(100, math.floor(percent + 1e-9)))


def strategy_body(feature: str, change: TargetChange) -> dict[str, Any]:
    constraints: list[dict[str, Any]] = []
    if change.segments is not None:
        constraints.append(
            {"contextName": SEGMENT_CONTEXT, "operator": "IN", "values": list(change.segments), "inverted": False}
        )
    return {
        "name": "flexibleRollout",
        "title": STRATEGY_TITLE,
        "disabled": False,
        "constraints": constraints,
        "parameters": {
            "rollout": str(whole_percent(change.percent)),
            "stickiness": "default",
            "groupId": feature,
            "rolloutId": change.rollout_id,
            "rolloutKey": change.idempotency_key,
            "rolloutSeq": str(change.seq),
            "rolloutRun": current_run_id() or "",
        },
        "variants": [
            {
                "name": "authority",
                "weight": 1000,
                "weightType": "variable",
                "stickiness": "default",
                "payload": {"type": "json", "value": json.dumps(dict(sorted(change.authority.items())))},
            }
        ],
    }


class _Api:
    """A thin admin-API client that turns answers into the target error contract."""

    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client = client
        self.base = base.rstrip("/")
        self.where = redact_url(base)

    async def call(
        self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()
    ) -> httpx.Response:
        try:
            response = await self.client.request(method, self.base + path, json=body)
        except httpx.TimeoutException:
            raise TargetUnavailable(f"unleash {self.where} did not answer {method} {path} in time") from None
        except httpx.TransportError as exc:
            raise TargetUnavailable(f"unleash {self.where} unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code in ok:
            return response
        verdict = classify(response.status_code)
        if verdict == "retry":
            raise TargetUnavailable(
                f"unleash {method} {path} answered {response.status_code}: {snippet(response.text)}"
            )
        if verdict == "reject":
            raise rejected(f"unleash refused {method} {path} with {response.status_code}: {snippet(response.text)}")
        return response


class UnleashTarget(Target):
    kind: ClassVar[str] = "unleash"

    def __init__(self, config: UnleashTargetConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.transport = transport

    @classmethod
    def from_block(cls, target: dict[str, Any]) -> Self:
        return cls(parse_config(UnleashTargetConfig, target))

    async def apply(self, change: TargetChange) -> TargetResult:
        cfg = self.config
        token = read_secret(cfg.token_env, "admin API token")
        feature = cfg.feature or change.plan_name
        project, env, name = (quote(x, safe="") for x in (cfg.project, cfg.environment, feature))
        feature_path = f"/api/admin/projects/{project}/features/{name}"
        strategies_path = f"{feature_path}/environments/{env}/strategies"
        headers = {"Authorization": token, "User-Agent": USER_AGENT, "Accept": "application/json"}
        async with httpx.AsyncClient(
            timeout=TIMEOUT_SECONDS, headers=headers, follow_redirects=False, transport=self.transport, verify=tls()
        ) as client:
            api = _Api(client, cfg.url)
            created = await self._ensure_feature(api, project, feature, feature_path, change)
            if change.segments is not None:
                await self._ensure_segment_context(api)
            existing = (await api.call("GET", strategies_path)).json()
            ours = [s for s in existing if isinstance(s, dict) and s.get("title") == STRATEGY_TITLE]
            others = len(existing) - len(ours)
            if ours and self._newer_or_same(ours[0], change):
                return TargetResult(
                    applied=True, detail=f"unleash {feature}/{cfg.environment} already at #{ours[0]['parameters']['rolloutSeq']}"
                )
            body = strategy_body(feature, change)
            if ours:
                await api.call("PUT", f"{strategies_path}/{quote(str(ours[0]['id']), safe='')}", body)
                for extra in ours[1:]:
                    await api.call("DELETE", f"{strategies_path}/{quote(str(extra['id']), safe='')}", ok=(404,))
            else:
                await api.call("POST", strategies_path, body)
            switch = "on" if whole_percent(change.percent) > 0 else "off"
            await api.call("POST", f"{feature_path}/environments/{env}/{switch}")
        detail = (
            f"unleash {feature}/{cfg.environment}: rollout {whole_percent(change.percent)}%"
            f"{' (created the flag)' if created else ''}, environment {switch}"
        )
        if others:
            detail += f"; note: {others} other strateg{'y' if others == 1 else 'ies'} on the flag also grant exposure"
        return TargetResult(applied=True, detail=detail)

    @staticmethod
    def _newer_or_same(strategy: dict[str, Any], change: TargetChange) -> bool:
        params = strategy.get("parameters") or {}
        if params.get("rolloutId") != change.rollout_id or params.get("rolloutRun") != (current_run_id() or ""):
            return False
        try:
            return int(params.get("rolloutSeq", "")) >= change.seq
        except ValueError:
            return False

    async def _ensure_feature(
        self, api: _Api, project: str, feature: str, feature_path: str, change: TargetChange
    ) -> bool:
        found = await api.call("GET", feature_path, ok=(404,))
        if found.status_code != 404:
            return False
        await api.call(
            "POST",
            f"/api/admin/projects/{project}/features",
            {
                "name": feature,
                "type": "release",
                "description": f"Exposure of rollout {change.rollout_id}, managed by the staged rollout controller",
            },
            ok=(409,),
        )
        return True

    async def _ensure_segment_context(self, api: _Api) -> None:
        found = await api.call("GET", f"/api/admin/context/{SEGMENT_CONTEXT}", ok=(404,))
        if found.status_code == 404:
            await api.call(
                "POST",
                "/api/admin/context",
                {"name": SEGMENT_CONTEXT, "description": "Rollout segment (staged rollout controller)", "stickiness": False},
                ok=(409,),
            )
