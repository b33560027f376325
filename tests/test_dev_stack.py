"""`rollout dev`: starts the embedded stack, accepts connections, survives a restart, leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from temporalio.client import Client

from worker.devstack import free_port

ROLLOUT = str(Path(sys.executable).parent / "rollout")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-reply-agent.yaml"


def _start(db: Path, ports: dict[str, int], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ROLLOUT, "dev", "--port", str(ports["port"]), "--ui-port", str(ports["ui"]),
         "--http-port", str(ports["http"]), "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _wait_ready(proc: subprocess.Popen[str], within: float = 60) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if "Worker polling" in line:
            return seen
    proc.kill()
    proc.wait()
    raise AssertionError(f"rollout dev did not start:\n{seen}")


def _server_pids(db: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"--db-filename {db}"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


async def test_dev_starts_persists_and_stops_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "temporal.db"
    ports = {"port": free_port(), "ui": free_port(), "http": free_port()}
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(tmp_path), "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['port']}",
           "ROLLOUT_RECEIVER_TOKEN": "t0ken"}
    env.pop("ROLLOUT_DB_URL", None)
    proc = _start(db, ports, env)
    try:
        out = _wait_ready(proc)
        assert f"http://127.0.0.1:{ports['ui']}" in out
        client = await Client.connect(f"127.0.0.1:{ports['port']}")
        assert await client.service_client.check_health()
        started = subprocess.run([ROLLOUT, "start", str(EXAMPLE), "--as", "alice@example.com"],
                                 capture_output=True, text=True, env=env)
        assert started.returncode == 0, started.stderr
        # the stock `temporal` CLI sees the search attributes and can hold the rollout by signal
        temporal = str(Path(sys.executable).parent / "temporal")
        addr = ["--address", f"127.0.0.1:{ports['port']}"]
        listed = subprocess.run([temporal, "workflow", "list", *addr, "--query",
                                 "RolloutStatus='awaiting_approval' AND RolloutPlan='support-reply-agent'"],
                                capture_output=True, text=True, env=env)
        assert listed.returncode == 0 and "rollout-support-reply-agent" in listed.stdout, listed.stderr
        sig = subprocess.run([temporal, "workflow", "signal", *addr, "--workflow-id", "rollout-support-reply-agent",
                              "--name", "hold", "--input", '{"actor": "erin@example.com", "reason": "from the stock CLI"}'],
                             capture_output=True, text=True, env=env)
        assert sig.returncode == 0, sig.stderr
        held = ""
        for _ in range(50):
            held = subprocess.run([temporal, "workflow", "list", *addr, "--query", "RolloutStatus='held'"],
                                  capture_output=True, text=True, env=env).stdout
            if "rollout-support-reply-agent" in held:
                break
            await asyncio.sleep(0.2)
        assert "rollout-support-reply-agent" in held
        # a port in use is refused with a clear message, exit 2, nothing started
        clash = subprocess.run([ROLLOUT, "dev", "--port", str(ports["port"]), "--db", str(tmp_path / "x.db")],
                               capture_output=True, text=True, env=env, timeout=60)
        assert clash.returncode == 2 and "already in use" in clash.stderr
    finally:
        assert _stop(proc) == 0
    await asyncio.sleep(0.5)
    assert _server_pids(db) == [], "rollout dev left its Temporal server running"

    # a second `rollout dev` on the same --db sees the earlier rollout
    proc = _start(db, ports, env)
    try:
        _wait_ready(proc)
        listed = subprocess.run([ROLLOUT, "list", "--json"], capture_output=True, text=True, env=env)
        assert listed.returncode == 0 and "rollout-support-reply-agent" in listed.stdout
        status = subprocess.run([ROLLOUT, "status", "support-reply-agent"], capture_output=True, text=True, env=env)
        assert status.returncode == 0 and "held" in status.stdout and "from the stock CLI" in status.stdout
    finally:
        assert _stop(proc) == 0
    assert _server_pids(db) == []


def test_unreachable_temporal_is_exit_3() -> None:
    env = {**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    r = subprocess.run([ROLLOUT, "status", "anything"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "cannot reach Temporal" in r.stderr
