"""`rollout dev`: starts the embedded stack, accepts connections, survives a restart, leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from worker.devstack import free_port, free_ports, port_free

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
    out = subprocess.run(["pgrep", "-f", "--", f"--db-filename {db}"], capture_output=True, text=True)
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


def _ports_free(ports: dict[str, int]) -> bool:
    return all(port_free(p) for p in ports.values())


async def test_sigkill_of_rollout_dev_leaves_no_process_and_no_port_and_it_starts_again(tmp_path: Path) -> None:
    db = tmp_path / "temporal.db"
    ports = {"port": free_port(), "ui": free_port(), "http": free_port()}
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(tmp_path), "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['port']}",
           "ROLLOUT_RECEIVER_TOKEN": "t0ken"}
    env.pop("ROLLOUT_DB_URL", None)
    proc = _start(db, ports, env)
    try:
        _wait_ready(proc)
        assert len(_server_pids(db)) == 1
        started = subprocess.run([ROLLOUT, "start", str(EXAMPLE), "--as", "alice@example.com"],
                                 capture_output=True, text=True, env=env, timeout=60)
        assert started.returncode == 0, started.stderr
        proc.kill()  # SIGKILL: no handler of ours runs
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:  # an assertion failed before the kill: leave nothing running
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    for _ in range(100):  # the kernel sends the dev server SIGTERM; give it time to close its database
        if not _server_pids(db) and _ports_free(ports):
            break
        await asyncio.sleep(0.2)
    assert _server_pids(db) == [], "the Temporal dev server outlived a SIGKILLed rollout dev"
    assert _ports_free(ports), "a port of rollout dev is still held after SIGKILL"

    proc = _start(db, ports, env)
    try:
        _wait_ready(proc)
        status = subprocess.run([ROLLOUT, "status", "support-reply-agent", "--json"], capture_output=True,
                                text=True, env=env, timeout=60)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "awaiting_approval"
        aborted = subprocess.run([ROLLOUT, "abort", "support-reply-agent", "--reason", "test done",
                                  "--as", "alice@example.com"], capture_output=True, text=True, env=env, timeout=60)
        assert aborted.returncode == 0, aborted.stderr
    finally:
        assert _stop(proc) == 0
    assert _server_pids(db) == []


@pytest.mark.parametrize("option", ["--http-port", "--port", "--ui-port"])
def test_a_taken_port_is_exit_2_naming_the_port_and_its_option(tmp_path: Path, option: str) -> None:
    ports = dict(zip(("--port", "--ui-port", "--http-port"), free_ports(3), strict=True))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports[option] = taken.getsockname()[1]
        env = {**os.environ, "ROLLOUT_STATE_DIR": str(tmp_path), "ROLLOUT_RECEIVER_TOKEN": "t0ken"}
        env.pop("ROLLOUT_DB_URL", None)
        argv = [x for kv in ports.items() for x in (kv[0], str(kv[1]))]
        r = subprocess.run([ROLLOUT, "dev", *argv, "--db", str(tmp_path / "t.db")],
                           capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"port {ports[option]} ({option}) is already in use" in r.stderr
    assert "Worker polling" not in r.stdout
    assert _server_pids(tmp_path / "t.db") == []


async def test_a_component_that_stops_stops_rollout_dev_with_a_message(tmp_path: Path) -> None:
    db = tmp_path / "temporal.db"
    ports = {"port": free_port(), "ui": free_port(), "http": free_port()}
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(tmp_path), "ROLLOUT_RECEIVER_TOKEN": "t0ken"}
    env.pop("ROLLOUT_DB_URL", None)
    proc = _start(db, ports, env)
    try:
        _wait_ready(proc)
        [server] = _server_pids(db)
        os.kill(server, signal.SIGKILL)  # the dev server dies under rollout dev
        code = proc.wait(timeout=60)
        assert proc.stdout is not None
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 1
    assert "the Temporal dev server exited" in out and "stopping everything" in out
    assert _ports_free(ports)


def test_ctrl_c_stops_rollout_dev_with_exit_130(tmp_path: Path) -> None:
    db = tmp_path / "temporal.db"
    ports = {"port": free_port(), "ui": free_port(), "http": free_port()}
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(tmp_path), "ROLLOUT_RECEIVER_TOKEN": "t0ken"}
    env.pop("ROLLOUT_DB_URL", None)
    proc = _start(db, ports, env)
    try:
        _wait_ready(proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert _server_pids(db) == []


def _exit_code_on(sig: int, args: list[str], env: dict[str, str], ready: str) -> int:
    """Run `rollout ARGS` until its stderr says `ready`, send `sig`, return its exit code."""
    proc = subprocess.Popen([ROLLOUT, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        seen = ""
        while ready not in seen:
            line = proc.stderr.readline()
            assert line, f"rollout {args[0]} stopped before it was ready:\n{seen}"
            seen += line
        time.sleep(0.5)  # serving / polling
        proc.send_signal(sig)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_receiver_exits_130_on_ctrl_c_and_0_on_sigterm(dev_env: Any, sig: int, code: int) -> None:
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLOUT_RECEIVER_TOKEN": "t0ken"}
    assert _exit_code_on(sig, ["receiver", "--port", str(free_port())], env, "Alertmanager receiver on") == code


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_worker_exits_130_on_ctrl_c_and_0_on_sigterm(dev_env: Any, tmp_path: Path, sig: int, code: int) -> None:
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLOUT_TASK_QUEUE": f"exit-code-{sig}", "ROLLOUT_DB_URL": f"sqlite:///{tmp_path / 'audit.db'}"}
    assert _exit_code_on(sig, ["worker"], env, "worker polling task queue") == code


def test_unreachable_temporal_is_exit_3() -> None:
    env = {**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    r = subprocess.run([ROLLOUT, "status", "anything"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "cannot reach Temporal" in r.stderr


async def test_rollout_worker_runs_a_rollout_and_serves_metrics(dev_env: Any, tmp_path: Path) -> None:
    import httpx

    from rollout.plan import load_plan
    from worker import client as rc

    metrics = f"127.0.0.1:{free_port()}"
    queue = f"worker-{os.getpid()}-{free_port()}"
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLOUT_TASK_QUEUE": queue, "ROLLOUT_DB_URL": f"sqlite:///{tmp_path / 'audit.db'}"}
    proc = subprocess.Popen([ROLLOUT, "worker", "--metrics-address", metrics], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        os.environ["ROLLOUT_TASK_QUEUE"] = queue
        try:
            plan = load_plan(EXAMPLE)
            handle = await rc.start(dev_env.client, plan, workflow_id=f"rollout-{plan.name}-{free_port()}",
                                    started_by=plan.owners.rollout)
        finally:
            del os.environ["ROLLOUT_TASK_QUEUE"]
        await rc.act(dev_env.client, handle.id, "approve",
                     {"actor": "frank@example.com", "stage": "pilot", "role": "engineering"})
        body = ""
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                st = await rc.status(dev_env.client, handle.id)
                if st["status"] == "soaking" and st["window_ends_at"]:
                    try:
                        body = (await http.get(f"http://{metrics}/metrics")).text
                    except httpx.HTTPError:
                        body = ""
                    if "temporal_workflow_completed" in body or "temporal_activity_execution" in body:
                        break
                await asyncio.sleep(0.2)
        assert queue in body and 'activity_type="apply_exposure"' in body, body[:500]
        await rc.act(dev_env.client, handle.id, "abort", {"actor": "alice@example.com", "reason": "test"})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        proc.stderr.close()
