"""Secrets kept at rest encrypted (Fernet): the tenants' webhook signing secrets. The key
comes from SWARM_SECRETS_KEY, else (SQLite only) from a key file made beside the database
on first use and announced."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import make_url

from app.config import Settings

log = logging.getLogger(__name__)

# Marks a stored value as encrypted, so a value written before encryption is told apart.
PREFIX = "fernet:"
KEY_FILE_NAME = "secrets.key"


class SecretKeyError(RuntimeError):
    """No key to encrypt with, or a stored secret the configured keys cannot decrypt."""


def default_key_file(database_url: str) -> Path | None:
    """secrets.key beside a SQLite database file; None for other databases."""
    parsed = make_url(database_url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database)).expanduser().resolve().parent / KEY_FILE_NAME


@dataclass(frozen=True)
class SecretBox:
    fernet: MultiFernet

    def encrypt(self, plain: str) -> str:
        return PREFIX + self.fernet.encrypt(plain.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise SecretKeyError("the stored secret is not encrypted (run the migrations)")
        try:
            return self.fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the configured SWARM_SECRETS_KEY "
                "(is it the key the secret was stored with?)"
            ) from None


def _box(keys: list[str]) -> SecretBox:
    try:
        return SecretBox(MultiFernet([Fernet(k.strip().encode()) for k in keys]))
    except ValueError:
        raise SecretKeyError(
            "SWARM_SECRETS_KEY must be Fernet keys (32 url-safe base64-encoded bytes) "
            "separated by commas"
        ) from None


def _create_key_file(path: Path) -> str:
    key = Fernet.generate_key().decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Exclusive create, readable by the owner only: two processes starting at once keep
    # whichever key was written first.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.warning(
        "generated the key that encrypts stored secrets at %s: back it up with the database "
        "(without it the stored webhook secrets cannot be read), or set SWARM_SECRETS_KEY",
        path,
    )
    return key


def secret_box(
    settings: Settings, database_url: str | None = None, *, create: bool = False
) -> SecretBox:
    """The box for `database_url` (default: the settings' database). `create`: make the key
    file if there is none (when a secret is about to be stored). Raises SecretKeyError."""
    if settings.secrets_key is not None:
        keys = [k for k in settings.secrets_key.get_secret_value().split(",") if k.strip()]
        if keys:
            return _box(keys)
    path = settings.secrets_key_file or default_key_file(database_url or settings.database_url)
    if path is None:
        raise SecretKeyError(
            "set SWARM_SECRETS_KEY (a Fernet key, the same for every process) to store "
            "webhook secrets in this database"
        )
    if path.exists():
        return _box([path.read_text().strip()])
    if not create:
        raise SecretKeyError(
            f"there is no key to decrypt stored secrets: neither SWARM_SECRETS_KEY nor {path}"
        )
    return _box([_create_key_file(path)])
