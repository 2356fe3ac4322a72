"""MilvusIndex on Milvus Lite: parity with exact search, pushed-down filters, upsert/delete
in step with FAISS, persistence, the catalogue build path, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import InvalidInputError, ServiceUnavailableError
from shoplens.index import load_index, make_index
from shoplens.index import milvus as milvus_mod
from shoplens.index.base import MetadataIndex
from shoplens.index.exact import ExactIndex
from shoplens.index.faiss_index import FaissIndex
from shoplens.index.milvus import MilvusIndex, filter_expression
from shoplens.index.sharded import ShardedIndex

from ..helpers import free_port

pytest.importorskip("milvus_lite")

DIM, N = 32, 3000
NASTY = ['b"q', "back\\slash", 'x"] or id >= 0 or category in ["', "naïve 靴", "tab\there"]
CATEGORIES = ["shoe", "bag", *NASTY]


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_k(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(g)) / len(r) for r, g in zip(ref, got, strict=True)]))


class Catalogue:
    """The products as a dict (the source of truth both backends must follow)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[np.ndarray, str, dict[str, str]]] = {}

    def put(self, ids: np.ndarray, vecs: np.ndarray, cats: list[str], attrs: list[dict]) -> None:
        for i, v, c, a in zip(ids.tolist(), vecs, cats, attrs, strict=True):
            self.rows[i] = (v, c, a)

    def ids(self, categories: list[str] | None = None, attrs: dict | None = None) -> np.ndarray:
        keep = [
            i
            for i, (_, c, a) in self.rows.items()
            if (not categories or c in categories)
            and all(a.get(k) == v for k, v in (attrs or {}).items())
        ]
        return np.array(sorted(keep), dtype=np.int64)

    def faiss(self) -> FaissIndex:
        """A FAISS exact index rebuilt from the catalogue (how shoplens keeps FAISS in step)."""
        idx = FaissIndex(DIM, "Flat")
        ids = np.array(list(self.rows), dtype=np.int64)
        idx.add(ids, np.stack([self.rows[i][0] for i in ids.tolist()]))
        return idx


def product_rows(ids: np.ndarray, seed: int) -> tuple[np.ndarray, list[str], list[dict]]:
    rng = np.random.default_rng(seed)
    cats = [CATEGORIES[j] for j in rng.integers(0, len(CATEGORIES), len(ids))]
    colours = ["red", "blue", 'say "hi"']
    attrs = [{"color": colours[j], "size": "L" if j else "S"} for j in rng.integers(0, 3, len(ids))]
    return unit_vectors(len(ids), DIM, seed), cats, attrs


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.arange(N, dtype=np.int64) * 7 + 5  # labels are not positions
    return ids, unit_vectors(N, DIM, 0), unit_vectors(40, DIM, 1)


@pytest.fixture(scope="module")
def hnsw(data: tuple[np.ndarray, ...], tmp_path_factory: pytest.TempPathFactory) -> MilvusIndex:
    """HNSW index with metadata, saved and reopened (reopening builds the segment graphs)."""
    ids, x, _ = data
    idx = MilvusIndex(DIM, uri=None)
    _, cats, attrs = product_rows(ids, seed=5)
    idx.upsert(ids, x, cats, attrs)
    path = tmp_path_factory.mktemp("milvus-hnsw")
    idx.save(path)
    idx.close()
    loaded = load_index(path)
    assert isinstance(loaded, MilvusIndex)
    return loaded


def test_hnsw_recall_against_exact(data: tuple[np.ndarray, ...], hnsw: MilvusIndex) -> None:
    ids, x, q = data
    exact = ExactIndex(DIM)
    exact.add(ids, x)
    ref_s, ref_i = exact.search(q, 10)
    scores, got = hnsw.search(q, 10)
    assert scores.dtype == np.float32 and got.dtype == np.int64 and got.shape == (40, 10)
    assert recall_at_k(ref_i, got) >= 0.99  # M=16, efConstruction=200, ef=128
    same = got == ref_i
    np.testing.assert_allclose(scores[same], ref_s[same], rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # the graph is really searched: a tiny ef loses recall on these unclustered vectors
    try:
        hnsw.ef_search = 10
        assert recall_at_k(ref_i, hnsw.search(q, 10)[1]) < 0.95
    finally:
        hnsw.ef_search = 128
    assert hnsw.ntotal == N


@pytest.mark.parametrize("exact_max", [4096, 50])  # scored exactly / HNSW with a filter
def test_pushed_down_filters_equal_exact(
    data: tuple[np.ndarray, ...], hnsw: MilvusIndex, monkeypatch: pytest.MonkeyPatch, exact_max: int
) -> None:
    ids, x, q = data
    monkeypatch.setattr(milvus_mod, "EXACT_MAX", exact_max)
    cat = Catalogue()
    cat.put(ids, x, *product_rows(ids, seed=5)[1:])
    exact = ExactIndex(DIM)
    exact.add(ids, x)
    cases: list[tuple[list[str] | None, dict[str, str] | None]] = [
        (["shoe"], None),
        (NASTY[:3], None),
        (None, {"color": 'say "hi"'}),
        (["bag", "naïve 靴"], {"color": "red", "size": "L"}),
    ]
    for cats, attrs in cases:
        allowed = cat.ids(cats, attrs)
        assert hnsw.count(cats, attrs) == len(allowed)
        ref = exact.search(q, 10, allowed)[1]
        got = hnsw.search(q, 10, categories=cats, attributes=attrs)[1]
        assert np.isin(got[got >= 0], allowed).all()
        if len(allowed) <= exact_max:
            assert (got == ref).all(), (cats, attrs)
        else:
            assert recall_at_k(ref, got) >= 0.99
        both = hnsw.search(q, 10, allowed[::2], categories=cats, attributes=attrs)[1]
        ref = exact.search(q, 10, allowed[::2])[1]
        assert (
            (both == ref).all()
            if len(allowed[::2]) <= exact_max
            else recall_at_k(ref, both) >= 0.99
        )
    # a value written to break out of its string literal is matched as plain text
    assert hnsw.count(['x"] or id >= 0 or category in ["']) == len(cat.ids([NASTY[2]])) > 0
    assert hnsw.count(['" or id >= 0 or "']) == 0
    _, none = hnsw.search(q[:1], 5, categories=["no such category"])
    assert (none == -1).all()


def test_filter_expression_escapes_user_text() -> None:
    expr = filter_expression(['a"b\\'], {"my key": "x\ny"}, np.array([3, 4]))
    assert expr == 'category in ["a\\"b\\\\"] and attributes["my key"] == "x\\ny" and id in [3,4]'
    with pytest.raises(InvalidInputError, match="attribute name"):
        filter_expression(None, {'a"]': "x"})
    with pytest.raises(InvalidInputError, match="control"):
        filter_expression(["a\x00"])
    with pytest.raises(InvalidInputError, match="string"):
        filter_expression(None, {"size": 3})  # type: ignore[dict-item]


def test_allowed_ids_and_padding(data: tuple[np.ndarray, ...], hnsw: MilvusIndex) -> None:
    ids, _, q = data
    scores, got = hnsw.search(q[:2], 4, np.array([ids[3], ids[9], 123456789]))
    assert set(got[0, :2]) == {ids[3], ids[9]} and (got[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()
    assert (hnsw.search(q[:1], 3, np.array([], dtype=np.int64))[1] == -1).all()


def test_upsert_delete_keep_faiss_and_milvus_in_step(tmp_path: Path) -> None:
    """Ingest, update and delete products: Milvus (in place), sharded FAISS (in place) and
    FAISS rebuilt from the catalogue give the same top-k, with and without filters."""
    q = unit_vectors(25, DIM, 9)
    cat = Catalogue()
    milvus = MilvusIndex(DIM, str(tmp_path / "shop.db"), index_type="FLAT")
    sharded = ShardedIndex(DIM, "Flat", 3)

    def upsert(ids: np.ndarray, seed: int) -> None:
        vecs, cats, attrs = product_rows(ids, seed)
        cat.put(ids, vecs, cats, attrs)
        milvus.upsert(ids, vecs, cats, attrs)
        sharded.upsert(ids, vecs)

    def delete(ids: np.ndarray) -> None:
        for i in ids.tolist():
            cat.rows.pop(i, None)
        milvus.delete(ids)
        sharded.delete(ids)

    def check() -> None:
        rebuilt = cat.faiss()
        assert milvus.ntotal == sharded.ntotal == rebuilt.ntotal == len(cat.rows)
        ref_s, ref_i = rebuilt.search(q, 10)
        for got_s, got_i in (milvus.search(q, 10), sharded.search(q, 10)):
            assert (got_i == ref_i).all()
            np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-6)
        allowed = cat.ids(["shoe"], {"color": "red"})
        assert (milvus.search(q, 10, categories=["shoe"], attributes={"color": "red"})[1]
                == rebuilt.search(q, 10, allowed)[1]).all()  # fmt: skip

    upsert(np.arange(1500, dtype=np.int64), seed=1)  # ingest
    milvus.flush()
    check()
    upsert(np.arange(0, 1500, 5, dtype=np.int64), seed=2)  # re-ingest: new images, categories
    check()
    gone = np.arange(1, 1500, 7, dtype=np.int64)
    delete(gone)  # products removed
    check()
    assert not np.isin(milvus.search(q, 50)[1], gone).any()
    upsert(gone[:20], seed=3)  # some come back
    check()
    milvus.close()


def test_shared_lite_folder_by_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, ...]
) -> None:
    """SHOPLENS_INDEX_URI picks where the data lives; save writes a reference to it."""
    ids, x, q = data
    monkeypatch.setenv("SHOPLENS_INDEX_URI", str(tmp_path / "shared.db"))
    idx = make_index(DIM, "milvus")
    assert isinstance(idx, MilvusIndex) and isinstance(idx, MetadataIndex)
    idx.add(ids[:300], x[:300])
    idx.save(tmp_path / "build")
    assert not (tmp_path / "build" / "milvus.db").exists()
    again = load_index(tmp_path / "build")
    assert isinstance(again, MilvusIndex) and again.collection == idx.collection
    assert (again.search(q, 5)[1] == idx.search(q, 5)[1]).all()
    again.drop()
    gone = load_index(tmp_path / "build")  # connects on first use
    with pytest.raises(ServiceUnavailableError, match="missing"):
        gone.search(q, 5)


def test_old_builds_drop_their_collections(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared Milvus, deleting an old build (2 are kept) drops its collection."""
    from shoplens.catalog.store import Catalog
    from shoplens.index.store import KEEP_BUILDS, load_build, write_build

    monkeypatch.setenv("SHOPLENS_INDEX_URI", str(tmp_path / "shared.db"))
    ids, x = np.arange(50, dtype=np.int64), unit_vectors(50, 8, 3)
    with Catalog.create("t") as cat:
        names = []
        for _ in range(KEEP_BUILDS + 2):
            build = write_build(
                cat, "enc", ids=ids, keys=[str(i) for i in ids], embeddings=x,
                factory="milvus", extra_meta={},
            )  # fmt: skip
            names.append(build.index.collection)  # type: ignore[attr-defined]
        kept = [
            json.loads((d / "index" / "index.json").read_text())["collection"]
            for d in (home / "catalogs" / "t" / "indexes" / "enc" / "builds").iterdir()
        ]
        assert len(kept) == KEEP_BUILDS and set(kept) < set(names)
        probe = MilvusIndex(8, str(tmp_path / "shared.db"))
        assert sorted(probe._call("list_collections")) == sorted(kept)
        assert load_build(cat, "enc").index.ntotal == 50
        probe.close()


def test_bad_input(tmp_path: Path) -> None:
    idx = MilvusIndex(4, str(tmp_path / "bad.db"))
    v = unit_vectors(3, 4, 0)
    with pytest.raises(InvalidInputError, match="shape"):
        idx.upsert(np.arange(3), unit_vectors(3, 5, 0))
    with pytest.raises(InvalidInputError, match="NaN"):
        idx.add(np.arange(3), np.full((3, 4), np.nan, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="one id, category"):
        idx.upsert(np.arange(2), v, ["a", "b", "c"])
    with pytest.raises(InvalidInputError, match="same id"):
        idx.upsert(np.array([1, 1, 2]), v)
    with pytest.raises(InvalidInputError, match="category"):
        idx.upsert(np.arange(3), v, ["a", "b", "c" * 600])
    idx.upsert(np.arange(3), v, ["a", "b", "c"])
    with pytest.raises(InvalidInputError, match="shape"):
        idx.search(unit_vectors(1, 3, 0), 3)
    with pytest.raises(InvalidInputError, match="k must"):
        idx.search(v, 0)
    with pytest.raises(InvalidInputError, match="unknown Milvus index type"):
        make_index(4, "milvus:IVF_PQ")
    with pytest.raises(InvalidInputError, match="invalid Milvus URI"):
        MilvusIndex(4, "ftp://example.org/x")
    idx.close()


def test_unreachable_server_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(InvalidInputError, match=r"cannot reach Milvus at http://\*\*\*@127") as e:
        MilvusIndex(4, f"http://admin:s3cret@127.0.0.1:{port}", timeout=3)
    assert "s3cret" not in str(e.value)
    assert time.monotonic() - start < 20


def test_lite_folder_open_in_another_process(tmp_path: Path) -> None:
    """Milvus Lite serves a folder to one process: a second one gets a clear error."""
    idx = MilvusIndex(4, None)
    idx.add(np.arange(3), unit_vectors(3, 4, 0))
    idx.save(tmp_path / "index")
    idx.close()
    code = (
        "import sys, time; from pathlib import Path; from shoplens.index import load_index; "
        "i = load_index(Path(sys.argv[1])); print(i.ntotal, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "index")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "3"
        busy = load_index(tmp_path / "index")  # loading alone opens nothing
        with pytest.raises(ServiceUnavailableError, match="one process"):
            busy.search(unit_vectors(1, 4, 1), 2)
    finally:
        proc.kill()
        proc.wait()
    assert load_index(tmp_path / "index").ntotal == 3  # free again once that process ends


def test_catalogue_build_and_engine_over_milvus(catalog_dir: Path, home: Path) -> None:
    """``index build --factory milvus`` path: metadata goes in, the engine searches it."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes
    from shoplens.index.store import load_build
    from shoplens.search.engine import Filters, SearchEngine

    ingest_manifest(catalog_dir, "shop")
    with Catalog.open("shop") as cat:
        report = build_indexes(cat, "test-tiny", "milvus", text=False)
        assert report.image["factory"] == "milvus"
        build = load_build(cat, "test-tiny")
        index = build.index
        assert isinstance(index, MilvusIndex) and (build.path / "index" / "milvus.db").is_dir()
        assert index.ntotal == 24
        assert index.count(["Red circle"]) == 6
        assert index.count(None, {"color": "blue", "size": "large"}) == 3
        engine = SearchEngine(cat, "test-tiny")
        q = np.asarray(build.embeddings[:1])  # (1, D)
        filters = Filters(categories=["Blue square"], attributes={"size": "small"})
        allowed = np.asarray(cat.filter_ids(["Blue square"], {"size": "small"}))

        def no_catalogue_filter(*args: object) -> None:
            raise AssertionError("the filter should run inside Milvus, not in the catalogue")

        cat.filter_ids = no_catalogue_filter  # type: ignore[method-assign,assignment]
        hits = engine.search_vector(q, k=5, filters=filters, dedupe=False)
        del cat.filter_ids
        ref = ExactIndex(build.embeddings.shape[1])
        ref.add(build.ids, build.embeddings)
        ref_ids = [i for i in ref.search(q, 5, allowed)[1][0].tolist() if i >= 0]
        want = cat.get_by_ids(ref_ids)
        assert [h.sku for h in hits] == [want[i].sku for i in ref_ids]
        pushed = index.search(q, 5, categories=["Blue square"], attributes={"size": "small"})
        assert [i for i in pushed[1][0].tolist() if i >= 0] == ref_ids
