"""The `unleash` target against a real Unleash server on the local PostgreSQL.

The fixture (tests/unleash_support.py) installs `unleash-server` with scripts/install-unleash.sh when it is not
in .tools/unleash yet, creates a fresh database on 127.0.0.1:5432, starts Unleash on a
free port with an admin token from INIT_ADMIN_API_TOKENS, and drops the database after.
When Unleash cannot be installed or started the tests fail and say why (never skip).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.targets import TargetUnavailable, apply_exposure
from rollout.models import TargetChange, TargetResult
from tests import unleash_support
from tests.unleash_support import TOKEN, TOKEN_ENV, Unleash, unleash_server
from tests.unleash_support import free_port as _free_port


@pytest.fixture(scope="module")
async def unleash(pg_url: str) -> AsyncIterator[Unleash]:
    async with unleash_server(pg_url) as server:
        yield server


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN_ENV


def change(
    url: str, feature: str, seq: int, percent: float, segments: list[str] | None, authority: dict[str, str]
) -> TargetChange:
    return TargetChange(
        rollout_id=f"rollout-{feature}",
        plan_name=feature,
        seq=seq,
        idempotency_key=f"rollout-{feature}:{seq}",
        kind="promote" if percent else "rollback",
        stage=f"stage-{seq}" if percent else None,
        percent=percent,
        segments=segments,
        authority=authority,
        plan_hash="ef" * 32,
        reason="test",
        decided_at=datetime(2030, 1, 1, tzinfo=UTC),
        target={"kind": "unleash", "url": url, "token_env": TOKEN_ENV, "feature": feature},
    )


async def apply(c: TargetChange) -> TargetResult:
    return await ActivityEnvironment().run(apply_exposure, c)


async def read_back(u: Unleash, feature: str) -> dict[str, Any]:
    return await unleash_support.read_back(u, feature)


async def test_two_stages_and_a_rollback(unleash: Unleash, token_env: str) -> None:
    feature = f"support-agent-{uuid.uuid4().hex[:6]}"
    async with unleash.admin() as client:  # the flag exists already, created by its owner
        created = await client.post(
            "/api/admin/projects/default/features", json={"name": feature, "type": "release"}
        )
        assert created.status_code == 201, created.text

    pilot = change(unleash.url, feature, 1, 5, ["internal"], {"read": "auto", "refund": "forbid"})
    result = await apply(pilot)
    assert result.applied and "rollout 5%" in result.detail
    env = await read_back(unleash, feature)
    assert env["enabled"] is True
    [strategy] = env["strategies"]
    assert strategy["name"] == "flexibleRollout" and strategy["title"] == "rollout-controller"
    assert strategy["parameters"]["rollout"] == "5"
    assert strategy["parameters"]["groupId"] == feature
    assert strategy["parameters"]["rolloutKey"] == pilot.idempotency_key
    assert [(c["contextName"], c["operator"], c["values"]) for c in strategy["constraints"]] == [
        ("segment", "IN", ["internal"])
    ]
    assert strategy["variants"][0]["payload"] == {"type": "json", "value": '{"read": "auto", "refund": "forbid"}'}

    limited = change(unleash.url, feature, 2, 25, None, {"read": "auto", "refund": "review"})
    assert (await apply(limited)).applied
    again = await apply(limited)  # a retried activity: no second write
    assert "already at #2" in again.detail
    late = await apply(pilot)  # an older change arriving late does not undo the newer one
    assert "already at #2" in late.detail
    env = await read_back(unleash, feature)
    [strategy] = env["strategies"]
    assert strategy["parameters"]["rollout"] == "25"
    assert strategy["constraints"] == []
    assert env["enabled"] is True

    rollback = change(unleash.url, feature, 3, 0, None, {})
    assert (await apply(rollback)).applied
    env = await read_back(unleash, feature)
    [strategy] = env["strategies"]
    assert strategy["parameters"]["rollout"] == "0"
    assert env["enabled"] is False


async def test_creates_a_missing_flag_and_rounds_down(unleash: Unleash, token_env: str) -> None:
    feature = f"model-v2-{uuid.uuid4().hex[:6]}"
    result = await apply(change(unleash.url, feature, 1, 2.5, None, {"answer": "review"}))
    assert "created the flag" in result.detail
    env = await read_back(unleash, feature)
    assert env["strategies"][0]["parameters"]["rollout"] == "2"  # never more than the scope


async def test_bad_token_is_a_rejection_and_missing_token_env_is_misconfigured(
    unleash: Unleash, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "*:*.not-the-token")
    with pytest.raises(ApplicationError) as err:
        await apply(change(unleash.url, "any-flag", 1, 5, None, {}))
    assert err.value.type == "TargetRejected" and err.value.non_retryable
    assert "not-the-token" not in str(err.value)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ApplicationError) as err:
        await apply(change(unleash.url, "any-flag", 1, 5, None, {}))
    assert err.value.type == "TargetMisconfigured" and TOKEN_ENV in str(err.value)


async def test_unreachable_unleash_is_transient(token_env: str) -> None:
    with pytest.raises(TargetUnavailable, match="unreachable"):
        await apply(change(f"http://127.0.0.1:{_free_port()}", "any-flag", 1, 5, None, {}))
