"""The rollout's search attributes (all Keyword), a contract with `temporal workflow list`."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

STAGE = SearchAttributeKey.for_keyword("RolloutStage")
STATUS = SearchAttributeKey.for_keyword("RolloutStatus")
OWNER = SearchAttributeKey.for_keyword("RolloutOwner")
PLAN = SearchAttributeKey.for_keyword("RolloutPlan")

ALL = (STAGE, STATUS, OWNER, PLAN)
