from __future__ import annotations

from pathlib import Path

import pytest

from shoplens.catalog.store import Catalog, ProductRecord, list_catalogs
from shoplens.errors import InvalidInputError, NotFoundError


def rec(sku: str, title: str = "t", category: str = "c", **attrs: str) -> ProductRecord:
    return ProductRecord(
        sku=sku, title=title, category=category, image_key=f"{sku}.png", attributes=dict(attrs)
    )


def test_upsert_is_idempotent_and_keeps_ids(home: Path) -> None:
    cat = Catalog.create("shop")
    c1 = cat.upsert([rec("a"), rec("b")])
    assert (c1.added, c1.updated, c1.unchanged) == (2, 0, 0)
    id_a = cat.get("a").id
    c2 = cat.upsert([rec("a"), rec("b", title="new title")])
    assert (c2.added, c2.updated, c2.unchanged) == (0, 1, 1)
    assert cat.get("a").id == id_a
    assert cat.get("b").title == "new title"
    assert cat.count() == 2
    assert list_catalogs() == ["shop"]


def test_failed_transaction_leaves_catalogue_unchanged(home: Path) -> None:
    cat = Catalog.create("shop")
    cat.upsert([rec("a")])
    with pytest.raises(RuntimeError), cat.transaction() as conn:
        Catalog.upsert_in(conn, [rec("b"), rec("c")])
        raise RuntimeError("crash in the middle of an ingest")
    assert cat.count() == 1
    with pytest.raises(NotFoundError):
        cat.get("b")


def test_filters_by_category_and_attribute(home: Path) -> None:
    cat = Catalog.create("shop")
    cat.upsert(
        [
            rec("a", category="Bag", color="red"),
            rec("b", category="Bag", color="blue"),
            rec("c", category="Coat", color="red"),
        ]
    )
    ids = {cat.get(s).id: s for s in "abc"}
    assert cat.filter_ids() is None
    assert {ids[i] for i in cat.filter_ids(["Bag"]) or []} == {"a", "b"}
    assert {ids[i] for i in cat.filter_ids(None, {"color": "red"}) or []} == {"a", "c"}
    assert {ids[i] for i in cat.filter_ids(["Bag"], {"color": "red"}) or []} == {"a"}
    assert cat.filter_ids(["Shoe"]) == []
    with pytest.raises(InvalidInputError):
        cat.filter_ids(None, {"color') OR 1=1 --": "x"})
    assert cat.categories() == {"Bag": 2, "Coat": 1}


def test_unknown_catalogue_and_bad_names(home: Path) -> None:
    with pytest.raises(NotFoundError, match="unknown catalogue"):
        Catalog.open("nope")
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(InvalidInputError):
            Catalog.create(bad)


def test_images_are_content_addressed(home: Path) -> None:
    cat = Catalog.create("shop")
    k1 = cat.put_image(b"abc", "ab" + "0" * 62, "png")
    k2 = cat.put_image(b"abc", "ab" + "0" * 62, "png")
    assert k1 == k2 and cat.image_path(k1).read_bytes() == b"abc"
    assert not list(cat.image_path(k1).parent.glob(".tmp-*"))


def test_products_read_by_id_follow_writes_from_any_connection(home: Path) -> None:
    reader = Catalog.create("cache-shop")
    reader.upsert([rec("a", "first"), rec("b", "bee")])
    ids = {p.sku: p.id for p in reader.iter_products()}
    assert reader.get_by_ids([ids["a"]])[ids["a"]].title == "first"  # now cached
    # this connection's own write
    reader.upsert([rec("a", "second")])
    assert reader.get_by_ids([ids["a"]])[ids["a"]].title == "second"
    # another connection's write (another process would look the same to SQLite)
    with Catalog.open("cache-shop") as writer:
        writer.upsert([rec("a", "third"), rec("c", "sea")])
    got = reader.get_by_ids([ids["a"], ids["b"], 10_000])
    assert got[ids["a"]].title == "third" and got[ids["b"]].title == "bee"
    assert 10_000 not in got
    reader.close()
