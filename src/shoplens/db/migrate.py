"""Schemas of the catalogue and events stores as Alembic migrations, and where they live.

Revisions are in ``shoplens/db/migrations/versions``, on two branches: ``catalog``
(products, ingests, meta) and ``events``. Each revision writes its change for SQLite and
for PostgreSQL.

- PostgreSQL (``SHOPLENS_DATABASE_URL`` set): one database holds every catalogue, one
  schema per catalogue, named exactly like it (a quoted identifier; catalogue names are
  already restricted to letters, digits, ``.``, ``_`` and ``-``); both branches live in it.
  Opening a store brings its schema to the latest revision (:func:`open_postgres`);
  ``shoplens db upgrade`` does it explicitly.
- SQLite (the default): ``catalog.sqlite`` (branch ``catalog``) and ``events.sqlite``
  (branch ``events``) per catalogue folder. The stores still create their tables as
  shoplens 0.1 did (the first revisions' schema) and never write migration bookkeeping into
  a file on their own; ``shoplens db upgrade`` records and applies revisions in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoplens.config import check_name
from shoplens.db.adapter import PgConnection, PgParams, parse_database_url, quote_ident
from shoplens.errors import InvalidInputError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Latest revision of each branch (a test checks it against the scripts): opening a store
#: compares with it without loading Alembic.
HEADS = {"catalog": "c0001", "events": "e0001"}
SQLITE_FILES = {"catalog": "catalog.sqlite", "events": "events.sqlite"}
PG_NAME_BYTES = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1)


def schema_for(name: str) -> str:
    """The PostgreSQL schema of catalogue ``name`` (the name itself, checked)."""
    check_name(name)
    if len(name.encode("utf-8")) > PG_NAME_BYTES:
        raise InvalidInputError(
            f"catalogue name {name!r} is too long for PostgreSQL (at most {PG_NAME_BYTES} "
            "characters, used as the schema name)"
        )
    if name.startswith("pg_") or name == "information_schema":
        raise InvalidInputError(
            f"catalogue name {name!r} is reserved by PostgreSQL (pg_* and information_schema)"
        )
    return name


# ---- Alembic ---------------------------------------------------------------------------


def _config(connection: Any, schema: str | None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


def script_heads() -> dict[str, str]:
    """Branch label -> head revision, read from the migration scripts."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config(None, None))
    out: dict[str, str] = {}
    for head in script.get_revisions("heads"):
        assert head is not None
        for label in head.branch_labels:
            out[label] = head.revision
    return out


def _pg_engine(params: PgParams) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from shoplens.db.adapter import connect_raw

    return create_engine(
        "postgresql+pg8000://", creator=lambda: connect_raw(params, dbapi=True), poolclass=NullPool
    )


def upgrade_postgres(params: PgParams, schema: str, target: str = "heads") -> None:
    """Create ``schema`` if needed and bring it to ``target`` (all branches' heads), in one
    transaction under an advisory lock (concurrent callers migrate once)."""
    from alembic import command

    engine = _pg_engine(params)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn, schema_for(schema)), target)
    finally:
        engine.dispose()


def upgrade_sqlite(path: Path, branch: str) -> list[str]:
    """Apply branch ``branch``'s revisions to the SQLite file ``path``; its new revisions."""
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn, None), f"{branch}@head")
    finally:
        engine.dispose()
    return current_sqlite(path)


def current_sqlite(path: Path) -> list[str]:
    """Revisions recorded in the SQLite file ``path`` (empty: never upgraded by Alembic; the
    file then has the schema of the first revisions, as shoplens 0.1 created it)."""
    import contextlib
    import sqlite3

    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30.0)) as conn:
        has = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).fetchone()
        if not has:
            return []
        return sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


# ---- PostgreSQL catalogues -------------------------------------------------------------


def current_postgres(conn: PgConnection) -> list[str]:
    """Revisions recorded in the schema ``conn`` is set to (empty: none, or no schema)."""
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        return []
    return sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


def is_catalog(conn: PgConnection) -> bool:
    """Whether the schema ``conn`` is set to holds a catalogue."""
    return conn.execute("SELECT to_regclass('products')").fetchone()[0] is not None


def open_postgres(url: str, name: str, *, must_exist: bool = False) -> PgConnection | None:
    """A connection to catalogue ``name``'s schema, migrated to the latest revisions first
    (created when missing, unless ``must_exist``: then None when there is no such
    catalogue)."""
    params = parse_database_url(url)
    schema = schema_for(name)
    conn = PgConnection(params, schema)
    try:
        if must_exist and not is_catalog(conn):
            conn.close()
            return None
        if current_postgres(conn) != sorted(HEADS.values()):
            upgrade_postgres(params, schema)
    except BaseException:
        conn.close()
        raise
    return conn


def list_postgres_catalogs(url: str) -> list[str]:
    """Names of the catalogues in the database (schemas with the catalogue tables)."""
    conn = PgConnection(parse_database_url(url))
    try:
        rows = conn.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name IN ('products', 'product_changes') "
            "GROUP BY table_schema HAVING COUNT(*) = 2"
        ).fetchall()
    finally:
        conn.close()
    return sorted(str(r[0]) for r in rows)


def drop_postgres_catalog(conn: PgConnection) -> None:
    """Remove the catalogue schema ``conn`` is set to, with all its tables."""
    assert conn.schema is not None
    conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(conn.schema)} CASCADE")
