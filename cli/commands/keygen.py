"""`rollout keygen --as ID [--out FILE]`: an Ed25519 key pair for signed approvals.

The private key goes to a file created with mode 0600 (never to the terminal): by default
`<state dir>/keys/<identity>.key`. Only the public key (for the plan's `public_keys`)
and the file's path are printed. An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path
from typing import Any

from cli.commands.common import actor_of, add_actor, add_json, print_json
from rollout.errors import UsageError
from rollout.statedir import key_file_name, state_dir_from


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signed approvals (private key to a 0600 file)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE",
        help="where to write the private key (default: $ROLLOUT_STATE_DIR/keys/<identity>.key)",
    )
    add_actor(p)
    add_json(p)
    p.set_defaults(handler=cmd_keygen)


def default_key_path(identity: str) -> Path:
    return state_dir_from(os.environ, Path.home()).absolute() / "keys" / key_file_name(identity)


def write_private(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the start (no window where others may read it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists; keygen never overwrites a key (pass --out FILE)") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    identity = actor_of(args)
    out: Path = (args.out or default_key_path(identity)).absolute()
    key = Ed25519PrivateKey.generate()
    priv = base64.b64encode(
        key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    ).decode()
    pub = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    write_private(out, priv + "\n")
    if args.json:
        print_json({"identity": identity, "public_key": pub, "private_key_file": str(out)})
    else:
        print(f"public key of {identity} (put it in the plan):")
        print(f"  public_keys: {{{identity}: {pub}}}")
        print(f"private key written to {out} (mode 0600); sign with: rollout approve ... --key {out}")
    return 0
