"""Spark pipeline: rows/s of `shoplens pipeline embed` on local[1] and local[2] vs one process.

The same images (the first N product images of the Fashion-MNIST demo catalogue in
``$SHOPLENS_HOME``, copied beside a CSV manifest; ``--generated`` draws synthetic ones
instead) are embedded with the same encoder and batch size three ways:

- **single process** (the baseline): the pipeline's own per-row code
  (``shoplens.pipeline.embed.embed_chunk``: ingest's loader, safe decode, stored image
  written, phash, ``encode_images``) called on batches in a plain loop, then one Parquet
  file, with 1 torch thread: the same work without Spark;
- **Spark local[1]** and **Spark local[2]**: :func:`shoplens.pipeline.spark.run_embed`,
  1 torch thread per Spark Python worker, into a fresh output folder each repeat.

Spark is timed warm (a first run in the same session starts the JVM's Python workers and
loads the encoder there, as on a long job) and cold (session start + first run)::

    SHOPLENS_HOME=~/.shoplens python benchmarks/bench_spark.py        # updates the docs
    python benchmarks/bench_spark.py --quick --no-write                # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/common.py, next to this script

HEADING = "## Spark pipeline"
SCALING_TARGET = 1.6  # local[2] rows/s over local[1]
OVERHEAD_TARGET = 1.3  # Spark local[1] time over the single process's


def fashion_images(folder: Path, n: int) -> Path:
    """Copy the first ``n`` product images of the demo catalogue; write ``catalog.csv``."""
    from shoplens.catalog.store import Catalog
    from shoplens.errors import NotFoundError

    try:
        cat = Catalog.open("fashion-mnist")
    except NotFoundError as exc:
        raise SystemExit(f"{exc.message}; run 'shoplens demo' first or pass --generated") from None
    rows = []
    with cat:
        for p in cat.iter_products():
            if len(rows) == n:
                break
            rel = f"img/{p.image_key}"
            (folder / "img").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cat.image_path(p.image_key), folder / rel)
            rows.append({"sku": p.sku, "title": p.title, "category": p.category, "image": rel})
    return _write_manifest(folder, rows)


def generated_images(folder: Path, n: int, size: int = 64) -> Path:
    """``n`` seeded synthetic product photos (a coloured ellipse on noise) as PNGs."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        noise = rng.integers(200, 256, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(noise)
        a, b = rng.integers(4, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        ImageDraw.Draw(img).ellipse((a, b, size - a // 2, size - b // 2), fill=colour)
        rel = f"img/g{i:06d}.png"
        img.save(folder / rel)
        rows.append(
            {"sku": f"G-{i:06d}", "title": f"item {i}", "category": f"c{i % 10}", "image": rel}
        )
    return _write_manifest(folder, rows)


def _write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "catalog.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["sku", "title", "category", "image"])
        w.writeheader()
        w.writerows(rows)
    return path


def single_process(manifest: Path, encoder_spec: str, batch_size: int) -> float:
    """Seconds of the baseline: the pipeline's own per-row work in one plain process.

    The same steps as ``shoplens pipeline embed`` without Spark: read and check the
    manifest (:func:`read_records`), then :func:`embed_chunk` on batches of rows (load
    with ingest's loader, safe decode, normalise and write the stored image, phash,
    ``encode_images``) and one Parquet file of the results; 1 torch thread, the encoder
    loaded before the clock starts (as Spark's warm runs have it).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from shoplens.pipeline.embed import TaskConfig, embed_chunk, worker_encoder
    from shoplens.pipeline.records import read_records

    torch.set_num_threads(1)
    worker_encoder(encoder_spec, 1)  # loaded once, outside the timing
    with tempfile.TemporaryDirectory(prefix="shoplens-bench-single-") as tmp:
        start = time.perf_counter()
        records = read_records(manifest)
        cfg = TaskConfig(encoder_spec, batch_size, str(records.root), str(Path(tmp) / "images"))
        frames = [
            embed_chunk(cfg, None, records.rows[i : i + batch_size])
            for i in range(0, len(records.rows), batch_size)
        ]
        table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
        pq.write_table(table, Path(tmp) / "embeddings.parquet")
        return time.perf_counter() - start


def spark_runs(
    manifest: Path, encoder: str, workers: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Cold start, warm-up and ``args.repeats`` timed runs on one local[workers] session."""
    from shoplens.pipeline.spark import create_session, run_embed

    def run(tag: str, spark: Any) -> float:
        out = work / f"out-{workers}-{tag}"
        t0 = time.perf_counter()
        report = run_embed(
            manifest, out, encoder, shards=args.shards, batch_size=args.batch_size, spark=spark
        )
        seconds = time.perf_counter() - t0
        assert report.embedded == args.images, report
        shutil.rmtree(out)
        return seconds

    t0 = time.perf_counter()
    spark = create_session(f"local[{workers}]", driver_memory="1g")
    session = time.perf_counter() - t0
    try:
        first = run("first", spark)
        runs = [run(str(r), spark) for r in range(args.repeats)]
    finally:
        spark.stop()
    return {"session_start_s": session, "first_run_s": first, "runs_s": runs}


def render(res: dict[str, Any], args: argparse.Namespace) -> str:
    n = args.images
    base = statistics.median(res["single_process_s"])
    one = statistics.median(res["local[1]"]["runs_s"])
    two = statistics.median(res["local[2]"]["runs_s"])
    scaling, overhead = one / two, one / base
    m = res["machine"]

    def row(label: str, seconds: float, cold: float | None = None) -> str:
        cold_cell = f"{n / cold:.0f}" if cold else "-"
        return (
            f"| {label} | {n / seconds:.0f} | {seconds:.1f} | {seconds / base:.2f}x | {cold_cell} |"
        )

    cold = {k: res[k]["session_start_s"] + res[k]["first_run_s"] for k in ("local[1]", "local[2]")}
    met = {True: "met", False: "missed"}
    source = "generated 64x64 PNGs" if args.generated else "Fashion-MNIST demo catalogue images"
    return "\n".join(
        [
            HEADING,
            "",
            common.measured_line(
                "bench_spark.py" + (" --quick" if args.quick else ""),
                f"1 torch thread per process or Spark worker, batch {args.batch_size}",
                f"torch {m['torch']}, pyspark {res['pyspark']}, Java {res['java']}",
                res["load"][0],
                m,
            ),
            "",
            f"{n} {source} (28x28 px each for Fashion-MNIST), encoder `{args.encoder}`, "
            f"{args.shards} shards. Baseline: a single Python process running the pipeline's "
            "own per-row code (`embed_chunk`: ingest's loader, safe decode, stored image "
            "written, phash, `encode_images` in batches of the same size) in a plain loop, "
            "then one Parquet file; encoder loaded before timing. Spark: `shoplens pipeline "
            "embed` (`run_embed`) into a "
            f"fresh folder, median of {args.repeats} warm run(s) after a first run in the same "
            "session (Python workers started, encoder loaded); cold = session start + first "
            f"run. Load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the "
            "end, from other work.",
            "",
            "| run | rows/s (warm) | seconds (warm) | time vs single process | rows/s (cold) |",
            "|---|---:|---:|---:|---:|",
            row("single process (baseline)", base),
            row("Spark local[1]", one, cold["local[1]"]),
            row("Spark local[2]", two, cold["local[2]"]),
            "",
            f"local[2] / local[1] rows/s: **{scaling:.2f}x** (target >= {SCALING_TARGET}x: "
            f"{met[scaling >= SCALING_TARGET]}); Spark local[1] / single-process time: "
            f"**{overhead:.2f}x** (target <= {OVERHEAD_TARGET}x: "
            f"{met[overhead <= OVERHEAD_TARGET]}). Cold runs pay the JVM and the Python "
            "workers' start (imports and encoder load) once per job.",
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--encoder", default="effnet-lite0@64")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="warm Spark runs per master")
    p.add_argument("--generated", action="store_true", help="synthetic images, no catalogue")
    p.add_argument("--quick", action="store_true", help="200 images, 1 repeat: a smoke test")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--docs", type=Path, default=common.DOCS, help="where the results go")
    args = p.parse_args()
    if args.quick:
        args.images, args.repeats, args.shards = 200, 1, 4
    import pyspark
    import torch

    from shoplens.pipeline.spark import find_java

    torch.set_num_threads(1)
    _, java = find_java()
    load = [common.load_average()]
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        work = Path(tmp)
        make = generated_images if args.generated else fashion_images
        manifest = make(work / "src", args.images)
        single_process(manifest, args.encoder, args.batch_size)  # warm-up (model load, caches)
        res: dict[str, Any] = {"single_process_s": []}
        res["single_process_s"].append(single_process(manifest, args.encoder, args.batch_size))
        for workers in (1, 2):
            res[f"local[{workers}]"] = spark_runs(manifest, args.encoder, workers, args, work)
        res["single_process_s"].append(single_process(manifest, args.encoder, args.batch_size))
    load.append(common.load_average())
    res.update(
        machine=common.machine(),
        pyspark=pyspark.__version__,
        java=java,
        load=load,
        date=dt.date.today().isoformat(),
        args=vars(args) | {"docs": str(args.docs)},
    )
    section = render(res, args)
    print(section)
    if not args.no_write:
        common.write_json(args.docs / "bench" / "spark.json", res)
        common.write_section(args.docs / "BENCHMARKS.md", section)


if __name__ == "__main__":
    main()
