"""API keys: created once-shown, hashed at rest, scoped, revocable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shoplens.errors import ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError
from shoplens.serve.keys import KeyStore


def test_create_authenticate_scopes_and_revoke(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite")
    reader, read_key = store.create("read", "dashboard")
    writer, write_key = store.create("write", "events pipeline")
    assert read_key.startswith(f"sl_{reader.id}_") and len(read_key) > 40
    assert store.authenticate(write_key, "read").id == writer.id  # scopes nest
    assert store.authenticate(write_key, "write").scope == "write"
    with pytest.raises(ForbiddenError, match="scope 'read'"):
        store.authenticate(read_key, "write")
    with pytest.raises(ForbiddenError):
        store.authenticate(write_key, "admin")
    with pytest.raises(UnauthorizedError, match="needs an API key"):
        store.authenticate(None, "read")
    with pytest.raises(UnauthorizedError, match="unknown"):
        store.authenticate(write_key[:-1] + ("A" if write_key[-1] != "A" else "B"), "read")
    with pytest.raises(UnauthorizedError, match="unknown"):
        store.authenticate("not-a-key", "read")
    store.revoke(writer.id)
    with pytest.raises(UnauthorizedError, match="revoked"):
        store.authenticate(write_key, "write")
    with pytest.raises(InvalidInputError, match="already revoked"):
        store.revoke(writer.id)
    with pytest.raises(NotFoundError):
        store.revoke("nope")
    listed = {k.id: k for k in store.list_keys()}
    assert listed[writer.id].revoked_at is not None and listed[reader.id].revoked_at is None
    with pytest.raises(InvalidInputError, match="scope must be"):
        store.create("root")
    store.close()


def test_secrets_are_not_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite")
    _, key = store.create("admin")
    store.close()
    raw = (tmp_path / "keys.sqlite").read_bytes()
    assert key.encode() not in raw
    secret_part = key.split("_", 2)[2]
    with sqlite3.connect(tmp_path / "keys.sqlite") as conn:
        dump = "\n".join(conn.iterdump())
    assert secret_part not in dump
