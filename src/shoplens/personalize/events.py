"""Customer events of one catalogue: validation, an SQLite or PostgreSQL store, file import.

Layout: ``SHOPLENS_HOME/catalogs/NAME/events.sqlite`` (WAL) beside the catalogue, or, with
``SHOPLENS_DATABASE_URL`` set, table ``events`` in the catalogue's PostgreSQL schema. Every event
has a caller-chosen ``event_id``, which makes writes idempotent: replaying an event that
is already stored is counted as a duplicate and changes nothing, while a replay with the
same id but different content is rejected and reported.

:meth:`EventStore.add` validates every event (fields, type, timestamp, and that the sku
exists in the catalogue), then stores the valid ones. Input is processed in chunks of
:data:`CHUNK` events; each chunk is one transaction, so a call of up to ``CHUNK`` events is
all-or-nothing. A crash in the middle of a long import leaves whole chunks stored, and
running the import again is harmless (the stored events come back as duplicates). With
``strict=True`` the whole call is one transaction, rolled back if any event is rejected.

Concurrent writers (threads, service workers, importers on other machines) never lose or
duplicate an event. SQLite lets one write transaction run at a time. PostgreSQL runs them
side by side: each chunk is inserted with ``ON CONFLICT (event_id) DO NOTHING`` in event-id
order (so two writers cannot deadlock), and an event another writer stored meanwhile is
then counted as a duplicate, or rejected if its content differs, exactly as if it had been
stored before the call. A strict call locks the table against other writers instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shoplens.catalog.store import Catalog
from shoplens.config import atomic_write, database_url
from shoplens.db import dialects
from shoplens.db.adapter import Connection, SqliteConnection, pg_array
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.personalize.types import EVENT_TYPES, SIMULATED_PREFIX, Event

CHUNK = 5_000  # events validated and stored per transaction
MAX_ID_CHARS = 128
MAX_CLOCK_SKEW_S = 300.0  # how far in the future a timestamp may be
MS_THRESHOLD = 1e11  # numbers above this are Unix milliseconds (1e11 s is year 5138)
MAX_REJECTION_DETAILS = 1_000
ERROR_KEY = "__error__"  # a row a reader could not parse: its value is the reason
LINE_KEY = "__line__"  # the line (CSV/JSONL) or row (Parquet) a row came from, 1-based
REQUIRED_FIELDS = ("event_id", "customer_id", "sku", "type", "timestamp")
TYPE_ALIASES = {
    "addtocart": "add_to_cart",
    "add-to-cart": "add_to_cart",
    "add to cart": "add_to_cart",
    "transaction": "purchase",
}
FORMATS = ("auto", "csv", "jsonl", "parquet", "hm", "retailrocket")
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SQL_VARS = 900  # bound parameters per IN (...) query, under SQLite's old 999 limit

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    simulated INTEGER NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_customer_ts ON events(customer_id, ts);
CREATE INDEX IF NOT EXISTS events_sku ON events(sku);
"""
_COLUMNS = "event_id, customer_id, sku, type, ts, simulated"

__all__ = [
    "CHUNK",
    "EVENT_TYPES",
    "FORMATS",
    "EventReport",
    "EventStore",
    "Rejection",
    "import_events",
    "known_skus",
    "read_event_rows",
    "validate_event",
]


# ---- reports -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A refused event: its 0-based position in the call's input, its id if any, and why.

    ``line`` is the line (CSV/JSONL) or row (Parquet) of the file it came from, if any.
    """

    position: int
    event_id: str | None
    reason: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "position": self.position,
            "event_id": self.event_id,
            "reason": self.reason,
        }
        if self.line is not None:
            out["line"] = self.line
        return out


@dataclass
class EventReport:
    """What one :meth:`EventStore.add` call did.

    ``rejected`` keeps the first :data:`MAX_REJECTION_DETAILS` rejections;
    ``rejected_count`` counts all of them. ``aborted`` is true when ``strict`` mode
    refused the whole input (then nothing was stored and ``accepted`` is 0).
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rejected_count: int = 0
    simulated: bool = False
    aborted: bool = False
    message: str = ""

    @property
    def total(self) -> int:
        return self.accepted + self.duplicates + self.rejected_count

    def reject(self, rejection: Rejection) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTION_DETAILS:
            self.rejected.append(rejection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected_count": self.rejected_count,
            "rejected": [r.to_dict() for r in self.rejected],
            "rejected_truncated": self.rejected_count > len(self.rejected),
            "simulated": self.simulated,
            "aborted": self.aborted,
            "message": self.message,
        }


# ---- validation ----------------------------------------------------------------------


def validate_event(raw: Mapping[str, Any], *, now: float, simulated: bool = False) -> Event:
    """Check one raw event and return it normalised; InvalidInputError says what is wrong.

    Fields: ``event_id``, ``customer_id``, ``sku`` (text or integers, 1-128 characters),
    ``type`` (one of :data:`EVENT_TYPES`, or the aliases addtocart / add-to-cart /
    transaction), ``timestamp`` (Unix seconds or milliseconds as a number or numeric
    string, or ISO 8601 text; naive times are UTC; at most 300 s in the future of
    ``now``). An optional boolean ``simulated`` key is OR-ed with the argument. Customer
    ids starting with ``"sim-"`` are reserved for simulated events. Other keys are ignored.
    """
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"an event must be an object, not {type(raw).__name__}")
    if raw.get(ERROR_KEY):
        raise InvalidInputError(str(raw[ERROR_KEY]))
    problems: list[str] = []
    ids: dict[str, str] = {}
    for name in ("event_id", "customer_id", "sku"):
        try:
            ids[name] = _id_field(raw, name)
        except InvalidInputError as exc:
            problems.append(exc.message)
    try:
        etype = _event_type(raw.get("type"))
    except InvalidInputError as exc:
        problems.append(exc.message)
    try:
        ts = parse_timestamp(raw.get("timestamp"), now=now)
    except InvalidInputError as exc:
        problems.append(exc.message)
    try:
        is_sim = simulated or _flag(raw.get("simulated"))
    except InvalidInputError as exc:
        problems.append(exc.message)
    if not problems and not is_sim and ids["customer_id"].startswith(SIMULATED_PREFIX):
        problems.append(
            f"customer_id {ids['customer_id']!r}: ids starting with {SIMULATED_PREFIX!r} are "
            "reserved for simulated events (mark the event simulated)"
        )
    if problems:
        raise InvalidInputError("; ".join(problems))
    return Event(ids["event_id"], ids["customer_id"], ids["sku"], etype, ts, is_sim)


def _id_field(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        raise InvalidInputError(f"missing {name}")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise InvalidInputError(f"empty {name}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInputError(
            f"{name} is longer than {MAX_ID_CHARS} characters ({len(value)}): {value[:40]!r}..."
        )
    if any(unicodedata.category(c) == "Cs" for c in value):  # cannot be stored as UTF-8
        raise InvalidInputError(f"{name} contains a lone surrogate (invalid Unicode)")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise InvalidInputError(f"{name} {value!r} contains control characters")
    return value


def _event_type(value: Any) -> str:
    allowed = ", ".join(EVENT_TYPES)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInputError(f"missing type (allowed: {allowed})")
    if not isinstance(value, str):
        raise InvalidInputError(f"type must be text, not {type(value).__name__}")
    key = value.strip().lower()
    key = TYPE_ALIASES.get(key, key)
    if key not in EVENT_TYPES:
        raise InvalidInputError(f"unknown type {value[:64]!r} (allowed: {allowed})")
    return key


def _flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("", "0", "false", "no"):
        return False
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes"):
        return True
    raise InvalidInputError(f"simulated must be true or false, not {str(value)[:40]!r}")


def parse_timestamp(value: Any, *, now: float) -> float:
    """Unix seconds (UTC) from seconds, milliseconds, a numeric string or ISO 8601 text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInputError("missing timestamp")
    if isinstance(value, bool):
        raise InvalidInputError(f"timestamp must be a number or ISO 8601 text, not {value!r}")
    ts: float
    numeric = True  # numbers may be milliseconds; dates never are
    if isinstance(value, datetime):
        ts, numeric = _datetime_seconds(value), False
    elif isinstance(value, (int, float)):
        try:
            ts = float(value)
        except OverflowError:  # an integer beyond float range
            raise InvalidInputError("timestamp is too large to be a date") from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            ts = float(text)
        except ValueError:
            ts, numeric = _iso_seconds(text), False
    else:
        raise InvalidInputError(
            f"timestamp must be a number or ISO 8601 text, not {type(value).__name__}"
        )
    if not math.isfinite(ts):
        raise InvalidInputError(f"timestamp {value!r} is not a finite number")
    if ts < 0:
        raise InvalidInputError(f"timestamp {value!r} is negative")
    if numeric and ts > MS_THRESHOLD:
        ts /= 1000.0
    if ts > now + MAX_CLOCK_SKEW_S:
        when = datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts < 2.5e11 else "?"
        raise InvalidInputError(
            f"timestamp {value!r} ({when}) is in the future (more than "
            f"{MAX_CLOCK_SKEW_S:g} s after now)"
        )
    return ts


def _iso_seconds(text: str) -> float:
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise InvalidInputError(
            f"timestamp {text[:64]!r} is neither a number nor an ISO 8601 date/time"
        ) from None
    return _datetime_seconds(dt)


def _datetime_seconds(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _content(e: Event) -> tuple[str, str, str, float, bool]:
    return (e.customer_id, e.sku, e.type, e.timestamp, e.simulated)


# ---- catalogue lookups ---------------------------------------------------------------


def known_skus(catalog: Catalog, skus: Iterable[str]) -> set[str]:
    """The subset of ``skus`` that exist in ``catalog`` (read through a read-only connection)."""
    wanted = sorted(set(skus))
    if not wanted:
        return set()
    with contextlib.closing(catalog.reader()) as conn:
        return _known_skus_in(conn, wanted)


def _known_skus_in(conn: Connection, skus: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(skus), _SQL_VARS):
        where, params = dialects.member_of(conn, "sku", skus[start : start + _SQL_VARS], "text")
        found.update(r[0] for r in conn.execute(f"SELECT sku FROM products WHERE {where}", params))
    return found


# ---- the store -----------------------------------------------------------------------


def _row_event(row: Sequence[Any]) -> Event:
    return Event(row[0], row[1], row[2], row[3], float(row[4]), bool(row[5]))


class EventStore:
    """The events of one catalogue. Thread-safe; open with :meth:`open`."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.db_path = catalog.root / "events.sqlite"
        self._lock = threading.RLock()
        self._conn: Connection
        url = database_url()
        if url is None:
            raw = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30.0)
            raw.execute("PRAGMA journal_mode=WAL")
            raw.execute("PRAGMA synchronous=FULL")
            raw.execute("PRAGMA busy_timeout=30000")
            raw.executescript(SCHEMA)
            self._conn = SqliteConnection(raw)
        else:
            from shoplens.db.migrate import open_postgres

            conn = open_postgres(url, catalog.name)
            assert conn is not None
            self._conn = conn
        self._rowid = dialects.ROWID[self._conn.dialect]

    @classmethod
    def open(cls, catalog: Catalog) -> EventStore:
        """Open (creating if needed) the events store of ``catalog``."""
        return cls(catalog)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes ----------------------------------------------------------------------
    def add(
        self,
        raw_events: Iterable[Mapping[str, Any]],
        *,
        simulated: bool = False,
        source: str = "api",
        now: float | None = None,
        strict: bool = False,
        on_reject: Callable[[Rejection], None] | None = None,
        on_commit: Callable[[int, EventReport], None] | None = None,
    ) -> EventReport:
        """Validate and store events; return what was accepted, duplicated and rejected.

        Duplicates (an ``event_id`` already stored, or repeated in the input, with the same
        content) are counted and not stored again; the same id with different content is
        rejected. Input is consumed in chunks of :data:`CHUNK`, one transaction each (see
        the module docs); with ``strict`` any rejection rolls the whole call back.
        ``on_reject`` is called with every rejection (the report keeps only the first
        :data:`MAX_REJECTION_DETAILS`). ``on_commit(n, report)`` is called after each
        commit: the first ``n`` input events are then processed and every valid one among
        them is durably stored (an acknowledgement). A database error rolls back the
        current chunk and is raised.
        """
        now = time.time() if now is None else float(now)
        report = EventReport(simulated=simulated)

        def reject(r: Rejection) -> None:
            report.reject(r)
            if on_reject is not None:
                on_reject(r)

        with self._sku_reader() as reader:
            if strict:
                with self._lock:
                    self._conn.begin(lock="events")
                    try:
                        for chunk in _chunks(raw_events, CHUNK):
                            self._add_chunk(chunk, reader, simulated, source, now, report, reject)
                    except BaseException:
                        self._conn.rollback()
                        raise
                    if report.rejected_count:
                        self._conn.rollback()
                        report.aborted = True
                        report.message = (
                            f"strict mode: {report.rejected_count} event(s) rejected, "
                            f"so none of the {report.total} were stored"
                        )
                        report.accepted = 0
                    else:
                        self._conn.commit()
                if on_commit is not None and not report.aborted:
                    on_commit(report.total, report)
            else:
                for chunk in _chunks(raw_events, CHUNK):
                    with self._lock, self._conn.transaction():
                        self._add_chunk(chunk, reader, simulated, source, now, report, reject)
                    if on_commit is not None:
                        on_commit(chunk[-1][0] + 1, report)
        return report

    def _sku_reader(self) -> contextlib.AbstractContextManager[Connection]:
        """Where :meth:`add` looks skus up: a read-only connection to ``catalog.sqlite``, or
        this store's own connection (the products are in the same PostgreSQL schema)."""
        if isinstance(self._conn, SqliteConnection):
            return contextlib.closing(self.catalog.reader())
        return contextlib.nullcontext(self._conn)

    def _add_chunk(
        self,
        chunk: list[tuple[int, Any]],
        reader: Connection,
        simulated: bool,
        source: str,
        now: float,
        report: EventReport,
        reject: Callable[[Rejection], None],
    ) -> None:
        """Validate one chunk and insert its new events (inside an open transaction)."""
        refused: list[Rejection] = []
        valid: list[tuple[int, int | None, Event]] = []
        for pos, raw in chunk:
            line = _line_of(raw)
            try:
                valid.append((pos, line, validate_event(raw, now=now, simulated=simulated)))
            except InvalidInputError as exc:
                refused.append(Rejection(pos, _raw_id(raw), exc.message, line))
        known = _known_skus_in(reader, sorted({e.sku for _, _, e in valid}))
        stored = self._stored([e.event_id for _, _, e in valid if e.sku in known])
        first: dict[str, tuple[int, Event]] = {}
        new: list[tuple[int, int | None, Event]] = []
        for pos, line, e in valid:
            if e.sku not in known:
                msg = f"unknown sku {e.sku!r} in catalogue {self.catalog.name!r}"
                refused.append(Rejection(pos, e.event_id, msg, line))
                continue
            old = stored.get(e.event_id)
            if old is None and e.event_id in first:
                first_pos, old = first[e.event_id]
                if _content(old) != _content(e):
                    msg = (
                        f"event_id {e.event_id!r} repeated with different content "
                        f"(first at position {first_pos})"
                    )
                    refused.append(Rejection(pos, e.event_id, msg, line))
                else:
                    report.duplicates += 1
                continue
            if old is not None:
                if _content(old) != _content(e):
                    msg = f"event_id {e.event_id!r} already stored with different content"
                    refused.append(Rejection(pos, e.event_id, msg, line))
                else:
                    report.duplicates += 1
                continue
            first[e.event_id] = (pos, e)
            new.append((pos, line, e))
        received = time.time()
        if self._conn.dialect == "postgresql":
            report.accepted += self._insert_concurrently(new, source, received, report, refused)
        else:  # BEGIN IMMEDIATE: no other writer since the duplicate check
            self._conn.executemany(
                "INSERT INTO events (event_id, customer_id, sku, type, ts, simulated, source, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.event_id, e.customer_id, e.sku, e.type, e.timestamp, int(e.simulated),
                     source, received)
                    for _, _, e in new
                ],
            )  # fmt: skip
            report.accepted += len(new)
        for r in sorted(refused, key=lambda r: r.position):
            reject(r)

    def _insert_concurrently(
        self,
        new: list[tuple[int, int | None, Event]],
        source: str,
        received: float,
        report: EventReport,
        refused: list[Rejection],
    ) -> int:
        """PostgreSQL: insert ``new`` unless another writer stored an id meanwhile (then a
        duplicate, or a conflict added to ``refused``); return how many were inserted."""
        if not new:
            return 0
        # arrival order (seq) follows the input; rows are inserted (and locked) by event id
        seqs = [int(r[0]) for r in self._conn.execute(
            "SELECT nextval(pg_get_serial_sequence('events', 'seq')) "
            "FROM generate_series(1, ?) ORDER BY 1", (len(new),)
        )]  # fmt: skip
        cols = list(zip(*(
            (e.event_id, e.customer_id, e.sku, e.type, e.timestamp, int(e.simulated))
            for _, _, e in new
        ), strict=True))  # fmt: skip
        inserted = {
            r[0]
            for r in self._conn.execute(
                "INSERT INTO events (event_id, customer_id, sku, type, ts, simulated, source, "
                "received_at, seq) "
                "SELECT i, c, s, t, ts, sim, ?, ?, q FROM unnest(?::text[], ?::text[], "
                "?::text[], ?::text[], ?::float8[], ?::int[], ?::bigint[]) "
                'AS u(i, c, s, t, ts, sim, q) ORDER BY i COLLATE "C" '
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                (source, received, *(pg_array(c) for c in cols), pg_array(seqs)),
            )
        }
        raced = [(pos, line, e) for pos, line, e in new if e.event_id not in inserted]
        stored = self._stored([e.event_id for _, _, e in raced])
        for pos, line, e in raced:
            old = stored.get(e.event_id)
            if old is not None and _content(old) == _content(e):
                report.duplicates += 1
            else:
                msg = f"event_id {e.event_id!r} already stored with different content"
                refused.append(Rejection(pos, e.event_id, msg, line))
        return len(inserted)

    def _stored(self, event_ids: Sequence[str]) -> dict[str, Event]:
        ids = sorted(set(event_ids))
        out: dict[str, Event] = {}
        for start in range(0, len(ids), _SQL_VARS):
            where, params = dialects.member_of(
                self._conn, "event_id", ids[start : start + _SQL_VARS], "text"
            )
            for row in self._conn.execute(f"SELECT {_COLUMNS} FROM events WHERE {where}", params):
                out[row[0]] = _row_event(row)
        return out

    def add_simulated(self, events: Iterable[Event]) -> EventReport:
        """Store the simulator's events, flagged simulated (source ``simulator``)."""
        return self.add((e.to_dict() for e in events), simulated=True, source="simulator")

    def delete_simulated(self) -> int:
        """Remove every simulated event; return how many were removed."""
        with self._lock, self._conn.transaction():
            n = self._conn.execute("DELETE FROM events WHERE simulated = 1").rowcount
        return int(n)

    # ---- reads -----------------------------------------------------------------------
    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()[0]

    def count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM events"))

    def count_customers(self) -> int:
        return int(self._one("SELECT COUNT(DISTINCT customer_id) FROM events"))

    def stats(self) -> dict[str, Any]:
        """Counts of events, customers, skus and simulated events; time span; per type."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT customer_id), COUNT(DISTINCT sku), "
                "COALESCE(SUM(simulated), 0), MIN(ts), MAX(ts) FROM events"
            ).fetchone()
            by_type = dict(
                self._conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall()
            )
        return {
            "events": int(row[0]),
            "customers": int(row[1]),
            "skus": int(row[2]),
            "simulated_events": int(row[3]),
            "first_ts": row[4],
            "last_ts": row[5],
            "by_type": {t: int(by_type.get(t, 0)) for t in EVENT_TYPES},
        }

    def customer_events(self, customer_id: str, limit: int | None = None) -> list[Event]:
        """A customer's events in time order; with ``limit``, the last ``limit`` of them."""
        with self._lock:
            if limit is None:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE customer_id = ? "
                    f"ORDER BY ts, {self._rowid}",
                    (customer_id,),
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE customer_id = ? "
                    f"ORDER BY ts DESC, {self._rowid} DESC LIMIT ?",
                    (customer_id, max(0, int(limit))),
                ).fetchall()
                rows.reverse()
        return [_row_event(r) for r in rows]

    def customer_ids(
        self, limit: int = 100, offset: int = 0, simulated: bool | None = None
    ) -> list[str]:
        """Customer ids in sorted order; ``simulated`` keeps only simulated (all events
        simulated) or only real customers."""
        having = ""
        if simulated is not None:
            having = f" HAVING MIN(simulated) = {1 if simulated else 0}"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT customer_id FROM events GROUP BY customer_id{having} "
                "ORDER BY customer_id LIMIT ? OFFSET ?",
                (int(limit), int(offset)),
            ).fetchall()
        return [r[0] for r in rows]

    def iter_events(self, batch_size: int = 10_000) -> Iterator[Event]:
        """All events ordered by (customer_id, ts), fetched in batches."""
        last: tuple[str, float, int] | None = None
        order = f"customer_id, ts, {self._rowid}"
        while True:
            with self._lock:
                if last is None:
                    rows = self._conn.execute(
                        f"SELECT {_COLUMNS}, {self._rowid} FROM events ORDER BY {order} LIMIT ?",
                        (batch_size,),
                    ).fetchall()
                else:
                    rows = self._conn.execute(
                        f"SELECT {_COLUMNS}, {self._rowid} FROM events "
                        f"WHERE ({order}) > (?, ?, ?) ORDER BY {order} LIMIT ?",
                        (*last, batch_size),
                    ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _row_event(row)
            tail = rows[-1]
            last = (tail[1], tail[4], tail[6])

    def is_simulated_customer(self, customer_id: str) -> bool:
        """True when the customer has events and all of them are simulated."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), MIN(simulated) FROM events WHERE customer_id = ?",
                (customer_id,),
            ).fetchone()
        return bool(row[0]) and row[1] == 1


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for pos, item in enumerate(items):
        chunk.append((pos, item))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _raw_id(raw: Any) -> str | None:
    if not isinstance(raw, Mapping):
        return None
    value = raw.get("event_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip():
        # echoed in reports: a lone surrogate would make them unencodable as UTF-8
        return value.strip()[:MAX_ID_CHARS].encode("utf-8", "replace").decode("utf-8")
    return None


def _line_of(raw: Any) -> int | None:
    if isinstance(raw, Mapping):
        line = raw.get(LINE_KEY)
        if isinstance(line, int) and not isinstance(line, bool):
            return line
    return None


# ---- files ---------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotFoundError(f"events file not found: {str(path)!r}")
    if not path.is_file():
        raise InvalidInputError(f"events file {str(path)!r} is not a regular file")


def _format_of(path: Path, fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown events format {fmt!r} (use {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise InvalidInputError(
            f"unsupported events file type {suffix or '(no extension)'!r} for {str(path)!r}: "
            f"use {', '.join(sorted(_SUFFIX_FORMATS))} (or name the format)"
        )
    return _SUFFIX_FORMATS[suffix]


def read_event_rows(path: Path, fmt: str = "auto") -> Iterator[dict[str, Any]]:
    """Stream raw event rows from a CSV, JSONL or Parquet file (validated by ``add``).

    Each row carries its line (row for Parquet) under ``"__line__"``; a line that cannot
    be parsed becomes a row with an ``"__error__"`` message, which ``add`` rejects.
    """
    path = Path(path)
    _check_file(path)
    kind = _format_of(path, fmt)
    if kind == "csv":
        return _read_csv(path)
    if kind == "jsonl":
        return _read_jsonl(path)
    if kind == "parquet":
        return _read_parquet(path)
    raise InvalidInputError(
        f"read_event_rows reads csv, jsonl or parquet, not {kind!r} (use import_events)"
    )


def _missing_columns(columns: Iterable[str], path: Path) -> None:
    have = set(columns)
    missing = [c for c in REQUIRED_FIELDS if c not in have]
    if missing:
        raise InvalidInputError(
            f"events file {str(path)!r} is missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(have)) or 'none'})"
        )


def csv_records(
    path: Path, required: Sequence[str], what: str
) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line, row) per record of a CSV with a header; row is an error message when the
    record has the wrong number of fields. Raises for a missing file or missing columns."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{what} not found: {str(path)!r}")
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(2**31 - 1)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        columns: list[str] | None = None
        prev = 0
        try:
            for record in reader:
                start, prev = prev + 1, reader.line_num
                if not any(cell.strip() for cell in record):
                    continue
                if columns is None:
                    columns = [c.strip().lower() for c in record]
                    missing = [c for c in required if c not in columns]
                    if missing:
                        raise InvalidInputError(
                            f"{what} {str(path)!r} is missing column(s) {', '.join(missing)} "
                            f"(found: {', '.join(c for c in columns if c) or 'none'})"
                        )
                    continue
                if len(record) != len(columns):
                    yield (
                        start,
                        (f"line {start}: expected {len(columns)} fields, found {len(record)}"),
                    )
                    continue
                yield start, dict(zip(columns, record, strict=True))
        except csv.Error as exc:
            raise InvalidInputError(
                f"malformed CSV in {str(path)!r} in the record starting on line {prev + 1}: {exc}"
            ) from None
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"{what} {str(path)!r} is not UTF-8 text (after line {prev})"
            ) from None
    if columns is None:
        raise InvalidInputError(f"{what} {str(path)!r} is empty (no header line)")


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    for line, row in csv_records(path, REQUIRED_FIELDS, "events file"):
        if isinstance(row, str):  # a record with the wrong number of fields
            yield {ERROR_KEY: row, LINE_KEY: line}
        else:
            yield {**row, LINE_KEY: line}


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield {ERROR_KEY: f"line {lineno}: not UTF-8 (byte {exc.start})", LINE_KEY: lineno}
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield {
                    ERROR_KEY: f"line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})",
                    LINE_KEY: lineno,
                }
                continue
            if not isinstance(obj, dict):
                yield {
                    ERROR_KEY: f"line {lineno}: expected a JSON object, not {type(obj).__name__}",
                    LINE_KEY: lineno,
                }
                continue
            obj[LINE_KEY] = lineno
            yield obj


def _read_parquet(path: Path, batch_size: int = 65_536) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise InvalidInputError(
            "reading Parquet needs pyarrow: pip install pyarrow (or use CSV / JSONL)"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InvalidInputError(f"cannot read Parquet file {str(path)!r}: {exc}") from None
    names = list(pf.schema_arrow.names)
    lowered = {n.lower(): n for n in names}
    _missing_columns(lowered, path)
    row_no = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            row_no += 1
            row = {k.lower(): v for k, v in rec.items()}
            row[LINE_KEY] = row_no
            yield row


def _sniff_csv(path: Path) -> str:
    """ "hm" / "retailrocket" when a CSV's header is one of those public formats, else "csv"."""
    with open(path, encoding="utf-8-sig", newline="", errors="replace") as fh:
        header = next(csv.reader(io.StringIO(fh.readline())), [])
    cols = {c.strip().lower() for c in header}
    if {"t_dat", "customer_id", "article_id"} <= cols:
        return "hm"
    if {"visitorid", "itemid", "event"} <= cols:
        return "retailrocket"
    return "csv"


def import_events(
    store: EventStore,
    path: str | Path,
    *,
    fmt: str = "auto",
    simulated: bool = False,
    rejects_path: Path | None = None,
    now: float | None = None,
    strict: bool = False,
    on_commit: Callable[[int, EventReport], None] | None = None,
) -> EventReport:
    """Import an events file into ``store``; return the report.

    ``fmt``: auto (by extension; a CSV with the H&M or RetailRocket header is detected),
    csv, jsonl, parquet, hm (H&M ``transactions_train.csv``) or retailrocket
    (``events.csv``). With ``rejects_path`` every rejection is written there as JSON
    lines (the file is replaced atomically when the import ends). Re-running an import is
    harmless: events already stored come back as duplicates. ``on_commit`` is called after
    each committed chunk (see :meth:`EventStore.add`).
    """
    from shoplens.personalize import loaders

    p = Path(path)
    _check_file(p)
    kind = _format_of(p, fmt)
    if kind == "csv" and fmt.lower() == "auto":
        kind = _sniff_csv(p)
    rows: Iterator[dict[str, Any]]
    if kind == "hm":
        rows = loaders.hm_events(p)
    elif kind == "retailrocket":
        rows = loaders.retailrocket_events(p)
    else:
        rows = read_event_rows(p, kind)
    source = f"import:{kind}:{p.name}"[:200]
    if rejects_path is None:
        return store.add(
            rows, simulated=simulated, source=source, now=now, strict=strict, on_commit=on_commit
        )
    with atomic_write(rejects_path) as fh:

        def write(r: Rejection) -> None:
            fh.write(json.dumps(r.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n")

        return store.add(
            rows,
            simulated=simulated,
            source=source,
            now=now,
            strict=strict,
            on_reject=write,
            on_commit=on_commit,
        )
