"""Operator commands that act on the database directly. Each says first which database it
used (on stderr), so a command run from the wrong directory is noticed at once.

python -m app.admin keys create --tenant NAME [--name LABEL]   # prints the key once
python -m app.admin keys list [--tenant NAME]
python -m app.admin keys revoke KEY_ID_OR_PREFIX
python -m app.admin keys move-jobs --from TENANT --to TENANT   # e.g. keep earlier jobs
python -m app.admin webhooks secret --tenant NAME [--rotate]   # show (made if none) or rotate
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from app.config import get_settings
from app.keys import (
    AmbiguousKeyError,
    count_active_keys,
    count_jobs,
    create_key,
    list_keys,
    move_jobs,
    revoke_key,
)
from app.store import migrate
from app.store.db import make_engine
from app.store.models import DEFAULT_TENANT
from app.store.secret_box import SecretKeyError, secret_box
from app.store.webhooks import rotate_secret, tenant_secret, tenant_secret_exists


def sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite database file, or None (another database, memory)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database)).expanduser().resolve()


def describe_database(url: str) -> str:
    """Where the database is, for people: a file's absolute path, else the URL without
    its password."""
    path = sqlite_file(url)
    if path is not None:
        return f"{path} (SQLite)"
    return make_url(url).render_as_string(hide_password=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _after_create(url: str, tenant: str) -> None:
    """What a new key changes: the first key turns authentication on, and the jobs made
    before keys existed belong to tenant 'default', which only a key of 'default' sees."""
    if count_active_keys(url) != 1:
        return
    _say(
        "this is the first active key: from now on every request needs a key "
        "(Authorization: Bearer …)"
    )
    earlier = count_jobs(url, DEFAULT_TENANT)
    if not earlier or tenant == DEFAULT_TENANT:
        if earlier:
            _say(f"the {earlier} job(s) made before keys existed are this key's (tenant 'default')")
        return
    _say(
        f"note: the {earlier} job(s) made before keys existed belong to tenant "
        f"'{DEFAULT_TENANT}', which a key of tenant {tenant!r} does not see. To keep them:\n"
        f"  swarmctl keys create --tenant {DEFAULT_TENANT}      "
        "# a key that sees them, or\n"
        f"  swarmctl keys move-jobs --from {DEFAULT_TENANT} --to {tenant}   "
        "# give them to this tenant"
    )


def _webhook_secret(url: str, tenant: str, *, rotate: bool) -> int:
    """Print the tenant's signing secret: the one it has, else a new one; `rotate`: a new
    one in any case (the old one stops verifying at once)."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > 64:
        _say("error: a tenant is 1 to 64 characters")
        return 2
    engine = make_engine(url)
    try:
        had = tenant_secret_exists(engine, tenant)
        box = secret_box(get_settings(), url, create=not had or rotate)
        if had and not rotate:
            with engine.connect() as conn:
                secret = tenant_secret(conn, tenant, lambda: box)
            assert secret is not None
        else:
            secret = rotate_secret(engine, tenant, box)
    except SecretKeyError as exc:
        _say(f"error: {exc}")
        return 2
    finally:
        engine.dispose()
    print(secret)
    if had and not rotate:
        _say(f"the webhook signing secret of tenant {tenant!r} (--rotate replaces it)")
    elif had:
        _say(
            f"rotated the webhook signing secret of tenant {tenant!r}: deliveries from now on "
            "are signed with this one, give it to your receiver now"
        )
    else:
        _say(
            f"created the webhook signing secret of tenant {tenant!r}; your receiver "
            "verifies with it (it is stored encrypted; this command shows it again)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    move = keys.add_parser("move-jobs", help="give every job of one tenant to another")
    move.add_argument("--from", dest="source", required=True)
    move.add_argument("--to", dest="target", required=True)
    hooks = groups.add_parser("webhooks", help="webhook signing secrets").add_subparsers(
        dest="command", required=True
    )
    secret = hooks.add_parser(
        "secret", help="print a tenant's signing secret (made if it has none), or --rotate it"
    )
    secret.add_argument("--tenant", required=True)
    secret.add_argument("--rotate", action="store_true", help="replace the secret the tenant has")
    args = parser.parse_args(argv)

    url = get_settings().database_url
    path = sqlite_file(url)
    _say(f"database: {describe_database(url)}")
    if path is not None and not path.exists():
        hint = (
            "run the command where the service runs (its ./data/swarm.db), or set "
            "SWARM_DATABASE_URL to the service's database"
        )
        if args.command not in ("create", "secret"):
            _say(f"error: there is no database at {path}: {hint}")
            return 2
        _say(
            f"note: there was no database at {path}; a new, empty one is created there. "
            f"A service using another database will not know what is made here: {hint}"
        )
    migrate.upgrade(url)
    if args.group == "webhooks":
        return _webhook_secret(url, args.tenant, rotate=args.rotate)
    if args.command == "create":
        try:
            key, info = create_key(url, args.tenant, args.name)
        except ValueError as exc:
            _say(f"error: {exc}")
            return 2
        print(key)
        _say(
            f"created key {info.id} ({info.prefix}…) for tenant {info.tenant!r}; "
            "store it now: it is not shown again"
        )
        _after_create(url, info.tenant)
        return 0
    if args.command == "list":
        for k in list_keys(url, args.tenant):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{k.id}  {k.prefix}…  tenant={k.tenant}  {state}  {k.name}".rstrip())
        return 0
    if args.command == "move-jobs":
        try:
            moved, dropped = move_jobs(url, args.source, args.target)
        except ValueError as exc:
            _say(f"error: {exc}")
            return 2
        print(f"moved {moved} job(s) from tenant {args.source!r} to {args.target!r}")
        if dropped:
            _say(
                f"{dropped} of them used an Idempotency-Key that {args.target!r} already "
                "uses: they keep their data but no longer answer repeats of that key"
            )
        return 0
    try:
        revoked = revoke_key(url, args.key_id)
    except AmbiguousKeyError as exc:
        _say(f"error: {exc}")
        return 2
    if revoked:
        print(f"revoked {args.key_id}")
        return 0
    _say(f"error: no active key {args.key_id!r}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
