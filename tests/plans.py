"""Plans for workflow tests: a 3-stage rollout with 72h / 7d / 14d windows."""

from __future__ import annotations

import copy
from typing import Any

OWNER = "alice@example.com"
WORKFLOW_OWNER = "bob@example.com"
IR = "carol@example.com"
RISK = "erin@example.com"
ENG1 = "frank@example.com"
ENG2 = "gina@example.com"
OPS = "hank@example.com"

BASE: dict[str, Any] = {
    "apiVersion": "rollout/v1",
    "name": "support-agent",
    "description": "test plan",
    "owners": {"rollout": OWNER, "workflow": WORKFLOW_OWNER, "incident_response": IR},
    "approvers": {"risk": [RISK], "engineering": [ENG1, ENG2, OWNER], "operations": [OPS]},
    "distinct_from": {"risk": ["workflow"]},
    "target": {"kind": "log"},
    "fallback": "Route every ticket to the human queue",
    "escalation": {"ack_within": "5m", "chain": ["incident_response", "rollout"], "max_hold": "7d"},
    "notify": [],
    "stages": [
        {
            "name": "pilot",
            "tier": "pilot",
            "scope": {"percent": 5, "segments": ["internal"]},
            "authority": {"read": "auto", "draft": "auto", "send_customer_message": "review", "refund": "forbid"},
            "approvals": {"roles": ["engineering"]},
            "window": "72h",
        },
        {
            "name": "limited-25",
            "tier": "limited",
            "scope": {"percent": 25, "segments": ["internal", "smb"]},
            "authority": {"send_customer_message": "auto", "refund": "review"},
            "approvals": {"roles": ["engineering", "operations"]},
            "window": "7d",
            "handoff": [{"item": "Support leads briefed", "to": "operations"}],
        },
        {
            "name": "system-of-record",
            "tier": "system_of_record",
            "scope": {"percent": 100},
            "approvals": {"roles": ["risk", "engineering", "operations"]},
            "window": "14d",
            "handoff": [
                {"item": "On-call rota includes the agent", "to": "operations"},
                {"item": "Runbook reviewed", "to": "incident_response"},
            ],
        },
    ],
}


def plan_dict(name: str = "support-agent", **changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["name"] = name
    d.update(changes)
    return d


def with_thresholds(d: dict[str, Any], stage: int, *thresholds: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    d.setdefault("metrics", {"prometheus_url": "http://127.0.0.1:1", "interval": "30s"})
    d["stages"][stage]["thresholds"] = list(thresholds)
    return d
