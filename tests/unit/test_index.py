from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import InvalidInputError
from shoplens.index import ExactIndex, FaissIndex, load_index, make_index
from shoplens.index.base import default_factory


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_k(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(g)) / len(r) for r, g in zip(ref, got, strict=True)]))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = unit_vectors(3000, 32)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5  # labels are not positions
    return x, ids, unit_vectors(40, 32, seed=1)


def test_exact_matches_brute_force(data: tuple[np.ndarray, ...]) -> None:
    x, ids, q = data
    idx = ExactIndex(32)
    idx.add(ids, x)
    scores, got = idx.search(q, 5)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert (got == ids[brute]).all()
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, brute, 1), rtol=1e-5)


def test_faiss_flat_equals_exact(data: tuple[np.ndarray, ...]) -> None:
    x, ids, q = data
    exact, flat = make_index(32, "exact"), make_index(32, "Flat")
    exact.add(ids, x)
    flat.add(ids, x)
    assert (exact.search(q, 10)[1] == flat.search(q, 10)[1]).all()


def test_small_batches_of_exact_search_score_in_one_product(
    data: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flat searches of 2-7 queries take the one-product path and answer like FAISS."""
    from shoplens.index import faiss_index

    x, ids, q = data
    flat = FaissIndex(32, "Flat")
    flat.add(ids, x)
    calls: list[int] = []
    product = faiss_index.FaissIndex._search_gemm

    def counted(self: FaissIndex, qq: np.ndarray, k: int, xb: np.ndarray) -> object:
        calls.append(len(qq))
        return product(self, qq, k, xb)

    monkeypatch.setattr(faiss_index.FaissIndex, "_search_gemm", counted)
    for n in range(1, 10):
        scores, got = flat.search(q[:n], 10)
        ref_scores, ref_ids = flat._index.search(q[:n], 10)  # FAISS itself
        assert (got == ref_ids).all() and got.dtype == np.int64
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    assert calls == list(faiss_index.GEMM_QUERIES)
    # k beyond the index pads like FAISS; filtered and non-Flat searches go to FAISS
    small = FaissIndex(4)
    small.add(np.array([11, 12, 13]), unit_vectors(3, 4))
    pad_scores, pad_ids = small.search(unit_vectors(3, 4, seed=2), 5)
    assert (np.sort(pad_ids[:, :3], axis=1) == [11, 12, 13]).all()
    assert (pad_ids[:, 3:] == -1).all() and np.isneginf(pad_scores[:, 3:]).all()
    assert (np.diff(pad_scores[:, :3], axis=1) <= 0).all()  # best first
    calls.clear()
    flat.search(q[:3], 10, ids[::9])
    hnsw = FaissIndex(32, "HNSW32")
    hnsw.add(ids, x)
    hnsw.search(q[:3], 10)
    assert calls == []  # neither took the product path


@pytest.mark.parametrize(
    "factory,min_recall", [("HNSW32", 0.95), ("IVF16,Flat", 0.9), ("IVF16,PQ8", 0.3)]
)
def test_ann_recall_against_exact(
    data: tuple[np.ndarray, ...], factory: str, min_recall: float
) -> None:
    x, ids, q = data
    exact, ann = make_index(32, "exact"), make_index(32, factory)
    exact.add(ids, x)
    ann.add(ids, x)
    r = recall_at_k(exact.search(q, 10)[1], ann.search(q, 10)[1])
    assert r >= min_recall, f"{factory} recall@10 {r:.3f}"


@pytest.mark.parametrize("factory", ["exact", "Flat", "HNSW32"])
def test_filtered_search_only_returns_allowed(data: tuple[np.ndarray, ...], factory: str) -> None:
    x, ids, q = data
    idx = make_index(32, factory)
    idx.add(ids, x)
    allowed = ids[::9]
    _scores, got = idx.search(q, 10, allowed)
    assert np.isin(got, allowed).all()
    ref = make_index(32, "exact")
    ref.add(ids, x)
    assert recall_at_k(ref.search(q, 10, allowed)[1], got) >= 0.95
    none_scores, none_ids = idx.search(q[:1], 3, np.array([ids[0]]))
    assert none_ids[0, 0] == ids[0] and (none_ids[0, 1:] == -1).all()
    assert np.isneginf(none_scores[0, 1:]).all()


@pytest.mark.parametrize("factory", ["exact", "Flat", "HNSW32"])
def test_save_load_roundtrip(tmp_path: Path, data: tuple[np.ndarray, ...], factory: str) -> None:
    x, ids, q = data
    idx = make_index(32, factory)
    idx.add(ids, x)
    idx.save(tmp_path / "ix")
    again = load_index(tmp_path / "ix")
    assert again.ntotal == 3000
    assert (again.search(q, 10)[1] == idx.search(q, 10)[1]).all()


def test_k_larger_than_index_pads() -> None:
    idx = FaissIndex(4)
    idx.add(np.array([1, 2]), unit_vectors(2, 4))
    _scores, ids = idx.search(unit_vectors(1, 4), 5)
    assert ids.shape == (1, 5) and set(ids[0, :2]) == {1, 2} and (ids[0, 2:] == -1).all()


def test_bad_input_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="factory"):
        FaissIndex(8, "NotAnIndex99")
    idx = ExactIndex(8)
    with pytest.raises(InvalidInputError, match="shape"):
        idx.add(np.array([1]), np.ones((1, 4), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="NaN"):
        idx.add(np.array([1]), np.full((1, 8), np.nan, dtype=np.float32))


def test_default_factory_switches_to_hnsw() -> None:
    assert default_factory(1000) == "Flat"
    assert default_factory(5_000_000).startswith("HNSW")


def test_selector_path_for_broad_filters(
    data: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broad filters go through the FAISS selector (not the exact subset path)."""
    import shoplens.index.faiss_index as fi

    x, ids, q = data
    monkeypatch.setattr(fi, "BRUTE_FORCE_MAX", 0)
    idx = make_index(32, "HNSW32")
    idx.add(ids, x)
    allowed = ids[::2]
    assert len(allowed) > idx.ntotal // 20
    got = idx.search(q, 10, allowed)[1]
    assert np.isin(got, allowed).all()
    ref = make_index(32, "exact")
    ref.add(ids, x)
    assert recall_at_k(ref.search(q, 10, allowed)[1], got) >= 0.9


def test_hnsw_build_effort_is_kept_and_search_settings_change(tmp_path: Path) -> None:
    import faiss

    from shoplens.index.faiss_index import FaissIndex

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(500, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = FaissIndex(16, "HNSW32")
    assert faiss.downcast_index(index._index.index).hnsw.efConstruction == 200
    index.add(np.arange(500), vecs)
    index.set_params(ef_search=16)
    assert faiss.downcast_index(index._index.index).hnsw.efSearch == 16
    with pytest.raises(InvalidInputError, match="ef_search"):
        index.set_params(ef_search=0)
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx")
    assert (loaded.ef_construction, loaded.ef_search) == (200, 16)
    np.testing.assert_array_equal(loaded.search(vecs[:5], 3)[1], index.search(vecs[:5], 3)[1])
