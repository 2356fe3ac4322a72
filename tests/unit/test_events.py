"""The customer events store: validation, idempotency, strict mode, queries and file import."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from shoplens.catalog.store import Catalog, ProductRecord
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.personalize import events as events_mod
from shoplens.personalize.events import (
    EventStore,
    import_events,
    known_skus,
    read_event_rows,
    validate_event,
)

from ..helpers import EVENT_NOW, ev

NOW = EVENT_NOW
SKUS = ["A1", "A2", "B1", "B2"]


@pytest.fixture
def catalog(home: Path) -> Iterator[Catalog]:
    cat = Catalog.create("shop")
    cat.upsert(
        ProductRecord(sku=s, title=f"product {s}", category=s[0], image_key=f"{s}.png")
        for s in SKUS
    )
    yield cat
    cat.close()


@pytest.fixture
def store(catalog: Catalog) -> Iterator[EventStore]:
    with EventStore.open(catalog) as s:
        yield s


def reasons(report: Any) -> list[str]:
    return [r.reason for r in report.rejected]


# ---- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event_id": None}, "missing event_id"),
        ({"event_id": "  "}, "empty event_id"),
        ({"customer_id": ""}, "empty customer_id"),
        ({"sku": None}, "missing sku"),
        ({"customer_id": "x" * 129}, "customer_id is longer than 128"),
        ({"event_id": ["a"]}, "event_id must be text"),
        ({"type": "like"}, "unknown type 'like' (allowed: view, click, add_to_cart, purchase)"),
        ({"type": None}, "missing type"),
        ({"timestamp": None}, "missing timestamp"),
        ({"timestamp": "yesterday"}, "timestamp 'yesterday' is neither a number nor an ISO"),
        ({"timestamp": float("nan")}, "not a finite number"),
        ({"timestamp": "inf"}, "timestamp 'inf' is not a finite number"),
        ({"timestamp": -5}, "timestamp -5 is negative"),
        ({"timestamp": NOW + 301}, f"timestamp {NOW + 301!r}"),
        ({"timestamp": True}, "timestamp must be a number"),
        ({"simulated": "maybe"}, "simulated must be true or false"),
        ({"customer_id": "sim-7"}, "reserved for simulated events"),
    ],
)
def test_invalid_events_are_rejected_with_reason(
    store: EventStore, change: dict[str, Any], reason: str
) -> None:
    bad = {**ev("bad"), **change}
    report = store.add([ev("good"), bad], now=NOW)
    assert report.accepted == 1 and report.rejected_count == 1
    (rej,) = report.rejected
    assert rej.position == 1
    assert reason in rej.reason
    assert [e.event_id for e in store.customer_events("c1")] == ["good"]
    assert store.count() == 1


def test_future_timestamp_message_names_value_and_skew_is_allowed() -> None:
    with pytest.raises(InvalidInputError, match=r"in the future.*300 s"):
        validate_event(ev("e", timestamp=NOW + 3600), now=NOW)
    assert validate_event(ev("e", timestamp=NOW + 299), now=NOW).timestamp == NOW + 299


def test_timestamp_formats() -> None:
    iso = datetime.fromtimestamp(NOW - 60, timezone.utc)
    cases = {
        NOW - 60: NOW - 60,
        int(NOW - 60): NOW - 60,
        str(NOW - 60): NOW - 60,
        (NOW - 60) * 1000: NOW - 60,  # milliseconds
        str(int((NOW - 60) * 1000)): NOW - 60,
        iso.strftime("%Y-%m-%dT%H:%M:%SZ"): NOW - 60,
        iso.strftime("%Y-%m-%dT%H:%M:%S"): NOW - 60,  # naive = UTC
        iso.isoformat(): NOW - 60,
        iso.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+02:00"): NOW - 60 - 7200,
        "2020-01-02": datetime(2020, 1, 2, tzinfo=timezone.utc).timestamp(),
    }
    for raw, want in cases.items():
        assert validate_event(ev("e", timestamp=raw), now=NOW).timestamp == want, raw


def test_type_aliases_ids_and_simulated_key() -> None:
    e = validate_event(ev(" e1 ", customer=123, type="AddToCart"), now=NOW)  # type: ignore[arg-type]
    assert (e.event_id, e.customer_id, e.type, e.simulated) == ("e1", "123", "add_to_cart", False)
    assert validate_event(ev("e", type="add-to-cart"), now=NOW).type == "add_to_cart"
    assert validate_event(ev("e", type="transaction"), now=NOW).type == "purchase"
    assert validate_event(ev("e", simulated=True), now=NOW).simulated
    assert validate_event(ev("e"), now=NOW, simulated=True).simulated
    assert validate_event(ev("e", simulated=False), now=NOW, simulated=True).simulated
    assert validate_event(ev("e", customer="sim-1"), now=NOW, simulated=True).simulated
    assert validate_event(ev("e", extra="ignored"), now=NOW).sku == "A1"


def test_several_problems_reported_together() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_event({"event_id": "e", "type": "nope"}, now=NOW)
    msg = info.value.message
    assert "missing customer_id" in msg and "missing sku" in msg
    assert "unknown type" in msg and "missing timestamp" in msg


def test_unknown_sku_and_non_object_rejected(store: EventStore) -> None:
    report = store.add([ev("e1", sku="NOPE"), "not an event", ev("e3")], now=NOW)  # type: ignore[list-item]
    assert report.accepted == 1
    assert reasons(report) == [
        "unknown sku 'NOPE' in catalogue 'shop'",
        "an event must be an object, not str",
    ]
    assert [r.position for r in report.rejected] == [0, 1]
    assert report.rejected[0].event_id == "e1"
    assert known_skus(store.catalog, ["A1", "NOPE", "B2"]) == {"A1", "B2"}


# ---- idempotency and strict mode ------------------------------------------------------


def test_replay_is_idempotent_and_conflicts_are_reported(store: EventStore) -> None:
    batch = [ev(f"e{i}", customer=f"c{i % 2}", sku=SKUS[i % 4]) for i in range(6)]
    first = store.add(batch, now=NOW)
    assert (first.accepted, first.duplicates, first.rejected_count) == (6, 0, 0)
    again = store.add(batch, now=NOW)
    assert (again.accepted, again.duplicates, again.rejected_count) == (0, 6, 0)
    assert store.count() == 6
    conflict = store.add([ev("e0", customer="c0", sku="B2")], now=NOW)
    assert conflict.accepted == 0 and conflict.duplicates == 0
    assert reasons(conflict) == ["event_id 'e0' already stored with different content"]
    assert store.customer_events("c0")[0].sku == "A1"  # the stored event is untouched


def test_repeats_inside_one_batch(store: EventStore) -> None:
    report = store.add([ev("e1"), ev("e1"), ev("e1", sku="A2"), ev("e2")], now=NOW)
    assert (report.accepted, report.duplicates, report.rejected_count) == (2, 1, 1)
    assert "repeated with different content (first at position 0)" in reasons(report)[0]
    assert store.count() == 2


def test_strict_rejects_whole_batch(store: EventStore) -> None:
    report = store.add([ev("e1"), ev("e2", type="bogus"), ev("e3")], now=NOW, strict=True)
    assert report.aborted and report.accepted == 0 and report.rejected_count == 1
    assert "none of the 3 were stored" in report.message
    assert store.count() == 0
    ok = store.add([ev("e1"), ev("e3")], now=NOW, strict=True)
    assert not ok.aborted and ok.accepted == 2 and store.count() == 2


def test_strict_spans_chunks(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_mod, "CHUNK", 3)
    batch = [ev(f"e{i}") for i in range(8)] + [ev("bad", sku="NOPE")]
    report = store.add(batch, now=NOW, strict=True)
    assert report.aborted and store.count() == 0
    report = store.add(batch, now=NOW)  # non-strict: chunk by chunk
    assert report.accepted == 8 and report.rejected[0].position == 8
    assert store.count() == 8


def test_database_error_rolls_back_the_chunk(store: EventStore) -> None:
    def boom() -> Iterator[dict[str, Any]]:
        yield ev("e1")
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        store.add(boom(), now=NOW)
    assert store.count() == 0
    store._conn.execute("CREATE TRIGGER fail BEFORE INSERT ON events BEGIN "
                        "SELECT RAISE(ABORT, 'disk says no'); END")  # fmt: skip
    with pytest.raises(sqlite3.DatabaseError):
        store.add([ev("e1"), ev("e2")], now=NOW)
    store._conn.execute("DROP TRIGGER fail")
    assert store.count() == 0
    assert store.add([ev("e1")], now=NOW).accepted == 1


def test_rejection_details_are_capped(store: EventStore) -> None:
    report = store.add(({"event_id": f"x{i}"} for i in range(1_200)), now=NOW)
    assert report.rejected_count == 1_200 and len(report.rejected) == 1_000
    d = report.to_dict()
    assert d["rejected_count"] == 1_200 and d["rejected_truncated"] is True
    assert d["rejected"][0]["event_id"] == "x0"


# ---- queries -------------------------------------------------------------------------


def test_queries(store: EventStore) -> None:
    store.add(
        [
            ev("a3", "alice", "A2", type="purchase", timestamp=NOW - 10),
            ev("a1", "alice", "A1", timestamp=NOW - 30),
            ev("a2", "alice", "B1", type="click", timestamp=NOW - 20),
            ev("b1", "bob", "A1", timestamp=NOW - 25),
        ],
        now=NOW,
    )
    store.add([ev("s1", "sim-1", "B2", type="add_to_cart")], simulated=True, now=NOW)
    assert [e.event_id for e in store.customer_events("alice")] == ["a1", "a2", "a3"]
    assert [e.event_id for e in store.customer_events("alice", limit=2)] == ["a2", "a3"]
    assert store.customer_events("nobody") == []
    assert store.count() == 5 and store.count_customers() == 3
    stats = store.stats()
    assert stats == {
        "events": 5,
        "customers": 3,
        "skus": 4,
        "simulated_events": 1,
        "first_ts": NOW - 1000,
        "last_ts": NOW - 10,
        "by_type": {"view": 2, "click": 1, "add_to_cart": 1, "purchase": 1},
    }
    assert store.customer_ids() == ["alice", "bob", "sim-1"]
    assert store.customer_ids(limit=1, offset=1) == ["bob"]
    assert store.customer_ids(simulated=True) == ["sim-1"]
    assert store.customer_ids(simulated=False) == ["alice", "bob"]
    assert store.is_simulated_customer("sim-1")
    assert not store.is_simulated_customer("alice")
    assert not store.is_simulated_customer("nobody")
    events = list(store.iter_events(batch_size=2))
    assert [(e.customer_id, e.event_id) for e in events] == [
        ("alice", "a1"), ("alice", "a2"), ("alice", "a3"), ("bob", "b1"), ("sim-1", "s1")
    ]  # fmt: skip
    assert events[-1].simulated and not events[0].simulated
    assert store.delete_simulated() == 1
    assert store.count() == 4 and store.stats()["simulated_events"] == 0


def test_empty_store_stats_and_persistence(catalog: Catalog) -> None:
    with EventStore.open(catalog) as store:
        assert store.stats()["first_ts"] is None and store.stats()["events"] == 0
        store.add([ev("e1")], now=NOW)
    assert (catalog.root / "events.sqlite").is_file()
    with EventStore.open(catalog) as store:
        assert store.count() == 1
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_concurrent_adds_from_threads(store: EventStore) -> None:
    def work(t: int) -> None:
        for i in range(20):
            store.add([ev(f"t{t}-{i}", customer=f"c{t}")], now=NOW)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.count() == 80 and store.count_customers() == 4


# ---- file import ---------------------------------------------------------------------


def test_csv_import_round_trip_with_rejects_file(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "\ufeffEvent_ID,customer_id,sku,type,timestamp,extra\n"
        "e1,alice,A1,view,2023-11-14T10:00:00Z,x\n"
        "e2,alice,A2,addtocart,1699956000000,y\n"
        "\n"
        "e3,bob,NOPE,view,1699956000,z\n"
        "e4,bob,A1,view\n",
        encoding="utf-8",
    )
    rejects = tmp_path / "out" / "rejects.jsonl"
    report = import_events(store, path, rejects_path=rejects, now=NOW)
    assert (report.accepted, report.rejected_count) == (2, 2)
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert lines == [
        {"position": 2, "event_id": "e3", "reason": "unknown sku 'NOPE' in catalogue 'shop'",
         "line": 5},
        {"position": 3, "event_id": None, "reason": "line 6: expected 6 fields, found 4",
         "line": 6},
    ]  # fmt: skip
    got = store.customer_events("alice")
    assert [(e.event_id, e.type, e.timestamp) for e in got] == [
        ("e1", "view", 1699956000.0),
        ("e2", "add_to_cart", 1699956000.0),
    ]
    again = import_events(store, path, rejects_path=rejects, now=NOW)
    assert (again.accepted, again.duplicates, again.rejected_count) == (0, 2, 2)


def test_jsonl_import_with_malformed_line(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(ev("e1")), "{not json", "", "[1, 2]", json.dumps(ev("e2", sku="B1"))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    report = import_events(store, path, rejects_path=rejects, now=NOW)
    assert report.accepted == 2 and report.rejected_count == 2
    assert reasons(report)[0].startswith("line 2: invalid JSON")
    assert reasons(report)[1] == "line 4: expected a JSON object, not list"
    assert [json.loads(x)["line"] for x in rejects.read_text().splitlines()] == [2, 4]
    assert [e.sku for e in store.customer_events("c1")] == ["A1", "B1"]


def test_parquet_import_round_trip(store: EventStore, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "events.parquet"
    when = datetime.fromtimestamp(NOW - 100, timezone.utc)
    table = pa.table(
        {
            "event_id": ["p1", "p2", "p3"],
            "customer_id": [7, 7, 8],
            "sku": ["A1", "B2", "A2"],
            "type": ["view", "purchase", "sideways"],
            "timestamp": pa.array([when, when, when], pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    report = import_events(store, path, now=NOW, simulated=True)
    assert report.accepted == 2 and report.simulated
    assert report.rejected[0].line == 3 and "unknown type 'sideways'" in reasons(report)[0]
    got = store.customer_events("7")
    assert [(e.sku, e.timestamp, e.simulated) for e in got] == [
        ("A1", NOW - 100, True),
        ("B2", NOW - 100, True),
    ]


def test_file_errors(store: EventStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        import_events(store, tmp_path / "missing.csv")
    bad = tmp_path / "events.xlsx"
    bad.write_text("x")
    with pytest.raises(InvalidInputError, match=r"\.csv.*\.jsonl.*\.parquet"):
        list(read_event_rows(bad))
    with pytest.raises(InvalidInputError, match="unknown events format"):
        import_events(store, bad, fmt="excel")
    header = tmp_path / "h.csv"
    header.write_text("event_id,customer,sku\ne1,c,A1\n")
    with pytest.raises(InvalidInputError, match=r"missing column.*customer_id, type, timestamp"):
        import_events(store, header)
    assert store.count() == 0
