"""Micro-batching: every caller gets its own answer, batches form, errors stay isolated."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from shoplens.errors import InvalidInputError
from shoplens.registry import create_encoder
from shoplens.serve.batching import BatchingEncoder, BatchingIndex, MicroBatcher


def recording(
    fn: Callable[[list[int]], list[int]], delay: float = 0.0
) -> tuple[Callable[[list[int]], list[int]], list[list[int]]]:
    """``fn`` that records each batch it is called with (and sleeps ``delay``)."""
    calls: list[list[int]] = []

    def run(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        if delay:
            time.sleep(delay)
        return fn(xs)

    return run, calls


def hammer(batcher: MicroBatcher[int, Any], threads: int, per_thread: int) -> dict[int, Any]:
    """``threads`` threads each submit their own distinct inputs, one at a time."""
    start = threading.Barrier(threads)

    def worker(t: int) -> dict[int, Any]:
        start.wait()
        out = {}
        for j in range(per_thread):
            x = t * 1000 + j
            out[x] = batcher.submit(x).result(timeout=10)
        return out

    with ThreadPoolExecutor(threads) as pool:
        results: dict[int, Any] = {}
        for part in pool.map(worker, range(threads)):
            results.update(part)
    return results


def test_every_caller_gets_its_own_answer_and_batches_form() -> None:
    fn, calls = recording(lambda xs: [x * 2 for x in xs], delay=0.002)
    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=8, max_wait_ms=5)
    try:
        results = hammer(b, threads=12, per_thread=20)
    finally:
        b.close()
    assert results == {x: 2 * x for x in results} and len(results) == 240
    assert sum(len(c) for c in calls) == 240  # each item ran exactly once
    assert max(len(c) for c in calls) > 1, "no batch of more than one item formed"
    assert max(len(c) for c in calls) <= 8  # max_batch respected
    assert len(calls) < 240


def test_numpy_results_are_split_by_row() -> None:
    b: MicroBatcher[int, np.ndarray] = MicroBatcher(
        lambda xs: np.array([[x, -x] for x in xs], dtype=np.float32), max_batch=4, max_wait_ms=2
    )
    try:
        results = hammer(b, threads=6, per_thread=5)
    finally:
        b.close()
    for x, row in results.items():
        assert row.tolist() == [x, -x]


def test_max_batch_bounds_every_call() -> None:
    fn, calls = recording(lambda xs: xs, delay=0.01)
    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=3, max_wait_ms=50, workers=1)
    futures = [b.submit(i) for i in range(10)]
    assert [f.result(timeout=10) for f in futures] == list(range(10))
    b.close()
    assert all(len(c) <= 3 for c in calls) and sum(map(len, calls)) == 10
    assert [x for c in calls for x in c] == list(range(10))  # first in, first out


def test_max_wait_bounds_the_latency_of_a_lone_request() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=64, max_wait_ms=30)
    try:
        waits = []
        for i in range(5):
            t0 = time.perf_counter()
            assert b.submit(i).result(timeout=5) == i
            waits.append(time.perf_counter() - t0)
    finally:
        b.close()
    # a lone item waits for company about max_wait (not forever, not max_batch items)
    assert min(waits) > 0.02 and max(waits) < 1.0, waits


def test_zero_wait_runs_at_once() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=64, max_wait_ms=0)
    try:
        t0 = time.perf_counter()
        assert [b.submit(i).result(timeout=5) for i in range(20)] == list(range(20))
        assert time.perf_counter() - t0 < 1.0
    finally:
        b.close()


def test_one_bad_item_fails_only_its_own_request() -> None:
    def fn(xs: list[int]) -> list[int]:
        if 13 in xs:
            raise ValueError("unlucky 13")
        time.sleep(0.002)
        return [x + 1 for x in xs]

    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=16, max_wait_ms=20)
    futures = {x: b.submit(x) for x in range(10, 20)}  # all queued together: one batch
    b.close()
    for x, f in futures.items():
        if x == 13:
            with pytest.raises(ValueError, match="unlucky"):
                f.result(timeout=5)
        else:
            assert f.result(timeout=5) == x + 1


def test_wrong_number_of_results_is_an_error_for_the_caller() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: [], max_batch=4, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="0 results for 1"):
        b.submit(1).result(timeout=5)
    b.close()


def test_close_drains_pending_then_refuses() -> None:
    fn, _ = recording(lambda xs: [x * 3 for x in xs], delay=0.02)
    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=2, max_wait_ms=100)
    futures = [b.submit(i) for i in range(7)]
    b.close()  # returns once everything queued has run
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * 3 for i in range(7)]
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(1)
    b.close()  # twice is fine


def test_on_batch_reports_sizes_and_a_failing_callback_is_harmless() -> None:
    seen: list[tuple[int, float]] = []

    def on_batch(size: int, seconds: float) -> None:
        seen.append((size, seconds))
        raise RuntimeError("metrics broke")

    b: MicroBatcher[int, int] = MicroBatcher(
        lambda xs: xs, max_batch=8, max_wait_ms=20, on_batch=on_batch
    )
    futures = [b.submit(i) for i in range(5)]
    assert [f.result(timeout=5) for f in futures] == list(range(5))
    b.close()
    assert sum(s for s, _ in seen) == 5 and all(t >= 0 for _, t in seen)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        MicroBatcher(lambda xs: xs, max_batch=0)
    with pytest.raises(InvalidInputError):
        MicroBatcher(lambda xs: xs, max_wait_ms=-1)
    with pytest.raises(InvalidInputError):
        MicroBatcher(lambda xs: xs, workers=0)


@pytest.mark.parametrize("workers", [1, 3])
def test_at_most_workers_calls_run_at_once_and_all_of_them_are_used(workers: int) -> None:
    lock = threading.Lock()
    running = peak = 0

    def fn(xs: list[int]) -> list[int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)  # the forward pass (releases the GIL, as torch does)
        with lock:
            running -= 1
        return [x + 1 for x in xs]

    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=4, max_wait_ms=1, workers=workers)
    try:
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda x: b.call(x) if x % 2 else b.submit(x).result(), range(96)))
    finally:
        b.close()
    assert got == [x + 1 for x in range(96)]
    assert peak == workers  # inline calls and worker batches together never exceed it


def test_lone_calls_run_inline_only_while_calls_do_not_overlap() -> None:
    """Light traffic: a lone call runs in the caller's thread (no wait, no hand-off).
    Once calls overlap (concurrent traffic), lone calls are queued for the worker, so the
    first caller back after a batch waits for company instead of taking the slot alone;
    after ``inline_after_s`` without overlap they run inline again."""
    where: list[str] = []

    def fn(xs: list[int]) -> list[int]:
        where.append(threading.current_thread().name)
        time.sleep(0.3 if 3 in xs else 0.01)  # the other caller arrives meanwhile
        return [x + 1 for x in xs]

    b: MicroBatcher[int, int] = MicroBatcher(
        fn, max_batch=8, max_wait_ms=1, name="lone", inline_after_s=1.0
    )
    try:
        assert b.call(1) == 2 and where[-1] == threading.current_thread().name
        assert b.call(2) == 3 and where[-1] == threading.current_thread().name
        with ThreadPoolExecutor(2) as pool:  # two calls at once: they overlap
            assert list(pool.map(b.call, [3, 4])) == [4, 5]
        assert b.call(5) == 6 and where[-1].startswith("lone-")  # queued for the worker
        time.sleep(1.1)  # quiet for longer than inline_after_s
        assert b.call(6) == 7 and where[-1] == threading.current_thread().name
    finally:
        b.close()


# ---- BatchingEncoder ------------------------------------------------------------------------


def test_batching_encoder_matches_the_encoder(product_image: Any) -> None:
    raw = create_encoder("test-tiny")
    sizes: list[tuple[str, int]] = []
    enc = BatchingEncoder(
        raw, max_batch=8, max_wait_ms=20, on_encode=lambda k, n, s: sizes.append((k, n))
    )
    assert enc.name == raw.name and enc.dim == raw.dim and enc.modalities == raw.modalities
    images = [product_image("Red circle", i) for i in range(6)]
    expected = raw.encode_images(images)
    with ThreadPoolExecutor(6) as pool:
        rows = list(pool.map(lambda im: enc.encode_images([im]), images))
    for got, want in zip(rows, expected, strict=True):
        assert got.shape == (1, raw.dim) and got.dtype == np.float32
        np.testing.assert_allclose(got[0], want, atol=1e-5)
    # a multi-image call, and a call larger than max_batch (goes straight through)
    np.testing.assert_allclose(enc.encode_images(images[:3]), expected[:3], atol=1e-5)
    many = images * 2
    np.testing.assert_allclose(enc.encode_images(many), raw.encode_images(many), atol=1e-5)
    assert enc.encode_images([]).shape == (0, raw.dim)
    assert {k for k, _ in sizes} == {"image"} and max(n for _, n in sizes) > 1
    # a modality the encoder lacks keeps the encoder's own error
    with pytest.raises(InvalidInputError, match="does not encode text"):
        enc.encode_texts(["red"])
    enc.close()
    np.testing.assert_allclose(enc.encode_images(images[:1]), expected[:1], atol=1e-5)


def test_batching_encoder_texts_and_passthrough() -> None:
    raw = create_encoder("test-tiny-text")
    enc = BatchingEncoder(raw, max_batch=4, max_wait_ms=10)
    texts = [f"product {i}" for i in range(10)]
    with ThreadPoolExecutor(5) as pool:
        rows = list(pool.map(lambda t: enc.encode_texts([t]), texts))
    np.testing.assert_allclose(np.vstack(rows), raw.encode_texts(texts), atol=1e-5)
    assert enc.shared_space == raw.shared_space
    assert getattr(enc, "can_compose", False) is False  # read from the wrapped encoder
    with pytest.raises(AttributeError):
        _ = enc.no_such_attribute
    enc.close()


def test_batching_off_calls_straight_through() -> None:
    raw = create_encoder("test-tiny-text")
    sizes: list[int] = []
    enc = BatchingEncoder(raw, enabled=False, on_encode=lambda k, n, s: sizes.append(n))
    assert not enc.batching
    np.testing.assert_allclose(enc.encode_texts(["a", "b"]), raw.encode_texts(["a", "b"]))
    assert sizes == [2]


def test_call_runs_a_lone_item_at_once_and_batches_concurrent_ones() -> None:
    fn, calls = recording(lambda xs: [x * 2 for x in xs], delay=0.005)
    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=16, max_wait_ms=200)
    try:
        t0 = time.perf_counter()
        assert [b.call(i) for i in range(5)] == [0, 2, 4, 6, 8]
        assert time.perf_counter() - t0 < 0.5  # no 200 ms wait for company when alone
        assert calls == [[0], [1], [2], [3], [4]]
        calls.clear()
        start = threading.Barrier(10)

        def worker(t: int) -> list[int]:
            start.wait()
            return [b.call(t * 100 + j) for j in range(10)]

        with ThreadPoolExecutor(10) as pool:
            results = [x for part in pool.map(worker, range(10)) for x in part]
        assert results == [2 * (t * 100 + j) for t in range(10) for j in range(10)]
        assert sum(map(len, calls)) == 100 and max(map(len, calls)) > 1
    finally:
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.call(1)


def test_batching_index_answers_like_the_index_and_batches_searches() -> None:
    from shoplens.index.base import make_index

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((500, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = make_index(16, "Flat")
    index.add(np.arange(1000, 1500), vecs)
    sizes: list[int] = []
    bi = BatchingIndex(index, max_batch=8, max_wait_ms=20, on_search=lambda n, s: sizes.append(n))
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    ks = [3 + i % 7 for i in range(40)]  # callers ask for different k
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: bi.search(queries[i : i + 1], ks[i]), range(40)))
    for i, (scores, ids) in enumerate(got):
        want_s, want_i = index.search(queries[i : i + 1], ks[i])
        assert ids.shape == (1, ks[i])
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
    assert max(sizes) > 1 and sum(sizes) == 40  # batches formed, every query searched once
    # filtered and multi-query searches go straight through; a bad query fails alone
    allowed = np.arange(1000, 1010)
    _, ids = bi.search(queries[:1], 5, allowed)
    assert set(ids[0].tolist()) <= set(allowed.tolist())
    assert bi.search(queries[:3], 2)[1].shape == (3, 2)
    bad = np.full((1, 16), np.nan, dtype=np.float32)
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(bi.search, q, 4) for q in (bad, queries[:1], queries[1:2])]
        with pytest.raises(InvalidInputError):
            futs[0].result()
        assert futs[1].result()[1].shape == (1, 4) and futs[2].result()[1].shape == (1, 4)
    assert bi.ntotal == 500  # other attributes pass through
    bi.close()
    np.testing.assert_array_equal(bi.search(queries[:1], 3)[1], index.search(queries[:1], 3)[1])


def test_faiss_blas_threshold_setting_keeps_exact_results() -> None:
    """SHOPLENS_FAISS_BLAS_THRESHOLD switches a batch's exact search to one BLAS product:
    the same neighbours and scores as FAISS's per-query scan."""
    import faiss

    from shoplens.serve.app import _set_threads
    from shoplens.serve.settings import ServiceSettings

    default = faiss.cvar.distance_compute_blas_threshold
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 32)).astype(np.float32)  # (N, D)
    q = rng.standard_normal((8, 32)).astype(np.float32)  # (B, D)
    index = faiss.IndexFlatIP(32)
    index.add(x)
    scan = index.search(q, 10)  # 8 x 32 < 128,000: a scan per query
    settings = ServiceSettings(faiss_blas_threshold=64, torch_threads=None, faiss_threads=None)
    try:
        _set_threads(settings)
        assert faiss.cvar.distance_compute_blas_threshold == 64
        blas = index.search(q, 10)  # 8 x 32 >= 64: one matrix product
    finally:
        faiss.cvar.distance_compute_blas_threshold = default
    np.testing.assert_array_equal(blas[1], scan[1])
    np.testing.assert_allclose(blas[0], scan[0], rtol=1e-5, atol=1e-5)
    assert ServiceSettings().faiss_blas_threshold == 1024
    with pytest.raises(ValueError):
        ServiceSettings(faiss_blas_threshold=0)


def test_dense_ranking_batcher_ranks_texts_like_encoder_then_index() -> None:
    """Concurrent text queries (different n) share one encoder pass and one index search
    per signal, and each gets, per signal in order, the ranking that encoder and index
    give it alone; after close() (a model swap) calls are still answered."""
    from shoplens.index.base import make_index
    from shoplens.serve.batching import DenseRankingBatcher

    raw = create_encoder("test-tiny-text")
    rng = np.random.default_rng(0)
    indexes = []
    for size in (300, 120):  # e.g. the text index, then the image index
        vecs = rng.standard_normal((size, raw.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        indexes.append(make_index(raw.dim, "Flat"))
        indexes[-1].add(np.arange(size) + 1000 * len(indexes), vecs)
    index = indexes[0]
    sizes: list[int] = []
    prepared: list[str] = []
    with pytest.raises(InvalidInputError):
        DenseRankingBatcher([])
    with pytest.raises(InvalidInputError, match="modality"):
        DenseRankingBatcher([(raw, index)], modality="audio")
    dense = DenseRankingBatcher(
        [(raw, index), (raw, indexes[1])],
        max_batch=8,
        max_wait_ms=20,
        on_encode=lambda kind, n, s: sizes.append(n),
        prepare=lambda: prepared.append(threading.current_thread().name),
    )
    texts = [f"query {i} {'boot' * (i % 3)}" for i in range(40)]
    ns = [5 + i % 4 * 10 for i in range(40)]  # n 5, 15, 25, 35
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: dense((texts[i], ns[i])), range(40)))
    for i, rankings in enumerate(got):
        assert len(rankings) == 2
        for ranking, idx in zip(rankings, indexes, strict=True):
            scores, ids = idx.search(raw.encode_texts([texts[i]]), ns[i])
            assert [p for p, _ in ranking] == ids[0].tolist()
            np.testing.assert_allclose([s for _, s in ranking], scores[0], rtol=1e-5, atol=1e-5)
    assert sum(sizes) == 2 * 40 and max(sizes) > 1  # shared passes, each query encoded once
    assert len(prepared) == len(sizes) // 2  # the thread set-up ran before every batch
    dense.close()
    assert dense.closed
    after = dense(("after close", 3))
    for ranking, idx in zip(after, indexes, strict=True):
        want = idx.search(raw.encode_texts(["after close"]), 3)[1][0].tolist()
        assert [p for p, _ in ranking] == want
