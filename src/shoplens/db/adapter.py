"""One connection interface over SQLite (:mod:`sqlite3`) and PostgreSQL (pg8000).

The stores write their SQL once, with ``?`` placeholders, and run it through a
:class:`Connection`. :class:`SqliteConnection` passes everything to :mod:`sqlite3`
unchanged (the default, and the files of earlier versions, behave exactly as before);
:class:`PgConnection` numbers the placeholders (``?`` -> ``$1, $2, ...``, cached per
statement), returns :class:`Row` objects that read by column name and by position like
:class:`sqlite3.Row`, and runs in autocommit mode outside explicit transactions, so reads
always see the latest commit of every writer, as SQLite's do.
"""

from __future__ import annotations

import functools
import getpass
import itertools
import os
import re
import sqlite3
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from shoplens.errors import InvalidInputError, ServiceUnavailableError

Dialect = Literal["sqlite", "postgresql"]
SCHEMES = ("postgresql", "postgres", "postgresql+pg8000")
SSL_MODES = ("disable", "prefer", "require", "verify-full")
#: Seconds to reach the server and log in; statements then wait as long as they need (a
#: writer queueing for a table lock behind a long ingest must not time out).
CONNECT_TIMEOUT_S = 10.0


class DatabaseUnavailableError(ServiceUnavailableError):
    """The PostgreSQL server named by ``SHOPLENS_DATABASE_URL`` cannot be reached or refused
    the connection (down, wrong host/port, unknown database or role, bad password)."""

    code = "database_unavailable"


class Cursor(Protocol):
    """What :meth:`Connection.execute` returns: a DB-API cursor's reading half."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Row(Sequence[Any]):
    """A result row readable by position (``row[0]``) and column name (``row["sku"]``)."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: list[Any], names: dict[str, int]) -> None:
        self._values = values
        self._names = names

    @overload
    def __getitem__(self, key: int | str) -> Any: ...

    @overload
    def __getitem__(self, key: slice) -> list[Any]: ...

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        if isinstance(other, (tuple, list)):
            return tuple(self._values) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable values, like a list

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=False))!r})"


class Result:
    """The rows of one PostgreSQL statement (fetched whole, as pg8000 does)."""

    def __init__(self, rows: list[list[Any]] | None, columns: Any, rowcount: int) -> None:
        names = {c["name"]: i for i, c in enumerate(columns or ())}
        self._rows = iter([Row(r, names) for r in rows or ()])
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return next(self._rows, None)

    def fetchall(self) -> list[Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return self._rows


class Connection:
    """A database connection of one dialect; see the module docs. Not thread-safe: the
    stores guard each connection with their own lock."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.execute(sql, row)

    def executescript(self, script: str) -> None:
        raise NotImplementedError

    def begin(self, lock: str | None = None) -> None:
        """Start a write transaction that excludes every other writer of table ``lock``
        (SQLite: ``BEGIN IMMEDIATE`` locks the whole file for writing anyway)."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Connection]:
        """``begin(lock)``; commit when the block ends, roll back if it raises."""
        self.begin(lock)
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()


class SqliteConnection(Connection):
    """A :class:`sqlite3.Connection`, configured by its owner, used as it is."""

    dialect: Dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        self.raw.executescript(script)

    def begin(self, lock: str | None = None) -> None:
        self.raw.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()

    @property
    def total_changes(self) -> int:
        return self.raw.total_changes


# ---- PostgreSQL ----------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


@functools.lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """``sql`` with each ``?`` outside quotes replaced by PostgreSQL's ``$1, $2, ...``."""
    n = itertools.count(1)
    return _PLACEHOLDER.sub(lambda m: f"${next(n)}" if m.group() == "?" else m.group(), sql)


def pg_array(values: Iterable[str | int | float]) -> str:
    """A PostgreSQL array literal of text or numbers, to bind as one ``?::TYPE[]`` value:
    many times faster than pg8000's element-by-element array encoding."""
    items = [
        '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' if isinstance(v, str) else repr(v)
        for v in values
    ]
    return "{" + ",".join(items) + "}"


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PgParams:
    """Where and how to connect, parsed from a ``postgresql://`` URL."""

    host: str
    port: int
    database: str
    user: str
    password: str | None = None
    unix_sock: str | None = None
    sslmode: str = "prefer"

    def display(self) -> str:
        """The URL without its password (safe for messages and logs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = self.unix_sock or f"{host}:{self.port}"
        return f"postgresql://{quote(self.user, safe='')}@{where}/{self.database}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``pg8000.native.Connection`` / ``pg8000.dbapi.connect``."""
        # pg8000: False = plain, None = TLS if the server offers it (libpq's "prefer")
        ctx: ssl.SSLContext | bool | None = {"disable": False, "prefer": None}.get(self.sslmode)
        if self.sslmode in ("require", "verify-full"):
            ctx = ssl.create_default_context()
            if self.sslmode == "require":  # encrypted, server not verified (libpq's meaning)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return {
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "unix_sock": self.unix_sock,
            "ssl_context": ctx,
            "timeout": CONNECT_TIMEOUT_S,  # lifted once connected (see connect_raw)
            "application_name": "shoplens",
        }


def parse_database_url(url: str) -> PgParams:
    """Check a ``SHOPLENS_DATABASE_URL``; InvalidInputError says what is wrong with it.

    Form: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE]``; a Unix
    socket folder goes in ``?host=/path``. The password may also come from ``PGPASSWORD``.
    """
    hint = "expected postgresql://user:password@host:5432/database"
    try:
        u = urlsplit(url.strip())
        port = u.port or 5432
    except ValueError as exc:  # e.g. a port that is not a number
        raise InvalidInputError(f"invalid SHOPLENS_DATABASE_URL ({exc}); {hint}") from None
    if not u.scheme or "//" not in url:
        raise InvalidInputError(f"invalid SHOPLENS_DATABASE_URL: not a URL; {hint}")
    if u.scheme not in SCHEMES:
        raise InvalidInputError(
            f"unsupported SHOPLENS_DATABASE_URL scheme {u.scheme!r}: shoplens stores "
            f"metadata in PostgreSQL ({hint}), or in SQLite files when the variable is unset"
        )
    database = unquote(u.path.lstrip("/"))
    if not database:
        raise InvalidInputError(f"SHOPLENS_DATABASE_URL names no database; {hint}")
    query = dict(parse_qsl(u.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"sslmode", "host"})
    if unknown:
        raise InvalidInputError(
            f"unsupported SHOPLENS_DATABASE_URL option(s) {', '.join(unknown)} "
            "(supported: sslmode, host)"
        )
    sslmode = query.get("sslmode", "prefer")
    if sslmode not in SSL_MODES:
        raise InvalidInputError(f"sslmode {sslmode!r} is not one of {', '.join(SSL_MODES)}")
    sock_dir = query.get("host")
    return PgParams(
        host=u.hostname or "localhost",
        port=port,
        database=database,
        user=unquote(u.username or "") or os.environ.get("PGUSER") or getpass.getuser(),
        password=unquote(u.password) if u.password is not None else os.environ.get("PGPASSWORD"),
        unix_sock=f"{sock_dir}/.s.PGSQL.{port}" if sock_dir else None,
        sslmode=sslmode,
    )


def _server_message(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, dict):  # pg8000 DatabaseError: the server's error fields
        return str(arg.get("M", arg))
    cause = exc.__cause__ or exc.__context__
    return f"{arg} ({cause})" if cause else str(arg)


def connect_raw(params: PgParams, *, dbapi: bool = False) -> Any:
    """A pg8000 connection (native, or DB-API 2 for SQLAlchemy); DatabaseUnavailableError
    when the server cannot be reached or refuses."""
    import pg8000.dbapi
    import pg8000.native

    factory = pg8000.dbapi.connect if dbapi else pg8000.native.Connection
    try:
        conn = factory(**params.connect_kwargs())
    except (pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError) as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to PostgreSQL at {params.display()}: {_server_message(exc)}"
        ) from None
    sock = getattr(conn, "_usock", None)  # pg8000 applies its timeout to every read
    if sock is not None:
        sock.settimeout(None)
    return conn


class PgConnection(Connection):
    """A pg8000 connection whose ``search_path`` is one schema (one catalogue)."""

    dialect: Dialect = "postgresql"

    def __init__(self, params: PgParams, schema: str | None = None) -> None:
        self.params = params
        self.schema = schema
        self._in_tx = False
        self.raw = self._connect()

    def _connect(self) -> Any:
        raw = connect_raw(self.params)
        if self.schema is not None:
            raw.execute_simple(f"SET search_path TO {quote_ident(self.schema)}")
        return raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        from pg8000.native import InterfaceError

        try:
            ctx = self.raw.execute_unnamed(numbered(sql), vals=list(params))
        except InterfaceError:
            if self._in_tx:
                raise
            self.raw = self._connect()  # server restarted or connection dropped: once more
            ctx = self.raw.execute_unnamed(numbered(sql), vals=list(params))
        return Result(ctx.rows, ctx.columns, ctx.row_count)

    def executescript(self, script: str) -> None:
        self.raw.execute_simple(script)

    def begin(self, lock: str | None = None) -> None:
        self.execute("BEGIN")
        self._in_tx = True
        if lock is not None:  # writers of this table queue here; readers are not blocked
            self.execute(f"LOCK TABLE {quote_ident(lock)} IN SHARE ROW EXCLUSIVE MODE")

    def commit(self) -> None:
        self.raw.execute_simple("COMMIT")
        self._in_tx = False

    def rollback(self) -> None:
        from pg8000.native import InterfaceError

        self._in_tx = False
        with suppress(InterfaceError):  # connection lost: the server rolled back already
            self.raw.execute_simple("ROLLBACK")

    def close(self) -> None:
        from pg8000.native import InterfaceError

        with suppress(InterfaceError, OSError):
            self.raw.close()
