"""Connecting to Temporal with Temporal's own environment configuration.

TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS settings and profiles
(TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE) work exactly as for the `temporal` CLI.
"""

from __future__ import annotations

import os
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from rollout.errors import ConnectionFailed, UsageError

TASK_QUEUE_DEFAULT = "rollouts"
WORKFLOW_TYPE = "StagedRollout"


def task_queue() -> str:
    return os.environ.get("ROLLOUT_TASK_QUEUE", TASK_QUEUE_DEFAULT)


def connect_config() -> dict[str, Any]:
    try:
        cfg: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    except Exception as exc:  # bad config file or profile
        raise UsageError(f"cannot read Temporal client configuration: {exc}") from None
    cfg.setdefault("target_host", "localhost:7233")
    if not cfg.get("target_host"):
        cfg["target_host"] = "localhost:7233"
    return cfg


async def connect(identity: str | None = None, runtime: Runtime | None = None) -> Client:
    """Connect with the pydantic data converter; ConnectionFailed (exit 3) if unreachable."""
    cfg = connect_config()
    if identity:
        cfg["identity"] = identity
    if runtime is not None:
        cfg["runtime"] = runtime
    try:
        return await Client.connect(**cfg, data_converter=pydantic_data_converter)
    except Exception as exc:
        raise ConnectionFailed(
            f"cannot reach Temporal at {cfg.get('target_host')} (namespace {cfg.get('namespace', 'default')}): "
            f"{_reason(exc)}. Start one with `rollout dev` or set TEMPORAL_ADDRESS."
        ) from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    for needle, words in (
        ("ConnectionRefused", "connection refused"),
        ("dns error", "unknown host"),
        ("timed out", "timed out"),
        ("certificate", "TLS certificate problem"),
    ):
        if needle.lower() in text.lower():
            return words
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:160]
