"""Least-privilege Redis ACL users for the pipeline.

A stage needs a dozen stream commands on the keys under its stream prefix and
nothing else: no ``FLUSHALL``, ``CONFIG``, ``KEYS`` or ``DEBUG``, no keys of
other tenants. :func:`acl_rule` writes that user as one ``users.acl`` line (or
an ``ACL SETUSER`` argument list) with the password stored as its SHA-256, so
the ACL file can sit in a ConfigMap without holding the secret.

Print a line for a deployment::

    python -m visionpipe.broker.redis_acl --user decode --password-file /run/secrets/redis --prefix vp
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

# Exactly what redis_streams.RedisBroker sends. Scripts are checked command by command, so what the settle,
# touch and admit scripts call (EXISTS, SET of once-keys, XINFO, XPENDING, XTRIM, XCLAIM, MEMORY USAGE, and TIME
# for the dead letters' retention) is listed as well as EVALSHA. The once-keys live under the stream prefix, so
# the key pattern covers them.
STREAM_COMMANDS = (
    "xadd",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xclaim",
    "xpending",
    "xinfo|groups",
    "xlen",
    "xrange",
    "xrevrange",
    "xtrim",
    "xgroup|create",
    "exists",
    "set",
    "memory|usage",
    "time",
    "evalsha",
    "script|load",
)
# Connection housekeeping redis-py sends on connect, and health checks. (It also tries CLIENT SETINFO, Redis 7.2+,
# and ignores a refusal; naming it here would make Redis 7.0 reject the whole ACL file.)
CONNECTION_COMMANDS = ("ping", "hello", "client|setname")
# Stream deletion is for load generators and tests cleaning up after themselves, and entry deletion for
# `visionpipe dlq replay` removing what it moved; not for stages.
ADMIN_COMMANDS = ("del", "xdel")


def acl_args(user: str, password: str, prefix: str, *, admin: bool = False) -> list[str]:
    """``ACL SETUSER`` arguments: the user, on, its password hash, its key pattern and commands."""
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"bad ACL user name {user!r}")
    if not password:
        raise ValueError("an ACL user needs a password")
    digest = hashlib.sha256(password.encode()).hexdigest()
    pattern = f"~{prefix}.*" if prefix else "~*"
    commands = STREAM_COMMANDS + CONNECTION_COMMANDS + (ADMIN_COMMANDS if admin else ())
    return [user, "reset", "on", f"#{digest}", "resetchannels", pattern, "-@all", *(f"+{c}" for c in commands)]


def acl_rule(user: str, password: str, prefix: str, *, admin: bool = False) -> str:
    """One ``users.acl`` line (``user <name> ...``) for ``redis-server --aclfile``."""
    args = acl_args(user, password, prefix, admin=admin)
    return " ".join(["user", args[0], *[a for a in args[1:] if a != "reset"]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a least-privilege users.acl line for a visionpipe service.")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True, help="file holding the password")
    parser.add_argument("--prefix", default="vp", help="stream prefix (streams.prefix setting)")
    parser.add_argument("--admin", action="store_true", help="also allow deleting streams (load generator)")
    args = parser.parse_args(argv)
    print(acl_rule(args.user, args.password_file.read_text().strip(), args.prefix, admin=args.admin))


if __name__ == "__main__":
    main()
