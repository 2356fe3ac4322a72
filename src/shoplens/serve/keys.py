"""API keys: ``shoplens keys create --scope read|write|admin | list | revoke``.

Keys live in ``SHOPLENS_HOME/keys.sqlite``, hashed (SHA-256 of the whole key; keys are
256-bit random, so a salted slow hash adds nothing), and are shown once, at creation.
A key looks like ``sl_<id>_<secret>``; the id lets ``list``/``revoke`` name it without
the secret. Scopes nest: admin > write > read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoplens.config import shoplens_home
from shoplens.errors import ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError

SCOPES = ("read", "write", "admin")
SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the secret)."""

    id: str
    name: str
    scope: str
    created_at: float
    revoked_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "created_at": self.created_at,
            "revoked": self.revoked_at is not None,
        }


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


class KeyStore:
    """Hashed API keys in SQLite; thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or shoplens_home() / "keys.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(self, scope: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key: (its record, the full key — shown once, not stored)."""
        check_scope(scope)
        if len(name) > 200:
            raise InvalidInputError("key name must be at most 200 characters")
        key_id = secrets.token_hex(4)
        secret = f"sl_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT INTO api_keys (id, name, scope, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, name, scope, _hash(secret), now),
            )
        return ApiKey(key_id, name, scope, now, None), secret

    def list_keys(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, scope, created_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [ApiKey(*r) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            row = self._conn.execute(
                "SELECT id, name, scope, created_at, revoked_at FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no API key with id {key_id!r}; see 'shoplens keys list'")
        if cur.rowcount == 0:
            raise InvalidInputError(f"API key {key_id!r} is already revoked")
        return ApiKey(*row)

    def authenticate(self, key: str | None, needed: str) -> ApiKey:
        """The key's record when it exists, is live and its scope covers ``needed``.

        Raises UnauthorizedError (401) for a missing/unknown/revoked key and
        ForbiddenError (403) for a live key with too small a scope.
        """
        if not key:
            raise UnauthorizedError(
                f"this route needs an API key with scope {needed!r}: send "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with 'shoplens keys create')"
            )
        parts = key.split("_", 2)
        key_id = parts[1] if len(parts) == 3 and parts[0] == "sl" else ""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name, scope, created_at, revoked_at, hash FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[5], _hash(key)):
            raise UnauthorizedError("unknown API key")
        record = ApiKey(*row[:5])
        if record.revoked_at is not None:
            raise UnauthorizedError("this API key was revoked")
        if SCOPES.index(record.scope) < SCOPES.index(needed):
            raise ForbiddenError(
                f"this API key has scope {record.scope!r}; this route needs {needed!r}"
            )
        return record
