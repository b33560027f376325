"""One error hierarchy for the library and the CLI.

Each error carries the CLI exit code it maps to, so the CLI never has to guess:
0 done, 1 refused by the rollout, 2 bad input or usage, 3 cannot reach Temporal.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(RolloutError):
    """Bad input or usage: a flag, an identity, a file that cannot be read."""

    exit_code = 2


class PlanError(UsageError):
    """A plan that does not validate. `problems` holds one `path: message` per line."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        count = len(problems)
        head = f"{where}invalid plan ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class RefusedError(RolloutError):
    """The rollout refused the action (self-approval, wrong role, closed rollout...)."""

    exit_code = 1


class NotFoundError(RolloutError):
    """No rollout with that id."""

    exit_code = 1


class ConnectionFailed(RolloutError):
    """Temporal (or another required service) cannot be reached."""

    exit_code = 3
