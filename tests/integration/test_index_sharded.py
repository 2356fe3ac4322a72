"""Sharded FAISS: exact parity with one index, shard files, PQ recall and size, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import InvalidInputError
from shoplens.index import load_index, make_index
from shoplens.index.faiss_index import FaissIndex
from shoplens.index.sharded import ShardedIndex, iter_shard_files, parse_factory

DIM = 32


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_k(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(g)) / len(r) for r, g in zip(ref, got, strict=True)]))


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP threads spin-wait: on a shared CPU one thread is much faster."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, FaissIndex]:
    ids = np.arange(3000, dtype=np.int64) * 11 + 3
    x = unit_vectors(3000, DIM, 0)
    single = FaissIndex(DIM, "Flat")
    single.add(ids, x)
    return ids, x, unit_vectors(50, DIM, 1), single


def assert_same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    assert a[0].dtype == np.float32 and a[1].dtype == np.int64
    assert (a[1] == b[1]).all()
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_sharded_flat_equals_single_flat(data: tuple) -> None:
    ids, x, q, single = data
    split = np.array_split(np.random.default_rng(2).permutation(len(ids)), 5)  # uneven shards
    by_list = ShardedIndex.from_shards([(ids[s], x[s]) for s in split], "Flat", threads=3)
    by_add = ShardedIndex(DIM, "Flat", 4)
    by_add.add(ids, x)
    assert by_add.shard_sizes == [750] * 4 and by_list.ntotal == 3000
    for idx in (by_list, by_add):
        assert_same(idx.search(q, 10), single.search(q, 10))
        assert_same(idx.search(q[:3], 1000), single.search(q[:3], 1000))  # k > a shard
        allowed = ids[::37]
        assert_same(idx.search(q, 10, allowed), single.search(q, 10, allowed))
    scores, got = by_add.search(q[:2], 4000)  # more than there are: padded
    assert (got[:, 3000:] == -1).all() and np.isneginf(scores[:, 3000:]).all()


def write_parquet(path: Path, ids: np.ndarray, x: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids), "embedding": emb}), path)


def test_shards_from_files(tmp_path: Path, data: tuple) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, x, q, single = data
    want = single.search(q, 10)
    # Spark's partitionBy("shard") layout, several part files per shard
    for s in range(3):
        rows = np.flatnonzero(np.arange(3000) % 3 == s)
        for part, chunk in enumerate(np.array_split(rows, 2)):
            write_parquet(
                tmp_path / "spark" / f"shard={s}" / f"part-{part}.parquet", ids[chunk], x[chunk]
            )
    assert_same(ShardedIndex.from_dir(tmp_path / "spark").search(q, 10), want)
    # one Parquet file per shard, and NumPy pairs
    (tmp_path / "npy").mkdir()
    for s, rows in enumerate(np.array_split(np.arange(3000), 2)):
        write_parquet(tmp_path / "flat" / f"s{s}.parquet", ids[rows], x[rows])
        np.save(tmp_path / "npy" / f"s{s}.ids.npy", ids[rows])
        np.save(tmp_path / "npy" / f"s{s}.vectors.npy", x[rows])
    for folder in ("flat", "npy"):
        idx = ShardedIndex.from_dir(tmp_path / folder)
        assert len(idx.shards) == 2
        assert_same(idx.search(q, 10), want)
    # the pipeline's output: sku instead of id, ids from the catalogue
    skus = np.array([f"SKU-{i}" for i in ids])
    for s in range(2):
        rows = np.flatnonzero(np.arange(3000) % 2 == s)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), DIM)
        table = pa.table({"sku": pa.array(skus[rows]), "embedding": emb})
        (tmp_path / "pipe" / f"shard={s}").mkdir(parents=True)
        pq.write_table(table, tmp_path / "pipe" / f"shard={s}" / "part-0.parquet")
    by_sku = dict(zip(skus.tolist(), ids.tolist(), strict=True))
    assert_same(ShardedIndex.from_dir(tmp_path / "pipe", ids_by_sku=by_sku).search(q, 10), want)
    with pytest.raises(InvalidInputError, match="not in the catalogue"):
        ShardedIndex.from_dir(tmp_path / "pipe", ids_by_sku={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no shards"):
        ShardedIndex.from_dir(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInputError, match="'id' and 'embedding'"):
        list(iter_shard_files(tmp_path / "bad"))


@pytest.mark.parametrize(
    "factory,uncompressed,min_recall",
    # "np": no polysemous training (FAISS's default for PQ8 takes minutes on a shared CPU)
    [("IVF16,PQ8np", "IVF16,Flat", 0.3), ("IVF16_HNSW16,PQ16np", "IVF16_HNSW16,Flat", 0.4)],
)
def test_pq_recall_and_bytes(
    data: tuple, factory: str, uncompressed: str, min_recall: float
) -> None:
    """PQ shards: recall against exact, and bytes per vector against the same index
    storing whole float32 vectors (4 x 32 bytes -> 8 or 16 bytes of codes)."""
    ids, x, q, single = data
    full = ShardedIndex(DIM, uncompressed, 2)
    full.add(ids, x)
    pq = ShardedIndex(DIM, factory, 2)
    pq.add(ids, x)
    recall = recall_at_k(single.search(q, 10)[1], pq.search(q, 10)[1])
    saved = full.bytes_per_vector - pq.bytes_per_vector
    print(f"{factory}: recall@10 {recall:.3f}, {pq.bytes_per_vector:.0f} B/vector (-{saved:.0f})")
    assert min_recall <= recall < 1.0  # lossy, but far better than chance (10 / 3000)
    code = int(factory.split("PQ")[1].removesuffix("np"))
    # per vector: 4 x 32 float bytes become `code` bytes, less the codebooks (32 KiB a shard)
    assert 0.6 * (4 * DIM - code) < saved < 4 * DIM - code


def test_save_load_and_factory_string(tmp_path: Path, data: tuple) -> None:
    ids, x, q, single = data
    idx = make_index(DIM, "sharded:3:Flat")
    assert isinstance(idx, ShardedIndex) and len(idx.shards) == 3
    idx.add(ids, x)
    idx.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded, ShardedIndex) and loaded.shard_sizes == idx.shard_sizes
    assert_same(loaded.search(q, 10), single.search(q, 10))
    assert parse_factory("sharded:8:IVF1024,PQ32") == (8, "IVF1024,PQ32")
    for bad in ("sharded:x:Flat", "sharded:0:Flat", "sharded:4"):
        with pytest.raises(InvalidInputError, match="sharded:<shards>"):
            make_index(DIM, bad)


def test_upsert_and_delete(data: tuple) -> None:
    ids, x, q, _ = data
    idx = ShardedIndex(DIM, "Flat", 3)
    idx.add(ids, x)
    gone = ids[:100]
    assert idx.delete(gone) == 100 and idx.ntotal == 2900
    new = unit_vectors(50, DIM, 7)
    idx.upsert(ids[100:150], new)  # replaced, not duplicated
    assert idx.ntotal == 2900
    ref = FaissIndex(DIM, "Flat")
    ref.add(ids[100:], np.concatenate([new, x[150:]]))
    assert_same(idx.search(q, 10), ref.search(q, 10))
    assert_same(idx.search(q, 5, ids[:300]), ref.search(q, 5, ids[:300]))  # id cache renewed
    with pytest.raises(InvalidInputError, match="inner product"):
        ShardedIndex(DIM, "HNSW32_PQ16", 2)  # FAISS scores it by L2: shards cannot merge
    hnsw = ShardedIndex(DIM, "HNSW16", 2)
    hnsw.add(ids[:100], x[:100])
    with pytest.raises(InvalidInputError, match="rebuild"):
        hnsw.delete(ids[:3])


def test_bad_input(data: tuple) -> None:
    ids, x, _, _ = data
    idx = ShardedIndex(DIM, "Flat", 2)
    with pytest.raises(InvalidInputError, match="shape"):
        idx.add(ids[:3], unit_vectors(3, DIM + 1, 0))
    with pytest.raises(InvalidInputError, match="NaN"):
        idx.add(ids[:3], np.full((3, DIM), np.nan, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="ids"):
        idx.add(ids[:2], x[:3])
    with pytest.raises(InvalidInputError, match="k must"):
        idx.search(x[:1], 0)
    with pytest.raises(InvalidInputError, match="no vectors"):
        ShardedIndex.from_shards([])
    with pytest.raises(InvalidInputError, match="same id"):
        ShardedIndex.from_shards([(ids[:5], x[:5]), (ids[4:9], x[4:9])])
    assert (idx.search(x[:1], 3)[1] == -1).all()  # empty: padded
