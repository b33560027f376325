"""The CLI as a newcomer meets it: descriptions, --version, completion, input checks, keys, state dir."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import build_parser, main, subcommands
from rollout.status_view import STATUSES

ROLLOUT = str(Path(sys.executable).parent / "rollout")
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "support-reply-agent.yaml"


def run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ROLLOUT, *argv], capture_output=True, text=True, env=env or dict(os.environ),
                          cwd=cwd, timeout=60)


def test_every_command_and_subcommand_has_a_description_and_a_help_line() -> None:
    parser = build_parser()
    seen = list(subcommands(parser))
    names = {name for name, _, _ in seen}
    assert {"rollout start", "rollout watch", "rollout keygen", "rollout plan validate", "rollout completion",
            "rollout dev", "rollout list"} <= names
    for name, help_line, sub in seen:
        assert help_line.strip(), f"{name} has no help line in `rollout --help`"
        assert sub.description and sub.description.strip(), f"{name} has no description in its --help"


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rollout {version('staged-rollout')}"


def test_list_status_outside_the_seven_statuses_is_exit_2_naming_them() -> None:
    r = run("list", "--status", "banana")
    assert r.returncode == 2
    assert "banana" in r.stderr
    for s in STATUSES:
        assert s in r.stderr
    assert len(STATUSES) == 7


def test_start_without_an_identity_is_exit_2_and_starts_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUT_IDENTITY"}
    env["TEMPORAL_ADDRESS"] = "127.0.0.1:1"  # nothing is contacted: the identity is checked first
    r = run("start", str(EXAMPLE), env=env)
    assert r.returncode == 2
    assert "--as IDENTITY" in r.stderr and "ROLLOUT_IDENTITY" in r.stderr


def test_start_by_someone_else_than_the_rollout_owner_is_exit_1() -> None:
    env = dict(os.environ, TEMPORAL_ADDRESS="127.0.0.1:1")
    r = run("start", str(EXAMPLE), "--as", "mallory@example.com", env=env)
    assert r.returncode == 1 and "only the rollout owner (alice@example.com)" in r.stderr


def test_completion_prints_shell_code_and_completes_commands_and_status_choices(tmp_path: Path) -> None:
    r = run("completion", "bash")
    assert r.returncode == 0 and "complete" in r.stdout and "rollout" in r.stdout
    assert run("completion", "zsh").returncode == 0
    assert run("completion", "fish").returncode == 0

    def complete(line: str) -> list[str]:
        out = tmp_path / "completions"
        env = dict(os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash", COMP_LINE=line,
                   COMP_POINT=str(len(line)), _ARGCOMPLETE_IFS="\n", _ARGCOMPLETE_STDOUT_FILENAME=str(out))
        subprocess.run([ROLLOUT], env=env, capture_output=True, text=True, timeout=60, check=True)
        return out.read_text().split("\n")

    assert {"watch", "start", "status"} <= set(complete("rollout "))
    assert "awaiting_approval" in complete("rollout list --status aw")


def test_keygen_writes_a_0600_key_file_under_the_state_dir_and_prints_only_the_public_key(tmp_path: Path) -> None:
    env = dict(os.environ, ROLLOUT_STATE_DIR=str(tmp_path / "state"))
    r = run("keygen", "--as", "frank@example.com", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    key = tmp_path / "state" / "keys" / "frank@example.com.key"
    assert key.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = key.read_text().strip()
    assert len(base64.b64decode(private)) == 32
    assert private not in r.stdout and private not in r.stderr
    assert str(key) in r.stdout and "public_keys: {frank@example.com: " in r.stdout
    # never overwrites a key
    again = run("keygen", "--as", "frank@example.com", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert key.read_text().strip() == private
    # --out FILE, --json: public key and path only
    out = tmp_path / "elsewhere" / "frank.key"
    r = run("keygen", "--as", "frank@example.com", "--out", str(out), "--json", env=env)
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert set(data) == {"identity", "public_key", "private_key_file"}
    assert data["private_key_file"] == str(out) and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_without_an_identity_is_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUT_IDENTITY"}
    env["ROLLOUT_STATE_DIR"] = str(tmp_path)
    r = run("keygen", env=env)
    assert r.returncode == 2 and "--as IDENTITY" in r.stderr
    assert not (tmp_path / "keys").exists()


async def test_audit_verify_from_another_directory_finds_the_same_database(tmp_path: Path) -> None:
    from activities.audit_store import AuditStore
    from tests.audit_support import make_events

    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUT_DB_URL"}
    env["ROLLOUT_STATE_DIR"] = str(state)
    old = {k: os.environ.get(k) for k in ("ROLLOUT_STATE_DIR", "ROLLOUT_DB_URL")}
    os.environ["ROLLOUT_STATE_DIR"] = str(state)
    os.environ.pop("ROLLOUT_DB_URL", None)
    try:
        store = AuditStore.from_env()
        try:
            await store.append(make_events("rollout-somewhere", 3))
        finally:
            await store.close()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for cwd in (tmp_path, REPO / "docs", Path("/")):
        r = run("audit", "verify", "--json", env=env, cwd=cwd)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ok"] is True and "rollout-somewhere" in r.stdout, (cwd, r.stdout)
    assert not (tmp_path / ".state").exists()
    # another state directory is another database: the rows are not there
    elsewhere = run("audit", "verify", "--json", env=dict(env, ROLLOUT_STATE_DIR=str(tmp_path / "other")))
    assert elsewhere.returncode == 0 and "rollout-somewhere" not in elsewhere.stdout
