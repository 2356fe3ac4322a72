"""The few SQL fragments that differ between SQLite and PostgreSQL.

Everything else the stores run is the same text on both: ``?`` placeholders (numbered by
:class:`~shoplens.db.adapter.PgConnection`), ``INSERT ... ON CONFLICT``, row-value
comparisons, ``LIMIT ... OFFSET``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoplens.db.adapter import Connection, SqliteConnection, pg_array

#: The column that orders rows of equal timestamp by arrival: SQLite's implicit ``rowid``,
#: an identity column ``seq`` in PostgreSQL.
ROWID = {"sqlite": "rowid", "postgresql": "seq"}


def member_of(
    conn: Connection, column: str, values: Sequence[Any], pg_type: str
) -> tuple[str, list[Any]]:
    """``column IN (?, ?, ...)`` on SQLite, ``column = ANY(?::TYPE[])`` (one array
    parameter) on PostgreSQL; returns the clause and its parameters."""
    if conn.dialect == "sqlite":
        return f"{column} IN ({','.join('?' * len(values))})", list(values)
    return f"{column} = ANY(?::{pg_type}[])", [pg_array(values)]


def json_text_equals(conn: Connection, column: str, key: str) -> tuple[str, list[Any]]:
    """A clause comparing the text value of ``key`` in the JSON object stored (as text) in
    ``column`` with one more parameter; returns the clause and the key's parameters."""
    if conn.dialect == "sqlite":
        return f"json_extract({column}, ?) = ?", [f'$."{key}"']
    return f"({column}::jsonb ->> ?) = ?", [key]


def products_stamp(conn: Connection) -> tuple[int, int]:
    """Changes whenever any connection commits a change to ``products``.

    SQLite: ``PRAGMA data_version`` (other connections' commits) and this connection's
    ``total_changes``. PostgreSQL: the id of the last transaction that wrote products, kept
    in ``product_changes`` by a statement trigger (see the first catalogue migration).
    """
    if isinstance(conn, SqliteConnection):
        return conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes
    return int(conn.execute("SELECT stamp FROM product_changes").fetchone()[0]), 0
