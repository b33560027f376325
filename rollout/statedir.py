"""Where the controller keeps local state: one directory, whatever the working directory.

`ROLLOUT_STATE_DIR` when set, else `$XDG_STATE_HOME/rollout`, else `~/.local/state/rollout`.
Pure: the environment and the home directory are arguments (callers pass `os.environ`
and `Path.home()`), so the rule is tested without touching either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ENV = "ROLLOUT_STATE_DIR"


def state_dir_from(env: Mapping[str, str], home: Path) -> Path:
    """The state directory for this environment (absolute when `home` is)."""
    explicit = (env.get(ENV) or "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = (env.get("XDG_STATE_HOME") or "").strip()
    # the XDG spec: a relative XDG_STATE_HOME is invalid and must be ignored
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "rollout"
    return home / ".local" / "state" / "rollout"


def key_file_name(identity: str) -> str:
    """A file name for an identity's private key: `<identity>.key`, path separators removed."""
    safe = "".join(c if c.isalnum() or c in "@._-+" else "_" for c in identity).lstrip(".")
    return f"{safe or 'key'}.key"
