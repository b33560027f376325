"""The plan's `notify` entries: one model per kind, each failure a clear message at its field."""

from __future__ import annotations

from typing import Any

import pytest

from rollout.errors import PlanError
from rollout.plan import EmailNotifier, PagerDutyNotifier, TeamsNotifier, WebhookNotifier, validate_plan_data
from tests.plans import plan_dict


def problems(notifier: dict[str, Any]) -> list[str]:
    d = plan_dict()
    d["notify"] = [notifier]
    with pytest.raises(PlanError) as info:
        validate_plan_data(d)
    return list(info.value.problems)


def test_every_kind_validates_into_its_own_model() -> None:
    d = plan_dict()
    d["notify"] = [
        {"kind": "webhook", "url": "http://127.0.0.1:8000/notify", "secret_env": "HOOK_SECRET"},
        {"kind": "teams", "url": "https://example.com/workflows/x?sig=y"},
        {"kind": "pagerduty", "routing_key_env": "PD_KEY"},
        {"kind": "email", "smtp_url": "smtp://127.0.0.1:25", "from": "rollouts@example.com", "to": ["alice@example.com"],
         "username_env": "SMTP_USER", "password_env": "SMTP_PASSWORD"},
    ]
    plan = validate_plan_data(d)
    webhook, teams, pd, mail = plan.notify
    assert isinstance(webhook, WebhookNotifier) and isinstance(teams, TeamsNotifier)
    assert isinstance(pd, PagerDutyNotifier) and pd.url == "https://events.pagerduty.com/v2/enqueue" and pd.severity == "critical"
    assert isinstance(mail, EmailNotifier) and mail.from_ == "rollouts@example.com"
    assert plan.model_dump(mode="json", by_alias=True)["notify"][3]["from"] == "rollouts@example.com"


@pytest.mark.parametrize(
    ("notifier", "expected"),
    [
        ({"kind": "pager"}, "notify[0]: 'kind' must be one of: webhook, slack, teams, pagerduty, email"),
        ({"url": "http://x"}, "notify[0]: 'kind' must be one of: webhook, slack, teams, pagerduty, email"),
        ({"kind": "pagerduty"}, "notify[0].routing_key_env: required field is missing"),
        ({"kind": "pagerduty", "routing_key_env": "R0ut1ng key"},
         "notify[0].routing_key_env: must be the name of an environment variable (letters, digits, _), never the secret itself"),
        ({"kind": "pagerduty", "routing_key_env": "K", "severity": "high"}, "notify[0].severity: Input should be"),
        ({"kind": "teams", "url": "ftp://x"}, "notify[0].url: must be an http:// or https:// URL, got 'ftp://x'"),
        ({"kind": "teams", "url": "https://x", "secret_env": "S"}, "notify[0].secret_env: unknown key"),
        ({"kind": "email", "smtp_url": "smtp://user:pw@mail:25", "from": "a@example.com", "to": ["b@example.com"]},
         "notify[0].smtp_url: must be smtp://HOST[:PORT] or smtps://HOST[:PORT], without credentials"),
        ({"kind": "email", "smtp_url": "smtp://mail", "from": "nobody", "to": ["b@example.com"]},
         "notify[0].from: 'nobody' is not an email address"),
        ({"kind": "email", "smtp_url": "smtp://mail", "from": "a@example.com", "to": []},
         "notify[0].to: needs at least one address: the rollout owner's"),
        ({"kind": "email", "smtp_url": "smtp://mail", "to": ["b@example.com"]}, "notify[0].from: required field is missing"),
    ],
)
def test_each_mistake_is_named_at_its_field(notifier: dict[str, Any], expected: str) -> None:
    found = problems(notifier)
    assert any(p.startswith(expected) for p in found), found


def test_a_credential_in_the_smtp_url_is_not_echoed() -> None:
    found = problems({"kind": "email", "smtp_url": "smtp://user:hunter2@mail:25", "from": "a@example.com", "to": ["b@example.com"]})
    assert not any("hunter2" in p for p in found)
