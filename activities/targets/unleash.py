"""`unleash` target (being written)."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from activities.targets.base import Target, misconfigured, parse_config
from rollout.models import TargetChange, TargetResult
from rollout.plan import UnleashTarget as UnleashTargetConfig


class UnleashTarget(Target):
    kind: ClassVar[str] = "unleash"

    def __init__(self, config: UnleashTargetConfig) -> None:
        self.config = config

    @classmethod
    def from_block(cls, target: dict[str, Any]) -> Self:
        return cls(parse_config(UnleashTargetConfig, target))

    async def apply(self, change: TargetChange) -> TargetResult:
        raise misconfigured("the unleash target is not available yet")
