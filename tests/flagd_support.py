"""The real flagd evaluator (OpenFeature SDK + flagd in-process provider) reading a flag file."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType


def flagd_clients(prefix: str) -> Iterator[Callable[[Path], OpenFeatureClient]]:
    """Body of a fixture: yields `start(path)`, which starts an in-process provider watching
    the file and returns a client for it; every provider is shut down afterwards."""
    providers: list[FlagdProvider] = []

    def start(path: Path) -> OpenFeatureClient:
        provider = FlagdProvider(
            resolver_type=ResolverType.IN_PROCESS, offline_flag_source_path=str(path), deadline_ms=100
        )
        providers.append(provider)
        domain = f"{prefix}-{uuid.uuid4().hex[:8]}"
        api.set_provider_and_wait(provider, domain)
        return api.get_client(domain)

    yield start
    for provider in providers:
        provider.shutdown()
