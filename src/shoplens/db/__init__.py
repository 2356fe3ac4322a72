"""Database access of the catalogue and events stores: SQLite files by default, PostgreSQL
when ``SHOPLENS_DATABASE_URL`` is set.

- :mod:`shoplens.db.adapter`: one connection interface over both (placeholders, rows
  readable by name and position, write transactions);
- :mod:`shoplens.db.dialects`: the few SQL fragments that differ;
- :mod:`shoplens.db.migrate`: the schemas as Alembic migrations, one PostgreSQL schema
  per catalogue;
- :mod:`shoplens.db.local`: a throwaway local PostgreSQL server (tests, benchmarks).
"""

from shoplens.db.adapter import (
    Connection,
    DatabaseUnavailableError,
    PgConnection,
    PgParams,
    Row,
    SqliteConnection,
    parse_database_url,
)

__all__ = [
    "Connection",
    "DatabaseUnavailableError",
    "PgConnection",
    "PgParams",
    "Row",
    "SqliteConnection",
    "parse_database_url",
]
