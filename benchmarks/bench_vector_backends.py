"""Vector backends: FAISS vs Milvus Lite, and sharded vs single FAISS, on synthetic vectors.

Both parts use the seeded synthetic embeddings of bench_ann.py (a clustered 128-d mixture
with a power-law spectrum, L2-normalised, inner product) and exact FAISS search (``Flat``)
as the baseline and ground truth for recall@10:

1. Backends (default 100k vectors): FAISS ``Flat`` and ``HNSW32`` (served settings) against
   Milvus Lite (``MilvusIndex``: HNSW M=16, efConstruction=200, ef=128; and FLAT), all
   through the shoplens index protocol, in this process.
2. Sharded (default 1M vectors): one FAISS index against ``ShardedIndex`` built from
   per-shard ``.npy`` files, for ``Flat`` (no compression) and PQ factory strings.

Every speed is wall clock (Milvus Lite serves from threads of this process, which CPU-time
counters of the calling thread would miss)::

    python benchmarks/bench_vector_backends.py                # full run, updates the docs
    python benchmarks/bench_vector_backends.py --quick --no-write   # smoke test, prints
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting cost whole time slices on a shared CPU (before
# FAISS and BLAS load); idle threads sleep instead
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from shoplens.index import make_index
from shoplens.index.sharded import ShardedIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ann  # benchmarks/bench_ann.py: the synthetic vectors, recall, thread limits
import common  # benchmarks/common.py, next to this script

HEADING = "## Vector backends"
K = 10
Row = dict[str, Any]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def serialized_bytes(index: Any) -> int:
    """What a FAISS index (or every shard of a ShardedIndex) takes, serialised."""
    import faiss

    if isinstance(index, ShardedIndex):
        return index.memory_bytes()
    return int(faiss.serialize_index(index._index).nbytes)


def measure(index: Any, xq: np.ndarray, truth: np.ndarray, s: argparse.Namespace) -> Row:
    """Recall@10, batch QPS (all queries in one call) and one-at-a-time latency, wall clock."""
    _, ids = index.search(xq, K)  # warm-up, and the answers for recall
    row: Row = {"recall": bench_ann.recall_at_k(ids, truth)}
    best = min(_timed(lambda: index.search(xq, K)) for _ in range(s.repeats))
    row["qps_batch"] = len(xq) / best
    lat = np.array([_timed(lambda q=q: index.search(q, K)) for q in xq[: s.single, None]]) * 1e3
    row["p50_ms"] = float(np.percentile(lat, 50))
    row["p99_ms"] = float(np.percentile(lat, 99))
    row["qps_single"] = 1e3 / float(lat.mean())
    return row


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def log(rows: list[Row], row: Row) -> None:
    rows.append(row)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)


def run_backends(s: argparse.Namespace) -> list[Row]:
    """FAISS Flat / HNSW32 and Milvus Lite HNSW / FLAT on the same vectors."""
    from shoplens.index.milvus import MilvusIndex

    n = s.n_backends
    xb = bench_ann.make_vectors(n, s.dim, s.clusters, seed=1)  # (N, D)
    xq = bench_ann.make_vectors(s.queries, s.dim, s.clusters, seed=2)  # (Q, D)
    ids = np.arange(n, dtype=np.int64)
    rows: list[Row] = []
    truth = None
    for factory in ("Flat", "HNSW32"):
        index = make_index(s.dim, factory)
        build = _timed(lambda index=index: index.add(ids, xb))
        if truth is None:
            truth = index.search(xq, K)[1]
        row = {"part": "backends", "n": n, "backend": "FAISS", "index": factory}
        row |= {"build_s": build, "bytes_per_vector": serialized_bytes(index) / n}
        log(rows, row | measure(index, xq, truth, s))
    assert truth is not None
    for index_type in ("HNSW", "FLAT"):
        with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
            uri = str(Path(tmp) / "milvus.db")  # Milvus Lite even when SHOPLENS_INDEX_URI is set
            mil = MilvusIndex(s.dim, uri, index_type=index_type)  # type: ignore[arg-type]
            start = time.perf_counter()
            mil.add(ids, xb)  # upserts, then flushes into segments
            mil.close()  # waits for the segment indexes (HNSW graphs) to be built
            build = time.perf_counter() - start
            mil = MilvusIndex(s.dim, uri, collection=mil.collection, index_type=index_type)  # type: ignore[arg-type]
            row = {"part": "backends", "n": n, "backend": "Milvus Lite", "index": index_type}
            row |= {"build_s": build, "bytes_per_vector": folder_bytes(Path(uri)) / n}
            log(rows, row | measure(mil, xq, truth, s))
            mil.close()
    return rows


def run_sharded(s: argparse.Namespace) -> list[Row]:
    """One FAISS index vs ``s.shards`` shards built from .npy files, per factory."""
    n = s.n_sharded
    xb = bench_ann.make_vectors(n, s.dim, s.clusters, seed=1)  # (N, D)
    xq = bench_ann.make_vectors(s.queries, s.dim, s.clusters, seed=2)  # (Q, D)
    ids = np.arange(n, dtype=np.int64)
    rows: list[Row] = []
    truth = None
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        folder = Path(tmp)
        for s_i, part in enumerate(np.array_split(np.arange(n), s.shards)):
            np.save(folder / f"part{s_i:03d}.ids.npy", ids[part])
            np.save(folder / f"part{s_i:03d}.vectors.npy", xb[part])
        for factory in s.factories:
            single = make_index(s.dim, factory)
            build = _timed(lambda single=single: single.add(ids, xb))
            if truth is None:  # the first factory is Flat: exact ground truth
                truth = single.search(xq, K)[1]
            row = {"part": "sharded", "n": n, "index": factory, "shards": 1}
            row |= {"build_s": build, "bytes_per_vector": serialized_bytes(single) / n}
            log(rows, row | measure(single, xq, truth, s))
            del single
            start = time.perf_counter()
            sharded = ShardedIndex.from_dir(folder, factory, threads=s.shards)
            build = time.perf_counter() - start
            row = {"part": "sharded", "n": n, "index": factory, "shards": s.shards}
            row |= {"build_s": build, "bytes_per_vector": sharded.bytes_per_vector}
            log(rows, row | measure(sharded, xq, truth, s))
            del sharded
    return rows


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(rows: list[Row], name: Any, baseline: Row, caption: str) -> list[str]:
    lines = [
        caption,
        "",
        "| index | build s | bytes/vector | recall@10 | QPS batch | latency p50 / p99 ms "
        "| QPS one at a time | vs baseline (one at a time) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "baseline" if r is baseline else f"{r['qps_single'] / baseline['qps_single']:.2f}x"
        lines.append(
            f"| {name(r)} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} | {r['recall']:.4f} "
            f"| {_fmt(r['qps_batch'])} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} "
            f"| {_fmt(r['qps_single'])} | {ratio} |"
        )
    return lines


def render(rows: list[Row], s: argparse.Namespace, extra: Row) -> str:
    import faiss
    import milvus_lite
    import pymilvus

    m = extra["machine"]
    where = f"{m['cpu']}, commit {m['commit']}"
    backends = [r for r in rows if r["part"] == "backends"]
    sharded = [r for r in rows if r["part"] == "sharded"]
    out = [
        HEADING,
        "",
        common.measured_line(
            " ".join(["bench_vector_backends.py", *s.argv]),
            f"FAISS and BLAS limited to {s.threads} threads, {s.shards} shard threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
            f"faiss {faiss.__version__}, pymilvus {pymilvus.__version__}, milvus-lite "
            f"{milvus_lite.__version__}, numpy {np.__version__}",
            extra["load"],
            m,
            extra["date"],
        ),
        "",
        f"- Data (synthetic): the {s.dim}-d clustered vectors of bench_ann.py ({s.clusters:,} "
        f"clusters, power-law spectrum, L2-normalised, inner product); {s.queries:,} queries "
        "from the same mixture, none in the base. Ground truth and baseline: exact FAISS "
        "(`Flat`) on the same vectors.",
        f"- All speeds are wall clock on a shared machine: QPS batch sends all queries in "
        f"one call (best of {s.repeats}); one at a time is {s.single:,} single-query calls, "
        "as the service issues them. bytes/vector: serialised FAISS index (vectors or codes, "
        "graph, ids), for Milvus Lite its data folder on disk (Parquet, WAL, index files).",
        "",
    ]
    if backends:
        base = next(r for r in backends if r["index"] == "Flat")
        out += table(
            backends,
            lambda r: f"{r['backend']} `{r['index']}`",
            base,
            f"**FAISS vs Milvus Lite, {base['n']:,} synthetic vectors** ({where}; baseline: "
            "FAISS `Flat`). Milvus HNSW: M=16, efConstruction=200, ef=128; FAISS HNSW32: "
            "efConstruction=200, efSearch=64 (served defaults).",
        )
        out.append("")
    if sharded:
        base = next(r for r in sharded if r["index"] == "Flat" and r["shards"] == 1)
        out += table(
            sharded,
            lambda r: (
                f"`{r['index']}`, "
                + ("single index" if r["shards"] == 1 else f"{r['shards']} shards")
            ),
            base,
            f"**Sharded vs single FAISS index, {base['n']:,} synthetic vectors** ({where}; "
            f"baseline: one `Flat` index). Shards are built one at a time from per-shard "
            f".npy files, searched on {s.shards} threads and merged exactly; IVF shards "
            "each probe `nprobe`=16 of their own lists. PQ factories end in `np` (no "
            "polysemous training, which only speeds up Hamming filtering and takes minutes).",
        )
        out.append("")
    out += ["Raw results: [bench/vector_backends.json](bench/vector_backends.json).", ""]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5k / 10k vectors, 100 queries")
    p.add_argument("--n-backends", type=int, help="vectors for FAISS vs Milvus (100k)")
    p.add_argument("--n-sharded", type=int, help="vectors for sharded vs single (1M)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument(
        "--factories",
        help="';'-separated FAISS factories, Flat first "
        "(default Flat;IVF1024,PQ32np;IVF1024_HNSW32,PQ32np)",
    )
    p.add_argument("--queries", type=int, help="number of queries (default 1000)")
    p.add_argument("--single", type=int, help="one-at-a-time queries (default 300)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="FAISS / BLAS threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", choices=["backends", "sharded"], help="leave one part out")
    p.add_argument("--docs", type=Path, default=common.DOCS, help="where the results go")
    p.add_argument("--no-write", action="store_true", help="print only")
    s = p.parse_args(argv)
    s.argv = sys.argv[1:] if argv is None else argv
    s.n_backends = s.n_backends or (5_000 if s.quick else 100_000)
    s.n_sharded = s.n_sharded or (10_000 if s.quick else 1_000_000)
    s.queries = s.queries or (100 if s.quick else 1000)
    s.single = min(s.single or (50 if s.quick else 300), s.queries)
    s.repeats = 1 if s.quick else s.repeats
    quick = "Flat;IVF16,PQ16np;IVF16_HNSW16,PQ16np"
    default = quick if s.quick else "Flat;IVF1024,PQ32np;IVF1024_HNSW32,PQ32np"
    s.factories = (s.factories or default).split(";")
    if s.factories[0] != "Flat":
        p.error("--factories must start with Flat (the ground truth)")
    return s


def main(argv: list[str] | None = None) -> Row:
    s = parse_args(argv)
    load = [common.load_average()]
    rows: list[Row] = []
    with bench_ann.threads(s.threads):
        if s.skip != "backends":
            rows += run_backends(s)
        if s.skip != "sharded":
            rows += run_sharded(s)
    load.append(common.load_average())
    extra: Row = {
        "date": dt.date.today().isoformat(),
        "load": statistics.mean(load),
        "machine": common.machine(),
    }
    section = render(rows, s, extra)
    print(section)
    settings = {k: str(x) if isinstance(x, Path) else x for k, x in vars(s).items()}
    result = {"settings": settings, "rows": rows} | extra
    if not s.no_write:
        common.write_json(s.docs / "bench" / "vector_backends.json", result)
        common.write_section(s.docs / "BENCHMARKS.md", section)
    return result


if __name__ == "__main__":
    main()
