"""The `unleash` target against a real Unleash server on the local PostgreSQL.

The fixture installs `unleash-server` with scripts/install-unleash.sh when it is not
in .tools/unleash yet, creates a fresh database on 127.0.0.1:5432, starts Unleash on a
free port with an admin token from INIT_ADMIN_API_TOKENS, and drops the database after.
When Unleash cannot be installed or started the tests fail and say why (never skip).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.targets import TargetUnavailable, apply_exposure
from rollout.models import TargetChange, TargetResult

REPO = Path(__file__).resolve().parent.parent
UNLEASH_DIR = REPO / ".tools" / "unleash"
TOKEN = f"*:*.rollout-test-{uuid.uuid4().hex}"
TOKEN_ENV = "ROLLOUT_TEST_UNLEASH_TOKEN"


@dataclass
class Unleash:
    url: str
    log: Path

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": TOKEN}, timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _install() -> Path:
    start = UNLEASH_DIR / "start.js"
    if not (UNLEASH_DIR / "node_modules" / "unleash-server" / "package.json").exists() or not start.exists():
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-unleash.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                "unleash-server could not be installed by scripts/install-unleash.sh "
                f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}",
                pytrace=False,
            )
    return start


@pytest.fixture(scope="module")
async def unleash(pg_url: str) -> AsyncIterator[Unleash]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the unleash target tests need Node.js 20", pytrace=False)
    start = await asyncio.to_thread(_install)
    pg = urlsplit(pg_url.replace("+asyncpg", ""))
    host, port, user = pg.hostname or "127.0.0.1", pg.port or 5432, pg.username or "postgres"
    database = f"rollout_unleash_test_{os.getpid()}"
    try:
        admin = await asyncpg.connect(host=host, port=port, user=user, database="postgres")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL on {host}:{port} is not reachable for the unleash tests: {exc}", pytrace=False)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()

    http_port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="unleash-test-")) / "unleash.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(log.parent)),
        "PORT": str(http_port),
        "DATABASE_URL": f"postgres://{user}@{host}:{port}/{database}",
        "DATABASE_SSL": "false",
        "INIT_ADMIN_API_TOKENS": TOKEN,
        "LOG_LEVEL": "warn",
        "CHECK_VERSION": "false",
        "SEND_TELEMETRY": "false",
        "NODE_NO_WARNINGS": "1",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            node, str(start), cwd=UNLEASH_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(240):
                if proc.returncode is not None:
                    pytest.fail(
                        f"unleash-server exited with {proc.returncode} while starting: "
                        f"{log.read_text(errors='replace')[-2000:]}",
                        pytrace=False,
                    )
                try:
                    ready = await client.get(f"{url}/api/admin/projects", headers={"Authorization": TOKEN})
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                pytest.fail(
                    f"unleash-server did not become ready in 60s: {log.read_text(errors='replace')[-2000:]}",
                    pytrace=False,
                )
        yield Unleash(url, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        admin = await asyncpg.connect(host=host, port=port, user=user, database="postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
        shutil.rmtree(log.parent, ignore_errors=True)


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
    async with u.admin() as client:
        response = await client.get(f"/api/admin/projects/default/features/{feature}")
    response.raise_for_status()
    [development] = [e for e in response.json()["environments"] if e["name"] == "development"]
    return dict(development)


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
