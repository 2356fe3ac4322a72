"""``shoplens db upgrade|current``: schema migrations of the catalogue and events stores."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shoplens.config import check_name, database_url
from shoplens.errors import NotFoundError

db_app = typer.Typer(
    help="Database schema of the catalogue and events stores (SQLite files, or PostgreSQL "
    "with SHOPLENS_DATABASE_URL).",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
CatalogsOpt = Annotated[
    str | None, typer.Option("--catalog", "-c", help="One catalogue (default: all).")
]


def _names(catalog: str | None) -> list[str]:
    from shoplens.catalog.store import list_catalogs

    names = list_catalogs()
    if catalog is None:
        return names
    if check_name(catalog) not in names:
        known = ", ".join(names) or "none yet"
        raise NotFoundError(f"unknown catalogue {catalog!r} (known: {known})")
    return [catalog]


def _status(name: str) -> dict[str, Any]:
    """Backend, recorded revisions and latest revisions of catalogue ``name``."""
    from shoplens.catalog.store import catalogs_root
    from shoplens.db.migrate import HEADS, SQLITE_FILES, current_postgres, current_sqlite

    url = database_url()
    if url is None:  # each file has its own branch; events.sqlite appears with the first use
        current: list[str] = []
        heads = []
        for branch, file in SQLITE_FILES.items():
            path = catalogs_root() / name / file
            if path.is_file():
                current += current_sqlite(path)
                heads.append(HEADS[branch])
        return {"catalog": name, "backend": "sqlite", "current": sorted(current),
                "heads": sorted(heads)}  # fmt: skip
    heads = sorted(HEADS.values())
    from shoplens.db.adapter import PgConnection, parse_database_url
    from shoplens.db.migrate import schema_for

    conn = PgConnection(parse_database_url(url), schema_for(name))
    try:
        current = current_postgres(conn)
    finally:
        conn.close()
    return {"catalog": name, "backend": "postgresql", "current": current, "heads": heads}


def _line(s: dict[str, Any]) -> str:
    cur = ", ".join(s["current"]) or "none recorded"
    if s["backend"] == "sqlite" and not s["current"]:
        cur += " (schema of the first revisions, as created by the store)"
    state = "up to date" if s["current"] == s["heads"] else f"latest {', '.join(s['heads'])}"
    return f"{s['catalog']} [{s['backend']}]: {cur}; {state}"


def _emit(as_json: bool, rows: list[dict[str, Any]]) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo("\n".join(_line(r) for r in rows) or "no catalogues yet")


@db_app.command("current")
def current_cmd(catalog: CatalogsOpt = None, as_json: JsonOpt = False) -> None:
    """Show the schema revision of each catalogue's stores and the latest one."""
    _emit(as_json, [_status(n) for n in _names(catalog)])


@db_app.command("upgrade")
def upgrade_cmd(catalog: CatalogsOpt = None, as_json: JsonOpt = False) -> None:
    """Bring each catalogue's stores to the latest schema revision (PostgreSQL does it on
    open too; on SQLite this also records the revision in catalog.sqlite/events.sqlite)."""
    from shoplens.catalog.store import catalogs_root
    from shoplens.db.migrate import SQLITE_FILES, upgrade_postgres, upgrade_sqlite

    url = database_url()
    rows = []
    for name in _names(catalog):
        if url is None:
            for branch, file in SQLITE_FILES.items():
                path = catalogs_root() / name / file
                if path.is_file():
                    upgrade_sqlite(path, branch)
        else:
            from shoplens.db.adapter import parse_database_url

            upgrade_postgres(parse_database_url(url), name)
        rows.append(_status(name))
    _emit(as_json, rows)
