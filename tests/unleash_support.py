"""A real Unleash server for tests, on the local PostgreSQL (shared by the unleash test modules).

`unleash_server(pg_url)` installs `unleash-server` with scripts/install-unleash.sh when it
is not in .tools/unleash yet, creates a fresh database on 127.0.0.1:5432, starts Unleash
on a free port with an admin token from INIT_ADMIN_API_TOKENS, and drops the database
after. When Unleash cannot be installed or started the test fails and says why (never
skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

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


def free_port() -> int:
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


@contextlib.asynccontextmanager
async def unleash_server(pg_url: str, database: str | None = None) -> AsyncIterator[Unleash]:
    """A running unleash-server on a fresh database (default `rollout_unleash_test_<pid>`)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the unleash target tests need Node.js 20", pytrace=False)
    start = await asyncio.to_thread(_install)
    pg = urlsplit(pg_url.replace("+asyncpg", ""))
    host, port, user = pg.hostname or "127.0.0.1", pg.port or 5432, pg.username or "postgres"
    database = database or f"rollout_unleash_test_{os.getpid()}"
    try:
        admin = await asyncpg.connect(host=host, port=port, user=user, database="postgres")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL on {host}:{port} is not reachable for the unleash tests: {exc}", pytrace=False)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()

    http_port = free_port()
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


async def read_back(u: Unleash, feature: str, environment: str = "development") -> dict[str, Any]:
    """The feature's environment as the admin API shows it (enabled, strategies)."""
    async with u.admin() as client:
        response = await client.get(f"/api/admin/projects/default/features/{feature}")
    response.raise_for_status()
    [found] = [e for e in response.json()["environments"] if e["name"] == environment]
    return dict(found)
