"""Alembic environment for the audit store.

`AuditStore.migrate()` passes an open connection in `config.attributes["connection"]`.
Run by hand (`alembic -x url=... upgrade head` with a config whose script_location is
this directory), `-x url=` or `ROLLOUT_DB_URL` names the database; async URLs work.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

config = context.config
VERSION_TABLE = config.get_main_option("version_table") or "rollout_audit_alembic_version"


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


def _run_offline(url: str) -> None:
    context.configure(url=url, literal_binds=True, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    from activities.audit_store import AuditStore

    store = AuditStore.from_url(url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await store.close()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("ROLLOUT_DB_URL") or ""
    if not url:
        from activities.audit_store import default_url

        url = default_url()
    if context.is_offline_mode():
        _run_offline(url)
    else:
        asyncio.run(_run_async(url))
