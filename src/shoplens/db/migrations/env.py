"""Alembic environment of shoplens, run by :mod:`shoplens.db.migrate` on an open connection.

PostgreSQL: one schema per catalogue (``config.attributes["schema"]``). The upgrade takes a
transaction-level advisory lock on the schema's name first, so service workers opening a
new catalogue at the same moment migrate it once; then it creates the schema if needed and
runs every migration in the schema, with the version table there too, in one transaction.
SQLite: the catalogue's ``catalog.sqlite`` or ``events.sqlite`` file, one branch each.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("shoplens migrations run through 'shoplens db upgrade' (online only)")
schema = config.attributes.get("schema")
postgres = connection.dialect.name == "postgresql"
if postgres:
    if not schema:
        raise RuntimeError("PostgreSQL migrations need the catalogue's schema")
    ident = '"' + schema.replace('"', '""') + '"'
    connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"shoplens:{schema}"}
    )
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {ident}"))
    connection.execute(text(f"SET LOCAL search_path TO {ident}"))

context.configure(
    connection=connection,
    version_table_schema=schema if postgres else None,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
