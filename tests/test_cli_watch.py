"""`rollout watch` in a pseudo-terminal (redrawn in place) and piped (one line per change);
`rollout approve` without --stage. Real Temporal dev server, real worker, the real CLI process."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from activities.audit_store import AuditStore
from tests import plans
from tests.plans import ENG1, ENG2, OWNER, RISK
from tests.test_cli_rollouts import cli, short_plan, wait_status

ROLLOUT = str(Path(sys.executable).parent / "rollout")


class PtyReader:
    """Everything a process writes to the terminal we gave it, collected by a thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self) -> str:
        with self.lock:
            return self.data.decode(errors="replace")

    async def wait_for(self, needle: str, within: float = 30) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if needle in self.text():
                return self.text()
            await asyncio.sleep(0.1)
        raise AssertionError(f"{needle!r} never shown; the terminal got:\n{self.text()[-3000:]}")


async def test_watch_in_a_terminal_redraws_one_view_in_place_and_ctrl_c_exits_130(
    cli_worker: AuditStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"watch-{uuid.uuid4().hex[:6]}"
    assert (await cli("start", str(short_plan(tmp_path, name)), "--as", OWNER, capsys=capsys))[0] == 0
    master, slave = os.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="160", LINES="40")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([ROLLOUT, "watch", name, "--interval", "0.2"], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    reader = PtyReader(master)
    try:
        await reader.wait_for("☐ engineering")
        assert "○ limited-25" in reader.text() and "● pilot" in reader.text()
        assert (await cli("approve", name, "--role", "engineering", "--as", ENG1, capsys=capsys))[0] == 0
        await wait_status(name, capsys, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
        await reader.wait_for("pilot's scope in force")
        assert (await cli("approve", name, "--role", "engineering", "--as", ENG2, capsys=capsys))[0] == 0
        shown = await reader.wait_for("☑ engineering (gina@example.com)")
        assert "☐ operations" in shown[shown.rindex("☑ engineering"):]
        assert "✔ pilot" in shown or "◐ pilot" in shown
        # redrawn in place: rich moves the cursor up and erases lines instead of scrolling
        assert "\x1b[1A" in shown or "\x1b[2K" in shown
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.to_thread(proc.wait, 30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.thread.join(5)
        os.close(master)
    assert (await cli("abort", name, "--reason", "test done", "--as", OWNER, capsys=capsys))[0] == 0


async def test_watch_piped_prints_one_line_per_change_and_returns_at_a_terminal_status(
    cli_worker: AuditStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"pipe-{uuid.uuid4().hex[:6]}"
    plan = plans.plan_dict(name)
    for stage in plan["stages"]:
        stage["window"] = "10m"  # soaking lasts until the abort, however slow this machine is
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert (await cli("start", str(path), "--as", OWNER, capsys=capsys))[0] == 0
    proc = subprocess.Popen([ROLLOUT, "watch", name, "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, TERM="xterm-256color"))
    assert proc.stdout is not None
    try:
        first = await asyncio.to_thread(proc.stdout.readline)
        await asyncio.sleep(1.0)  # several reads of an unchanged rollout: still one line
        assert (await cli("approve", name, "--role", "engineering", "--as", ENG1, capsys=capsys))[0] == 0
        await wait_status(name, capsys, lambda s: s["status"] == "soaking")
        # abort only once watch has printed the soaking line: a loaded machine may poll slowly
        seen = first
        while "soaking pilot" not in seen:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line, f"watch ended before showing the soaking rollout: {seen}"
            seen += line
        assert (await cli("abort", name, "--reason", "seen enough", "--as", OWNER, capsys=capsys))[0] == 0
        rest, err = await asyncio.to_thread(proc.communicate, timeout=30)
        out = seen + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "\x1b[" not in out  # no terminal control codes when piped
    lines = out.splitlines()
    bodies = [line.split("] ", 1)[1] for line in lines]
    assert all(a != b for a, b in itertools.pairwise(bodies)), "a line was printed without a change"
    assert "awaiting approval of pilot" in bodies[0]
    assert any("soaking pilot" in b for b in bodies), out
    assert "aborted" in bodies[-1] and "PAGED" not in bodies[-1]
    assert len(lines) <= 6, out


async def test_approve_without_stage_approves_the_one_stage_awaited(
    cli_worker: AuditStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"nostage-{uuid.uuid4().hex[:6]}"
    assert (await cli("start", str(short_plan(tmp_path, name)), "--as", OWNER, capsys=capsys))[0] == 0
    await wait_status(name, capsys, lambda s: s["status"] == "awaiting_approval")
    code, _, err = await cli("approve", name, "--role", "engineering", "--as", ENG1, capsys=capsys)
    assert code == 0, err
    st = await wait_status(name, capsys, lambda s: s["exposure_stage"] == "pilot")
    assert st["approvals"]["stage"] in ("pilot", "limited-25")
    if st["status"] == "soaking":  # nothing awaited while soaking: refused, naming why
        code, _, err = await cli("approve", name, "--role", "engineering", "--as", ENG2, capsys=capsys)
        assert code == 1 and "awaits no stage approval" in err and "--stage" in err
    await wait_status(name, capsys, lambda s: s["stage"] == "limited-25" and s["status"] == "awaiting_approval")
    # a hold that interrupted the wait keeps limited-25 the awaited stage
    assert (await cli("hold", name, "--reason", "checking", "--as", RISK, capsys=capsys))[0] == 0
    code, _, err = await cli("approve", name, "--role", "engineering", "--as", ENG2, capsys=capsys)
    assert code == 0, err
    st = await wait_status(name, capsys, lambda s: "engineering" in s["approvals"]["given"])
    assert st["approvals"]["stage"] == "limited-25" and st["status"] == "held"
    assert (await cli("abort", name, "--reason", "test done", "--as", OWNER, capsys=capsys))[0] == 0
