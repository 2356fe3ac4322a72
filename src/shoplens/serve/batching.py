"""Micro-batching: concurrent single queries become one encoder forward pass.

The service answers each request in a thread of Starlette's pool. With batching on, a
request that needs a query embedding hands its image (or text) to a :class:`MicroBatcher`
and waits; a worker thread collects what arrives within ``max_wait_ms`` of the oldest
waiting item (at most ``max_batch`` items), runs the encoder once on all of them and gives
every caller its own row. At most ``workers`` forward passes run at once (one worker
forms a batch at a time; default one; the service's default ``None``: one per core, for
encoders run with one thread per call). Under light traffic a request that finds a free
slot and nothing queued runs at once in its own thread (no wait, no hand-off); under
concurrent traffic every request is queued and batched.
When one item of a batch makes the encoder raise, the items are retried one by one, so
only the request with the bad item fails.

:class:`BatchingEncoder` wraps any :class:`~shoplens.models.base.Encoder` this way and
keeps its contract (``encode_images``, ``encode_texts``, ``dim``, ``name``; everything
else, e.g. ``compose`` / ``can_compose``, passes through to the wrapped encoder).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import numpy as np

from shoplens.errors import InvalidInputError
from shoplens.models.base import Encoder
from shoplens.search.engine import ranked_pairs

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("shoplens.serve.batching")

Ranking = list[tuple[int, float]]  # [(product id, score), ...], best first
BatchFn = Callable[[list[T]], "Sequence[R] | np.ndarray"]
OnBatch = Callable[[int, float], None]  # (batch size, seconds in fn)
_STOP = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed: nothing more is accepted."""


class MicroBatcher(Generic[T, R]):
    """Collects items submitted from many threads and runs ``fn`` on batches of them.

    Args:
        fn: ``fn(items) -> results`` with one result per item, in order (a list, or an
            array whose first axis is the items).
        max_batch: at most this many items per call of ``fn``.
        max_wait_ms: how long the oldest waiting item may wait for company before its
            batch runs (0: run with whatever is queued right now).
        on_batch: called after every successful ``fn`` call with (batch size, seconds).
        name: the worker threads' name.
        workers: at most this many calls of ``fn`` run at once (inline calls included);
            None: one per CPU core this process may use.
        inline_after_s: ``call`` runs a lone item inline only when no two calls have
            overlapped for this long (see below).

    ``submit(item)`` returns a Future with the item's own result or exception.
    ``call(item)`` blocks for the result. Under light traffic (no two calls overlapped
    in the last ``inline_after_s``), with nothing queued and a slot free, it runs
    ``fn([item])`` at once in the calling thread: a lone request pays neither the wait
    nor a thread hand-off. Under concurrent traffic every call is queued: the first
    caller back after a batch then waits up to ``max_wait_ms`` for the others instead of
    taking the only slot for a batch of one while they queue behind it.
    ``close()`` runs everything submitted so far, then stops the worker; submitting
    after that raises RuntimeError.
    """

    def __init__(
        self,
        fn: BatchFn[T, R],
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        *,
        on_batch: OnBatch | None = None,
        name: str = "shoplens-batcher",
        workers: int | None = 1,
        inline_after_s: float = 0.5,
    ) -> None:
        if workers is None:
            from shoplens.eval.report import cpu_cores

            workers = max(1, cpu_cores())
        if workers < 1:
            raise InvalidInputError(f"workers must be at least 1, got {workers}")
        if max_batch < 1:
            raise InvalidInputError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise InvalidInputError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._collecting = threading.Lock()  # held by the worker forming a batch
        self._closed = False
        self._queued = 0  # items submitted and not yet taken by the worker
        self._running = 0  # batches running (the workers' and inline calls)
        self.inline_after_s = float(inline_after_s)
        self._callers = 0  # threads inside call() now
        self._overlap_at = -float("inf")  # when two calls last overlapped (monotonic s)
        self.workers = int(workers)
        self._slots = threading.Semaphore(self.workers)  # calls of fn running at once
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; the Future gets its result (or the exception fn raised for it)."""
        fut: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._queued += 1
            self._queue.put((item, fut, time.monotonic()))
        return fut

    def call(self, item: T) -> R:
        """The result for ``item`` (run inline when idle, else batched with others)."""
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            now = time.monotonic()
            self._callers += 1
            if self._callers > 1:
                self._overlap_at = now
            quiet = now - self._overlap_at >= self.inline_after_s
            inline = quiet and self._queued == 0 and self._slots.acquire(blocking=False)
            if inline:
                self._running += 1
        try:
            if not inline:
                return self.submit(item).result()
            try:
                t0 = time.perf_counter()
                out = self.fn([item])
                if len(out) != 1:
                    raise RuntimeError(f"batch function returned {len(out)} results for 1")
                self._report(1, time.perf_counter() - t0)
                return out[0]
            finally:
                with self._lock:
                    self._running -= 1
                self._slots.release()
        finally:
            with self._lock:
                self._callers -= 1

    def map(self, items: Sequence[T]) -> list[R]:
        """Submit every item and wait for all results (raises the first item's error)."""
        futures = [self.submit(x) for x in items]
        return [f.result() for f in futures]

    def close(self, timeout: float | None = None) -> None:
        """Run what is already queued, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)  # one per worker, after everything queued
        for t in self._threads:
            if threading.current_thread() is not t:
                t.join(timeout)

    # ---- worker ------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            # One worker forms a batch at a time: workers taking items from the queue
            # side by side would split the waiting items into smaller batches.
            with self._collecting:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch = [first]
                self._slots.acquire()  # wait for a free slot (what queues meanwhile joins)
                # The oldest item waits at most max_wait in all, including the time it spent
                # queued while the previous batch ran: then the batch takes what is queued.
                deadline = first[2] + self.max_wait_s
                while len(batch) < self.max_batch:
                    remaining = deadline - time.monotonic()
                    try:
                        nxt = (
                            self._queue.get(timeout=remaining)
                            if remaining > 0
                            else self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                with self._lock:
                    self._queued -= len(batch)
                    self._running += 1
            try:
                self._process([(item, fut) for item, fut, _ in batch])
            except BaseException as e:  # never leave a caller waiting forever
                log.exception("micro-batch worker failed")
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
            finally:
                with self._lock:
                    self._running -= 1
                self._slots.release()

    def _process(self, batch: list[tuple[T, Future[R]]]) -> None:
        live = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        items = [x for x, _ in live]
        t0 = time.perf_counter()
        try:
            out = self.fn(items)
            if len(out) != len(items):
                raise RuntimeError(f"batch function returned {len(out)} results for {len(items)}")
        except Exception as e:
            if len(live) == 1:
                live[0][1].set_exception(e)
                return
            # Find the bad item(s): every other item still gets its answer.
            for item, fut in live:
                self._run_one(item, fut)
            return
        seconds = time.perf_counter() - t0
        self._report(len(items), seconds)
        for (_, fut), result in zip(live, out, strict=True):
            fut.set_result(result)

    def _run_one(self, item: T, fut: Future[R]) -> None:
        t0 = time.perf_counter()
        try:
            out = self.fn([item])
            if len(out) != 1:
                raise RuntimeError(f"batch function returned {len(out)} results for 1")
        except Exception as e:
            fut.set_exception(e)
            return
        self._report(1, time.perf_counter() - t0)
        fut.set_result(out[0])

    def _report(self, size: int, seconds: float) -> None:
        if self.on_batch is None:
            return
        try:
            self.on_batch(size, seconds)
        except Exception:  # metrics must never break answers
            log.exception("on_batch callback failed")


EncodeCallback = Callable[[str, int, float], None]  # (kind "image"/"text", batch size, seconds)


def _report_encode(on_encode: EncodeCallback | None, kind: str, size: int, seconds: float) -> None:
    """Tell ``on_encode`` about one encoder pass; a failing callback never breaks answers."""
    if on_encode is None:
        return
    try:
        on_encode(kind, size, seconds)
    except Exception:
        log.exception("on_encode callback failed")


class BatchingEncoder(Encoder):
    """An encoder whose ``encode_images`` / ``encode_texts`` calls from concurrent
    threads are micro-batched into one forward pass of the wrapped ``encoder``.

    Args:
        encoder: the encoder to wrap (its outputs are returned unchanged, row by row).
        max_batch / max_wait_ms / workers: see :class:`MicroBatcher`.
        enabled: False calls the encoder directly (still timed through ``on_encode``).
        on_encode: called with (kind, batch size, seconds) after every forward pass.

    A call with more than ``max_batch`` inputs (or after ``close()``) goes straight to
    the wrapped encoder. Other attributes are read from the wrapped encoder.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        workers: int | None = 1,
        enabled: bool = True,
        on_encode: EncodeCallback | None = None,
    ) -> None:
        self.inner = encoder
        self.name = encoder.name
        self.dim = encoder.dim
        self.batch_size = encoder.batch_size
        # an instance value shadows the class-level default of Encoder
        self.__dict__["modalities"] = encoder.modalities
        self.max_batch = max_batch
        self.on_encode = on_encode
        self._batchers: dict[str, MicroBatcher[Any, np.ndarray]] = {}
        if enabled:
            for kind in sorted(encoder.modalities):
                self._batchers[kind] = MicroBatcher(
                    self._forward_fn(kind),
                    max_batch,
                    max_wait_ms,
                    on_batch=self._reporter(kind),
                    name=f"shoplens-batch-{kind}",
                    workers=workers,
                )

    @property
    def batching(self) -> bool:
        return any(not b.closed for b in self._batchers.values())

    def _forward_fn(self, kind: str) -> Callable[[list[Any]], np.ndarray]:
        if kind == "image":
            return lambda items: self.inner.encode_images(items)
        return lambda items: self.inner.encode_texts(items)

    def _reporter(self, kind: str) -> OnBatch | None:
        if self.on_encode is None:
            return None
        on_encode = self.on_encode
        return lambda size, seconds: on_encode(kind, size, seconds)

    def _encode(self, kind: str, items: Sequence[Any]) -> np.ndarray:
        batcher = self._batchers.get(kind)
        if batcher is not None and 0 < len(items) <= self.max_batch and not batcher.closed:
            try:
                if len(items) == 1:
                    rows = [batcher.call(items[0])]
                else:
                    futures = [batcher.submit(x) for x in items]
                    rows = [f.result() for f in futures]
            except BatcherClosed:
                pass  # closed meanwhile (a model swap): answer directly below
            else:
                return np.stack(rows).astype(np.float32, copy=False)  # (N, D)
        t0 = time.perf_counter()
        out = self._forward_fn(kind)(list(items))
        if len(items):
            _report_encode(self.on_encode, kind, len(items), time.perf_counter() - t0)
        return out

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed images -> (N, dim) float32, as the wrapped encoder does."""
        return self._encode("image", images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, as the wrapped encoder does."""
        if isinstance(texts, str):  # keep the wrapped encoder's own error for a bare str
            return self.inner.encode_texts(texts)
        return self._encode("text", texts)

    def close(self) -> None:
        """Finish queued work and stop the workers; later calls go to the encoder directly."""
        for b in self._batchers.values():
            b.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"BatchingEncoder({self.inner!r}, max_batch={self.max_batch})"


SearchCallback = Callable[[int, float], None]  # (queries in the call, seconds)


class BatchingIndex:
    """A vector index whose single-query, unfiltered searches from concurrent threads are
    micro-batched into one ``search`` call of the wrapped index.

    One call for Q queries saves per-call overhead; an exact (Flat) search shares one
    pass over the vectors: one torch product for 2-7 queries
    (:data:`~shoplens.index.faiss_index.GEMM_QUERIES`), FAISS's BLAS path from
    ``SHOPLENS_FAISS_BLAS_THRESHOLD`` queries x dim (costs per batch size measured in
    docs/BENCHMARKS.md). Each caller gets
    its own rows, cut to the ``k`` it asked for (the batch asks for the largest ``k``;
    the top of a longer list is the shorter list). Filtered searches (``allowed_ids``)
    and multi-query calls go straight to the wrapped index. Other attributes (``ntotal``,
    ``dim``, ...) are read from the wrapped index.
    """

    def __init__(
        self,
        index: Any,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        workers: int | None = 1,
        on_search: SearchCallback | None = None,
    ) -> None:
        self.index = index
        self._batcher: MicroBatcher[tuple[np.ndarray, int], tuple[np.ndarray, np.ndarray]] = (
            MicroBatcher(
                self._search_many,
                max_batch,
                max_wait_ms,
                on_batch=on_search,
                name="shoplens-batch-search",
                workers=workers,
            )
        )

    def _search_many(
        self, items: list[tuple[np.ndarray, int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        q = np.stack([v for v, _ in items])  # (Q, D)
        scores, ids = self.index.search(q, max(k for _, k in items))  # (Q, kmax) each
        return [(scores[i : i + 1, :k], ids[i : i + 1, :k]) for i, (_, k) in enumerate(items)]

    def search(
        self, vectors: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like the wrapped index's ``search``: ((Q, k) scores, (Q, k) ids)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if allowed_ids is None and vectors.ndim == 2 and len(vectors) == 1 and k >= 1:
            try:
                return self._batcher.call((vectors[0], int(k)))
            except BatcherClosed:
                pass
        return self.index.search(vectors, k, allowed_ids)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Finish queued searches; later calls go to the wrapped index directly."""
        self._batcher.close()

    def __getattr__(self, name: str) -> Any:
        if name == "index" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.index, name)

    def __repr__(self) -> str:
        return f"BatchingIndex({self.index!r})"


class DenseRankingBatcher:
    """The unfiltered dense rankings of concurrent queries (texts or images) as one step:
    for each signal (an encoder and the index its vectors live in), one encoder pass and
    one index search for the whole micro-batch.

    For text queries the service gives it the text encoder with the text index and, when
    the image encoder embeds texts in its own space, that encoder with the image index;
    for image queries the image encoder with the image index. Every dense ranking of a
    query then runs in the one batch. Separate micro-batchers per encoder and index
    would split the concurrent queries over several stages (smaller batches at each, a
    thread hand-off per stage); one step keeps them together, so the batch that shares
    the encoder passes also shares the index passes (one matrix product per exact
    index). ``call((query, n))`` returns that query's
    rankings, one ``[(product id, score), ...]`` per signal in order, best first;
    ``on_encode(modality, size, seconds)`` reports each encoder pass like
    :class:`BatchingEncoder` does. After ``close()`` calls are answered directly.
    """

    def __init__(
        self,
        signals: Sequence[tuple[Encoder, Any]],
        *,
        modality: str = "text",
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        workers: int | None = 1,
        on_encode: EncodeCallback | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        if not signals:
            raise InvalidInputError("DenseRankingBatcher needs at least one (encoder, index)")
        if modality not in ("text", "image"):
            raise InvalidInputError(f"modality must be 'text' or 'image', got {modality!r}")
        self.signals = list(signals)
        self.modality = modality
        self.on_encode = on_encode
        self.prepare = prepare  # run first in whichever thread runs a batch
        self._batcher: MicroBatcher[tuple[Any, int], list[Ranking]] = MicroBatcher(
            self._rank_many,
            max_batch,
            max_wait_ms,
            name=f"shoplens-batch-dense-{modality}",
            workers=workers,
        )

    def _rank_many(self, items: list[tuple[Any, int]]) -> list[list[Ranking]]:
        if self.prepare is not None:
            self.prepare()
        queries = [query for query, _ in items]
        n_max = max(n for _, n in items)
        found = []
        for encoder, index in self.signals:
            t0 = time.perf_counter()
            if self.modality == "text":
                q = encoder.encode_texts(queries)  # (B, D)
            else:
                q = encoder.encode_images(queries)  # (B, D)
            _report_encode(self.on_encode, self.modality, len(items), time.perf_counter() - t0)
            found.append(index.search(q, n_max))  # ((B, n_max) scores, (B, n_max) ids)
        return [
            [ranked_pairs(ids[row, :n], scores[row, :n]) for scores, ids in found]
            for row, (_, n) in enumerate(items)
        ]

    def call(self, item: tuple[Any, int]) -> list[Ranking]:
        """The rankings of ``item`` = (text or image, n), one per signal (batched with
        concurrent queries)."""
        try:
            return self._batcher.call(item)
        except BatcherClosed:  # closed meanwhile (a model swap): answer directly
            return self._rank_many([item])[0]

    __call__ = call

    @property
    def closed(self) -> bool:
        return self._batcher.closed

    def close(self) -> None:
        """Finish queued queries and stop the worker; later calls run directly."""
        self._batcher.close()
