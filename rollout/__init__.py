"""Staged rollout controller: domain model, policy and CLI."""

__version__ = "0.1.0"
