"""The catalogue and events stores on SQLite and on a real PostgreSQL server.

The same scenarios run on both backends (parametrised) and must give the same, hand-checked
results; migrations are checked from an empty database and on existing SQLite files; several
writer processes post overlapping events at once. The server is started by
:class:`shoplens.db.local.LocalPostgres` (``initdb`` + ``pg_ctl`` on a temporary folder and
a loopback port); the PostgreSQL cases skip, with the reason, only where it cannot start.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoplens.catalog.store import SCHEMA as CATALOG_SCHEMA
from shoplens.catalog.store import Catalog, ProductRecord, UpsertCounts, list_catalogs
from shoplens.db.adapter import PgConnection, Row, numbered, parse_database_url, pg_array
from shoplens.db.local import LocalPostgres, PostgresUnavailable
from shoplens.db.migrate import HEADS, current_postgres, script_heads, upgrade_postgres
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.personalize import events as events_mod
from shoplens.personalize.events import SCHEMA as EVENTS_SCHEMA
from shoplens.personalize.events import EventStore, known_skus

from ..helpers import EVENT_NOW, ev

NOW = EVENT_NOW
SKUS = ["A1", "A2", "B1", "B2"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server for the whole session (skips with the reason if none starts)."""
    try:
        server = LocalPostgres(durable=False).start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL server cannot start here: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_url(postgres: LocalPostgres) -> str:
    return postgres.create_database("shoplens_test")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Run the test on SQLite files, then on PostgreSQL (catalogues dropped afterwards)."""
    if request.param == "postgresql":
        monkeypatch.setenv("SHOPLENS_DATABASE_URL", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("SHOPLENS_DATABASE_URL", raising=False)
    yield request.param
    if request.param == "postgresql":
        for name in list_catalogs():
            Catalog.open(name).delete()


def rec(sku: str, title: str = "t", category: str = "c", **attrs: str) -> ProductRecord:
    return ProductRecord(
        sku=sku, title=title, category=category, image_key=f"{sku}.png", attributes=dict(attrs)
    )


# ---- catalogue -----------------------------------------------------------------------


def test_catalog_store(backend: str) -> None:
    cat = Catalog.create("shop")
    assert cat.dialect == backend and list_catalogs() == ["shop"]
    assert cat.upsert([rec("a", category="Bag", color="red"), rec("b", category="Bag")]) == (
        UpsertCounts(added=2)
    )
    id_a, id_b = cat.get("a").id, cat.get("b").id
    assert (id_a, id_b) == (1, 2)
    counts = cat.upsert([rec("a", category="Bag", color="red"), rec("b", "new", "Bag"),
                         rec("c", category="Coat", color="red")])  # fmt: skip
    assert counts == UpsertCounts(added=1, updated=1, unchanged=1)
    assert cat.get("a").id == id_a and cat.get("b").title == "new" and cat.count() == 3
    got = cat.get_by_ids([id_b, id_a, 99])
    assert sorted(got) == [1, 2] and got[id_a].attributes == {"color": "red"}
    assert [p.sku for p in cat.iter_products(batch_size=2)] == ["a", "b", "c"]
    assert cat.categories() == {"Bag": 2, "Coat": 1}
    assert cat.filter_ids() is None
    assert sorted(cat.filter_ids(["Bag"]) or []) == [1, 2]
    assert sorted(cat.filter_ids(None, {"color": "red"}) or []) == [1, 3]
    assert cat.filter_ids(["Bag"], {"color": "red"}) == [1]
    assert cat.filter_ids(["Shoe"]) == [] and cat.filter_ids(None, {"color": "blue"}) == []
    with pytest.raises(InvalidInputError):
        cat.filter_ids(None, {"color') OR 1=1 --": "x"})
    with pytest.raises(NotFoundError):
        cat.get("zz")
    # an ingest: products and its record commit together, and the version changes
    assert cat.version() == "0"
    with cat.transaction() as conn:
        cat.record_ingest(conn, "manual", NOW, Catalog.upsert_in(conn, [rec("d")]), 2)
    v1 = cat.version()
    assert v1 != "0" and cat.count() == 4
    with pytest.raises(RuntimeError), cat.transaction() as conn:
        Catalog.upsert_in(conn, [rec("e"), rec("f")])
        cat.record_ingest(conn, "crashed", NOW, UpsertCounts(added=2), 0)
        raise RuntimeError("crash in the middle of an ingest")
    assert cat.count() == 4 and cat.version() == v1
    cat.set_meta("note", "x")
    assert cat.get_meta("note") == "x" and cat.get_meta("none", "d") == "d"
    cat.close()
    with pytest.raises(NotFoundError, match=r"unknown catalogue 'nope'.*known: shop"):
        Catalog.open("nope")
    with Catalog.open("shop") as again:
        assert again.count() == 4 and again.get("d").id == 4


def test_product_cache_follows_writes_from_other_connections(backend: str) -> None:
    reader = Catalog.create("shop")
    reader.upsert([rec("a", "first"), rec("b", "bee")])
    ids = {p.sku: p.id for p in reader.iter_products()}
    assert reader.get_by_ids([ids["a"]])[ids["a"]].title == "first"  # now cached
    reader.upsert([rec("a", "second")])  # this connection's own write
    assert reader.get_by_ids([ids["a"]])[ids["a"]].title == "second"
    with Catalog.open("shop") as writer:  # another connection (another process alike)
        writer.upsert([rec("a", "third"), rec("c", "sea")])
    got = reader.get_by_ids([ids["a"], ids["b"]])
    assert got[ids["a"]].title == "third" and got[ids["b"]].title == "bee"
    # get(sku) reads through the same cache and follows writes the same way
    assert reader.get("a").title == "third" and reader.get("a") is reader.get("a")
    with Catalog.open("shop") as writer:
        writer.upsert([rec("a", "fourth")])
    assert reader.get("a").title == "fourth" and reader.get("c").title == "sea"
    reader.close()


def test_concurrent_catalog_writers_take_turns(backend: str) -> None:
    Catalog.create("shop").close()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            with Catalog.open("shop") as cat:
                for r in range(3):
                    cat.upsert([rec(f"s{i}", f"t{t}-{r}") for i in range(t * 20, t * 20 + 40)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with Catalog.open("shop") as cat:
        assert cat.count() == 80
        assert sorted(p.id for p in cat.iter_products()) == list(range(1, 81))


# ---- events --------------------------------------------------------------------------


@pytest.fixture
def shop(backend: str) -> Iterator[Catalog]:
    cat = Catalog.create("shop")
    cat.upsert(rec(s, f"product {s}", s[0]) for s in SKUS)
    yield cat
    cat.close()


def test_events_store(shop: Catalog) -> None:
    with EventStore.open(shop) as store:
        first = store.add(
            [
                ev("a3", "alice", "A2", type="purchase", timestamp=NOW - 10),
                ev("a1", "alice", "A1", timestamp=NOW - 30),
                ev("a2", "alice", "B1", type="click", timestamp=NOW - 20),
                ev("b1", "bob", "A1", timestamp=NOW - 25),
                ev("x1", "bob", "NOPE"),
                ev("b1", "bob", "A1", timestamp=NOW - 25),  # repeated: a duplicate
                ev("b1", "bob", "A2", timestamp=NOW - 25),  # repeated, other content
            ],
            now=NOW,
        )
        assert (first.accepted, first.duplicates, first.rejected_count) == (4, 1, 2)
        assert [(r.position, r.reason) for r in first.rejected] == [
            (4, "unknown sku 'NOPE' in catalogue 'shop'"),
            (6, "event_id 'b1' repeated with different content (first at position 3)"),
        ]
        again = store.add([ev("a1", "alice", "A1", timestamp=NOW - 30),
                           ev("a2", "alice", "B2", timestamp=NOW - 20)], now=NOW)  # fmt: skip
        assert (again.accepted, again.duplicates) == (0, 1)
        assert again.rejected[0].reason == "event_id 'a2' already stored with different content"
        # equal timestamps keep their arrival order, whatever the ids
        store.add([ev("z9", "carol", timestamp=NOW - 5), ev("m5", "carol", timestamp=NOW - 5)],
                  now=NOW)  # fmt: skip
        store.add([ev("s1", "sim-1", "B2", type="add_to_cart")], simulated=True, now=NOW)
        assert [e.event_id for e in store.customer_events("alice")] == ["a1", "a2", "a3"]
        assert [e.event_id for e in store.customer_events("alice", limit=2)] == ["a2", "a3"]
        assert [e.event_id for e in store.customer_events("carol")] == ["z9", "m5"]
        assert store.customer_events("nobody") == []
        assert store.count() == 7 and store.count_customers() == 4
        assert store.stats() == {
            "events": 7,
            "customers": 4,
            "skus": 4,
            "simulated_events": 1,
            "first_ts": NOW - 1000,
            "last_ts": NOW - 5,
            "by_type": {"view": 4, "click": 1, "add_to_cart": 1, "purchase": 1},
        }
        assert store.customer_ids() == ["alice", "bob", "carol", "sim-1"]
        assert store.customer_ids(limit=1, offset=1) == ["bob"]
        assert store.customer_ids(simulated=True) == ["sim-1"]
        assert store.is_simulated_customer("sim-1") and not store.is_simulated_customer("bob")
        assert [(e.customer_id, e.event_id) for e in store.iter_events(batch_size=2)] == [
            ("alice", "a1"), ("alice", "a2"), ("alice", "a3"), ("bob", "b1"),
            ("carol", "z9"), ("carol", "m5"), ("sim-1", "s1"),
        ]  # fmt: skip
        assert known_skus(shop, ["A1", "NOPE", "B2"]) == {"A1", "B2"}
        strict = store.add([ev("n1"), ev("n2", type="bogus")], now=NOW, strict=True)
        assert strict.aborted and store.count() == 7
        assert store.add([ev("n1"), ev("n2")], now=NOW, strict=True).accepted == 2
        assert store.delete_simulated() == 1 and store.count() == 8
    with EventStore.open(shop) as reopened:
        assert reopened.count() == 8


def test_events_acknowledged_only_when_durable(
    shop: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_mod, "CHUNK", 4)
    seen: list[tuple[int, int]] = []
    with EventStore.open(shop) as store, EventStore.open(shop) as other:

        def ack(n: int, report: Any) -> None:
            seen.append((n, other.count()))  # what another connection sees at the ack

        events = [ev(f"e{i}", sku=[*SKUS, "NOPE"][i % 5]) for i in range(10)]
        report = store.add(events, now=NOW, on_commit=ack)
    assert seen == [(4, 4), (8, 7), (10, 8)] and report.accepted == 8


def _writer(env: dict[str, str], worker: int, n: int, batch: int, barrier: Any, out: Any) -> None:
    """One writer process: ``n`` events from id ``worker * n // 2`` on (half overlap the
    next worker's), posted ``batch`` at a time, as a service worker would."""
    os.environ.pop("SHOPLENS_DATABASE_URL", None)
    os.environ.update(env)  # the test's settings, not those the fork server started with
    with Catalog.open("shop") as cat, EventStore.open(cat) as store:
        start = worker * n // 2
        events = [ev(f"e{i:05d}", f"c{i % 7}", SKUS[i % 4], timestamp=NOW - i)
                  for i in range(start, start + n)]  # fmt: skip
        barrier.wait()
        totals = [0, 0, 0]
        for k in range(0, n, batch):
            report = store.add(events[k : k + batch], now=NOW)
            totals[0] += report.accepted
            totals[1] += report.duplicates
            totals[2] += report.rejected_count
    out.put(totals)


def test_concurrent_writer_processes_lose_and_duplicate_nothing(shop: Catalog) -> None:
    workers, n, batch = 4, 500, 50
    # separate processes like service workers, forked from a clean server process that
    # has imported the stores once (no connection of this process is inherited)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    env = {k: v for k, v in os.environ.items() if k in ("SHOPLENS_HOME", "SHOPLENS_DATABASE_URL")}
    procs = [
        ctx.Process(target=_writer, args=(env, w, n, batch, barrier, out)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    totals = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    unique = (workers - 1) * n // 2 + n  # 1250 distinct ids among 2000 posted
    accepted, duplicates, rejected = (sum(t[i] for t in totals) for i in range(3))
    assert (accepted, duplicates, rejected) == (unique, workers * n - unique, 0)
    with EventStore.open(shop) as store:
        assert store.count() == unique
        stored = {e.event_id: e for e in store.iter_events()}
    assert sorted(stored) == [f"e{i:05d}" for i in range(unique)]
    assert all(stored[f"e{i:05d}"].timestamp == NOW - i for i in range(unique))


def test_event_another_writer_commits_meanwhile_is_a_duplicate_or_a_conflict(
    pg_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL writers run side by side: an id that another transaction inserts after
    this call's duplicate check is classified when that transaction commits."""
    monkeypatch.setenv("SHOPLENS_DATABASE_URL", pg_url)
    cat = Catalog.create("race")
    cat.upsert(rec(s) for s in SKUS)
    params = parse_database_url(pg_url)
    other, watcher = PgConnection(params, "race"), PgConnection(params)
    try:
        with EventStore.open(cat) as store:
            other.begin()
            for event_id, sku in (("r1", "A1"), ("r2", "A2")):
                other.execute(
                    "INSERT INTO events (event_id, customer_id, sku, type, ts, simulated, "
                    "source, received_at) VALUES (?, 'c1', ?, 'view', ?, 0, 'other', ?)",
                    (event_id, sku, NOW - 1000, NOW),
                )
            done: dict[str, Any] = {}
            batch = [ev("r1"), ev("r2", sku="B1"), ev("r3")]
            writer = threading.Thread(target=lambda: done.update(r=store.add(batch, now=NOW)))
            writer.start()
            for _ in range(600):  # until the writer waits for the uncommitted rows
                waiting = watcher.execute(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).fetchone()[0]
                if waiting or not writer.is_alive():
                    break
                threading.Event().wait(0.05)
            assert waiting == 1
            other.commit()
            writer.join(timeout=60)
            report = done["r"]
            assert (report.accepted, report.duplicates, report.rejected_count) == (1, 1, 1)
            assert report.rejected[0].position == 1
            assert (
                report.rejected[0].reason == "event_id 'r2' already stored with different content"
            )
            assert store.count() == 3
            assert [e.sku for e in store.customer_events("c1")] == ["A1", "A2", "A1"]
    finally:
        other.close()
        watcher.close()
        cat.delete()


# ---- migrations, settings, adapter --------------------------------------------------


def test_heads_constant_matches_migration_scripts() -> None:
    assert script_heads() == HEADS


def test_migrations_from_empty_database(postgres: LocalPostgres, home: Path, monkeypatch: Any,
                                        capsys: Any) -> None:  # fmt: skip
    url = postgres.create_database("migrations_test")
    params = parse_database_url(url)
    conn = PgConnection(params, "fresh")
    assert current_postgres(conn) == []
    upgrade_postgres(params, "fresh")
    upgrade_postgres(params, "fresh")  # a second run changes nothing
    assert current_postgres(conn) == sorted(HEADS.values())
    tables = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fresh'"
    ).fetchall()
    assert sorted(r[0] for r in tables) == [
        "alembic_version", "events", "ingests", "meta", "product_changes", "products"
    ]  # fmt: skip
    conn.close()
    monkeypatch.setenv("SHOPLENS_DATABASE_URL", url)
    assert list_catalogs() == ["fresh"]
    rows = _cli_json("db", "current", capsys=capsys)
    assert rows == [{"catalog": "fresh", "backend": "postgresql",
                     "current": ["c0001", "e0001"], "heads": ["c0001", "e0001"]}]  # fmt: skip
    assert _cli_json("db", "upgrade", "--catalog", "fresh", capsys=capsys) == rows


def _sqlite_schema(path: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version' ORDER BY name"
        ).fetchall()
    return [(n, " ".join((s or "").split())) for n, s in rows]


def test_sqlite_files_keep_their_schema_and_record_revisions(
    home: Path, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    monkeypatch.delenv("SHOPLENS_DATABASE_URL", raising=False)
    with Catalog.create("shop") as cat:
        cat.upsert([rec("a")])
        EventStore.open(cat).close()
    root = home / "catalogs" / "shop"
    before = {f: _sqlite_schema(root / f) for f in ("catalog.sqlite", "events.sqlite")}
    assert _cli_json("db", "current", capsys=capsys)[0]["current"] == []
    rows = _cli_json("db", "upgrade", capsys=capsys)
    assert rows[0]["current"] == rows[0]["heads"] == ["c0001", "e0001"]
    assert {f: _sqlite_schema(root / f) for f in before} == before  # only the bookkeeping
    with Catalog.open("shop") as cat:
        assert cat.get("a").id == 1
    # the migrations from an empty file give exactly the schema the stores create
    from shoplens.db.migrate import upgrade_sqlite

    for branch, script in (("catalog", CATALOG_SCHEMA), ("events", EVENTS_SCHEMA)):
        with contextlib.closing(sqlite3.connect(tmp_path / f"{branch}-store.sqlite")) as conn:
            conn.executescript(script)
        upgrade_sqlite(tmp_path / f"{branch}-alembic.sqlite", branch)
        assert _sqlite_schema(tmp_path / f"{branch}-alembic.sqlite") == _sqlite_schema(
            tmp_path / f"{branch}-store.sqlite"
        )


def _cli_json(*args: str, capsys: Any) -> Any:
    from shoplens.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([*args, "--json"])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@localhost/db", "unsupported SHOPLENS_DATABASE_URL scheme 'mysql'"),
        ("not a url", "invalid SHOPLENS_DATABASE_URL"),
        ("postgresql://u@localhost:5432/", "names no database"),
        ("postgresql://u@localhost/db?sslmode=sometimes", "sslmode 'sometimes'"),
        ("postgresql://u@localhost/db?pool=3", "unsupported SHOPLENS_DATABASE_URL option"),
        ("postgresql://u:secret@127.0.0.1:1/db", "cannot connect to PostgreSQL at "
         "postgresql://u@127.0.0.1:1/db"),
    ],
)  # fmt: skip
def test_bad_database_url_is_a_one_line_error(
    url: str, message: str, home: Path, monkeypatch: Any, capsys: Any
) -> None:
    from shoplens.cli import main

    monkeypatch.setenv("SHOPLENS_DATABASE_URL", url)
    with pytest.raises(SystemExit) as done:
        main(["catalogs"])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "secret" not in err and "Traceback" not in err


def test_array_parameters_and_long_statements(pg_url: str, monkeypatch: Any) -> None:
    from shoplens.db import adapter

    monkeypatch.setattr(adapter, "CONNECT_TIMEOUT_S", 0.5)  # a statement may outlast it
    conn = PgConnection(parse_database_url(pg_url))
    assert conn.execute("SELECT pg_sleep(1.0), 7").fetchone()[1] == 7
    texts = ['q"uote', "back\\slash", "a,b", "{brace}", "NULL", "", " sp ", "ünï €", "x'y"]
    floats = [1_700_000_000.123456, 0.1, 1e-300, 5e15 + 0.5]
    try:
        got = conn.execute(
            "SELECT ?::text[], ?::float8[], ?::bigint[]",
            (pg_array(texts), pg_array(floats), pg_array([1, -2, 2**62])),
        ).fetchone()
    finally:
        conn.close()
    assert (got[0], got[1], got[2]) == (texts, floats, [1, -2, 2**62])


def test_placeholders_and_rows() -> None:
    assert numbered("SELECT '?', \"a?\" FROM t WHERE x = ? AND y IN (?, ?)") == (
        "SELECT '?', \"a?\" FROM t WHERE x = $1 AND y IN ($2, $3)"
    )
    assert numbered("SELECT 'it''s ?' WHERE a = ?") == "SELECT 'it''s ?' WHERE a = $1"
    row = Row([1, "a"], {"id": 0, "sku": 1})
    assert (row["sku"], row[0], tuple(row), row.keys(), len(row)) == (
        "a", 1, (1, "a"), ["id", "sku"], 2
    )  # fmt: skip
    assert row == (1, "a") and dict([Row(["k", 2], {"t": 0, "n": 1})]) == {"k": 2}
