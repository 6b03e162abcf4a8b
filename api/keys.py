"""API keys: each belongs to a tenant, and only its sha256 is stored.

    python -m api.keys create --tenant NAME   # creates the tenant if needed; the key is the last line printed
    python -m api.keys list
    python -m api.keys revoke KEY_ID

The command uses the API's database (DATABASE_URL, or the embedded SQLite file under UNFREEZE_VAR).
"""

import argparse
import hashlib
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from models.db import session_scope
from models.settings import get_settings
from models.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "ufz_"
SHOWN_CHARS = 12  # "ufz_" and 8 characters: enough to tell keys apart in listings, useless to an attacker


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key it carried (None when authentication is off) and that key's tenant."""

    key_id: str | None
    tenant_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, tenant: str) -> tuple[ApiKey, str]:
    """A new key for the tenant named `tenant` (created if needed): its row and the key, shown only now."""
    owner = session.scalar(select(Tenant).where(Tenant.name == tenant))
    if owner is None:
        owner = Tenant(name=tenant, created_at=utcnow())
        session.add(owner)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=owner.id, prefix=key[:SHOWN_CHARS], key_hash=hash_key(key), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, key


def caller_of(session: Session, key: str) -> Caller | None:
    """The caller that `key` identifies, or None for an unknown or revoked key."""
    row = session.execute(select(ApiKey.id, ApiKey.tenant_id)
                          .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))).first()
    return Caller(key_id=row.id, tenant_id=row.tenant_id) if row else None


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke a key from now on; False if there is no such key."""
    if session.get(ApiKey, key_id) is None:
        return False
    session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    return True


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    utc = moment.astimezone(UTC) if moment.tzinfo else moment  # SQLite hands back naive UTC times
    return f"{utc:%Y-%m-%d %H:%M:%S}Z"


def _tenant_name(text: str) -> str:
    name = text.strip()
    if not 1 <= len(name) <= 255:
        raise argparse.ArgumentTypeError("a tenant name has 1 to 255 characters")
    return name


def _create(args: argparse.Namespace) -> int:
    with session_scope() as session:
        row, key = create_key(session, tenant=args.tenant)
    print(f"created key {row.id} (prefix {row.prefix}) for tenant '{args.tenant}' ({row.tenant_id}).")
    print("Send it as 'Authorization: Bearer <key>'. It is shown only now; the server keeps its hash:")
    print(key)
    return 0


def _list(_: argparse.Namespace) -> int:
    with session_scope() as session:
        rows = session.execute(select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id)
                               .order_by(ApiKey.created_at, ApiKey.id)).all()
    print(f"{'id':<30} {'tenant':<24} {'prefix':<14} {'created':<21} revoked")
    for key, tenant in rows:
        print(f"{key.id:<30} {tenant:<24} {key.prefix:<14} {_when(key.created_at):<21} {_when(key.revoked_at)}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with session_scope() as session:
        if not revoke_key(session, args.key_id):
            print(f"no key with id '{args.key_id}'; `python -m api.keys list` shows them", file=sys.stderr)
            return 1
    print(f"revoked {args.key_id}; requests with it now get 401")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description="Manage Unfreeze API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key for a tenant (and the tenant, if new)")
    create.add_argument("--tenant", required=True, type=_tenant_name, help="tenant name, e.g. the team or customer")
    create.set_defaults(run=_create)
    commands.add_parser("list", help="list keys: id, tenant, prefix, created, revoked").set_defaults(run=_list)
    revoke = commands.add_parser("revoke", help="revoke a key by its id (from `list`)")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_revoke)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (OperationalError, ProgrammingError) as exc:
        print(f"cannot use the database at {get_settings().db_url}: {exc.orig}. Is it running and migrated "
              "(`alembic upgrade head`, which `make run` does)?", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
