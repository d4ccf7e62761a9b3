"""Operator commands that act on the database directly.

python -m app.admin keys create --tenant NAME [--name LABEL]   # prints the key once
python -m app.admin keys list [--tenant NAME]
python -m app.admin keys revoke KEY_ID_OR_PREFIX
"""

from __future__ import annotations

import argparse
import sys

from app.config import get_settings
from app.keys import AmbiguousKeyError, create_key, list_keys, revoke_key
from app.store import migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.admin", description=__doc__)
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="API keys of tenants").add_subparsers(
        dest="command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--tenant")
    revoke = keys.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    url = get_settings().database_url
    migrate.upgrade(url)
    if args.command == "create":
        try:
            key, info = create_key(url, args.tenant, args.name)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(key)
        print(
            f"created key {info.id} ({info.prefix}…) for tenant {info.tenant!r}; "
            "store it now: it is not shown again",
            file=sys.stderr,
        )
        return 0
    if args.command == "list":
        for k in list_keys(url, args.tenant):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{k.id}  {k.prefix}…  tenant={k.tenant}  {state}  {k.name}".rstrip())
        return 0
    try:
        revoked = revoke_key(url, args.key_id)
    except AmbiguousKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if revoked:
        print(f"revoked {args.key_id}")
        return 0
    print(f"error: no active key {args.key_id!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
