"""Replay committed histories: a workflow change that would break running rollouts fails here.

Histories are recorded from the scenario tests with
`ROLLOUT_RECORD_HISTORIES=1 pytest tests/test_workflow_scenarios.py` and committed.
Re-record them only for a change that is deliberately not replay-compatible (and
then version the workflow with `workflow.patched` instead, when rollouts are running).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.staged_rollout import StagedRollout

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_committed() -> None:
    assert len(HISTORIES) >= 10, "tests/histories/ should hold the recorded scenario histories"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[StagedRollout], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
