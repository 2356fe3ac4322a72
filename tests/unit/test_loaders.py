"""H&M and RetailRocket loaders on tiny generated files in the public formats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from shoplens.catalog.store import Catalog, ProductRecord
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.personalize.events import EventStore, import_events
from shoplens.personalize.loaders import (
    hm_catalog_manifest,
    hm_events,
    retailrocket_events,
)

NOW = 1_700_000_000.0

HM_ARTICLE_COLUMNS = [
    "article_id", "product_code", "prod_name", "product_type_no", "product_type_name",
    "product_group_name", "graphical_appearance_no", "graphical_appearance_name",
    "colour_group_code", "colour_group_name", "perceived_colour_value_id",
    "perceived_colour_value_name", "perceived_colour_master_id", "perceived_colour_master_name",
    "department_no", "department_name", "index_code", "index_name", "index_group_no",
    "index_group_name", "section_no", "section_name", "garment_group_no", "garment_group_name",
    "detail_desc",
]  # fmt: skip
# (article_id as H&M writes it, prod_name, product_type_name, colour, has image)
HM_ARTICLES = [
    ("108775015", "Strap top", "Vest top", "Black", True),
    ("108775044", "Strap top", "Vest top", "White", True),
    ("110065001", "OP T-shirt(Idro)", "Bra", "Black", True),
    ("111565001", "20 den 1p Stockings", "Underwear Tights", "Black", False),
]
HM_TRANSACTIONS = [
    ("2018-09-20", "a" * 64, "108775015", "0.0508305084745762", "2"),
    ("2018-09-20", "a" * 64, "108775015", "0.0508305084745762", "2"),  # a second unit
    ("2018-09-20", "b" * 64, "110065001", "0.0305", "1"),
    ("2018-09-21", "a" * 64, "108775044", "0.0508", "2"),
    ("2018-09-21", "a" * 64, "108775015", "0.0508305084745762", "2"),
]


def write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]] | list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_hm(root: Path) -> Path:
    """A tiny H&M data set folder: articles.csv, transactions_train.csv, images/."""
    rows = []
    for i, (aid, name, ptype, colour, has_image) in enumerate(HM_ARTICLES):
        row = {c: "" for c in HM_ARTICLE_COLUMNS}
        row.update(
            article_id=aid, product_code=aid[:-3], prod_name=name, product_type_name=ptype,
            product_group_name="Garment Upper body", graphical_appearance_name="Solid",
            colour_group_name=colour, department_name="Jersey Basic",
            detail_desc=f"Jersey top with narrow shoulder straps.\nNumber {i}, \"quoted\".",
        )  # fmt: skip
        rows.append([row[c] for c in HM_ARTICLE_COLUMNS])
        if has_image:
            sku = aid.zfill(10)
            path = root / "images" / sku[:3] / f"{sku}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 32), (40 * i, 90, 200 - 40 * i)).save(path, "JPEG")
    write_csv(root / "articles.csv", HM_ARTICLE_COLUMNS, rows)
    header = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    return write_csv(root / "transactions_train.csv", header, HM_TRANSACTIONS)


def test_hm_events_ids_are_distinct_for_repeated_rows_and_stable(tmp_path: Path) -> None:
    path = write_hm(tmp_path / "hm")
    events = list(hm_events(path))
    assert len(events) == 5
    first = events[0]
    assert first["sku"] == "0108775015" and first["type"] == "purchase"
    assert first["customer_id"] == "a" * 64
    assert first["timestamp"] == 1537444800.0  # 2018-09-20T12:00:00Z
    assert first["event_id"].startswith("hm-")
    assert len({e["event_id"] for e in events}) == 5  # identical rows: distinct ids
    assert [e["event_id"] for e in hm_events(path)] == [e["event_id"] for e in events]


def test_hm_unsorted_file_still_numbers_identical_rows(tmp_path: Path) -> None:
    header = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    row = ("2018-09-20", "c" * 64, "108775015", "0.05", "2")
    path = write_csv(
        tmp_path / "t.csv", header, [row, ("2018-09-21", *row[1:]), row, ("x", *row[1:])]
    )
    events = list(hm_events(path))
    assert events[0]["event_id"] != events[2]["event_id"]  # same day seen again: new run
    again = list(hm_events(path))[:3]
    assert [e["event_id"] for e in again] == [e["event_id"] for e in events[:3]]
    assert events[3]["__error__"] == "line 5: invalid t_dat 'x' (expected YYYY-MM-DD)"


def test_hm_manifest_ingest_then_import_transactions(home: Path, tmp_path: Path) -> None:
    from shoplens import api

    root = tmp_path / "hm"
    transactions = write_hm(root)
    manifest, written, skipped = hm_catalog_manifest(root, root / "shoplens.csv")
    assert (written, skipped) == (3, 1)
    with manifest.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["sku"] == "0108775015" and rows[0]["title"] == "Strap top"
    assert rows[0]["category"] == "Vest top" and Path(rows[0]["image"]).is_absolute()
    assert rows[0]["colour"] == "Black" and rows[0]["group"] == "Garment Upper body"

    report = api.ingest(manifest, "hm")
    assert report.added == 3 and report.rejected == []
    with Catalog.open("hm") as cat:
        assert cat.count() == 3
        product = cat.get("0110065001")
        assert product.category == "Bra"
        assert product.attributes["department"] == "Jersey Basic"
        assert product.attributes["description"].endswith('Number 2, "quoted".')
        with EventStore.open(cat) as store:
            rejects = tmp_path / "rejects.jsonl"
            first = import_events(store, transactions, rejects_path=rejects, now=NOW)
            assert (first.accepted, first.duplicates, first.rejected_count) == (5, 0, 0)
            assert rejects.read_text() == ""
            again = import_events(store, transactions, fmt="hm", now=NOW)
            assert (again.accepted, again.duplicates) == (0, 5)
            history = store.customer_events("a" * 64)
            assert [e.sku for e in history] == [
                "0108775015", "0108775015", "0108775044", "0108775015"
            ]  # fmt: skip
            assert store.stats()["by_type"]["purchase"] == 5


def test_hm_manifest_outside_root_needs_allow_outside_root(home: Path, tmp_path: Path) -> None:
    from shoplens.catalog.ingest import ingest_manifest

    root = tmp_path / "hm"
    write_hm(root)
    manifest, written, _ = hm_catalog_manifest(root, tmp_path / "elsewhere" / "m.csv")
    ingest_manifest(manifest, "hm2", allow_outside_root=True)
    with Catalog.open("hm2") as cat:
        assert cat.count() == written == 3


def test_hm_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        hm_catalog_manifest(tmp_path / "nothing", tmp_path / "m.csv")
    root = tmp_path / "noimages"
    write_csv(root / "articles.csv", HM_ARTICLE_COLUMNS, [["108775015"] + [""] * 24])
    with pytest.raises(InvalidInputError, match=r"no article .* has an image"):
        hm_catalog_manifest(root, root / "m.csv")
    assert not (root / "m.csv").exists()
    bad = write_csv(tmp_path / "t.csv", ["t_dat", "customer"], [("2018-09-20", "x")])
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) customer_id, article_id"):
        list(hm_events(bad))
    with pytest.raises(InvalidInputError, match=r"t\.csv"):
        list(hm_events(bad))


RR_ROWS = [
    ("1433221332117", "257597", "view", "355908", ""),
    ("1433224214164", "992329", "view", "248676", ""),
    ("1433221999827", "111016", "addtocart", "355908", ""),
    ("1433223236124", "111016", "transaction", "248676", "4000"),
    ("1433223236124", "111016", "transaction", "248676", "4000"),  # exact duplicate row
    ("1433223236125", "111016", "like", "248676", ""),
    ("1433223236126", "111016", "view", "999999", ""),
]
RR_HEADER = ["timestamp", "visitorid", "event", "itemid", "transactionid"]


def test_retailrocket_events(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", RR_HEADER, RR_ROWS)
    events = list(retailrocket_events(path))
    assert events[0]["customer_id"] == "rr-257597" and events[0]["sku"] == "355908"
    assert events[0]["timestamp"] == 1433221332.117
    assert [e["type"] for e in events[:4]] == ["view", "view", "add_to_cart", "purchase"]
    assert events[3]["event_id"] == events[4]["event_id"]  # identical rows are one event
    assert len({e["event_id"] for e in events}) == 6
    with pytest.raises(InvalidInputError, match=r"missing column.*itemid"):
        list(retailrocket_events(write_csv(tmp_path / "x.csv", RR_HEADER[:3], [])))


def test_retailrocket_import_into_catalogue(home: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", RR_HEADER, RR_ROWS)
    with Catalog.create("rr") as cat:
        cat.upsert(
            ProductRecord(sku=s, title=s, category="c", image_key="k.png")
            for s in ("355908", "248676")
        )
        with EventStore.open(cat) as store:
            rejects = tmp_path / "rejects.jsonl"
            report = import_events(store, path, rejects_path=rejects, now=NOW)  # auto-detected
            assert (report.accepted, report.duplicates, report.rejected_count) == (4, 1, 2)
            lines = [json.loads(x) for x in rejects.read_text().splitlines()]
            assert [x["line"] for x in lines] == [7, 8]
            assert "unknown type 'like'" in lines[0]["reason"]
            assert lines[1]["reason"] == "unknown sku '999999' in catalogue 'rr'"
            assert store.customer_events("rr-111016")[-1].type == "purchase"
            again = import_events(store, path, fmt="retailrocket", now=NOW)
            assert (again.accepted, again.duplicates) == (0, 5)
