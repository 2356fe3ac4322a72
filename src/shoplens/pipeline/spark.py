"""``shoplens pipeline embed`` on Apache Spark: a manifest in, sharded Parquet embeddings out.

The driver reads and validates the manifest (:mod:`shoplens.pipeline.records`), stages the
valid rows as Parquet and runs one Spark job per shard: the shard's rows are
hash-partitioned by sku into tasks of at most :data:`ROWS_PER_TASK` rows, sorted by sku
and embedded with ``mapInPandas`` (:func:`shoplens.pipeline.embed.embed_partition`).
Several shard jobs run at once (as many as Spark has cores), each committed on its own
(:mod:`shoplens.pipeline.layout`), so a run that is killed resumes where it stopped and
gives the same files, rows and embedding bytes as a run that was not: shard assignment,
task partitioning, row order and encoder batches depend only on the manifest and the
settings, not on the number of workers.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoplens import progress
from shoplens.config import atomic_write
from shoplens.errors import InvalidInputError
from shoplens.pipeline.embed import RESULT_SCHEMA, TaskConfig, embed_partition
from shoplens.pipeline.layout import FORMAT, MANIFEST_SHARD, Layout
from shoplens.pipeline.records import Records, read_records, records_table, rejects_table
from shoplens.pipeline.report import EMBEDDING_COLUMNS, EmbedReport, finish

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROWS_PER_TASK = 1024
MAX_SHARDS = 100_000
JAVA_HINT = (
    "install Java 17 or newer (Debian/Ubuntu: 'sudo apt-get install default-jre-headless', "
    "which 'make setup' does) or set JAVA_HOME to a Java 17+ installation"
)
_PANDAS3_WARNING = ".*pandas >= 3.0.0.*"  # PySpark 4 warns on every pandas call


def find_java() -> tuple[str, int]:
    """The ``java`` Spark will run (``$JAVA_HOME/bin/java``, else PATH) and its major version.

    Raises:
        InvalidInputError: no Java, or one too old for PySpark (the message says how to
            install one).
    """
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no 'java' on PATH"
        raise InvalidInputError(f"Spark needs Java ({where}): {JAVA_HINT}")
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidInputError(f"cannot run {java} -version ({exc}): {JAVA_HINT}") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not m:
        raise InvalidInputError(f"cannot tell the version of {java}: {JAVA_HINT}")
    major = int(m.group(2) or 0) if m.group(1) == "1" else int(m.group(1))  # "1.8" -> 8
    if major < min_java():
        raise InvalidInputError(
            f"Spark needs Java {min_java()}+, found Java {major} ({java}): {JAVA_HINT}"
        )
    return java, major


def min_java() -> int:
    """Oldest Java the installed PySpark runs on: 17 for Spark 4, 8 for Spark 3.5."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return 17 if int(version("pyspark").split(".")[0]) >= 4 else 8
    except (PackageNotFoundError, ValueError):
        return 17


def local_master(workers: int | None = None) -> str:
    """``local[N]``: N cores of this machine (default: all the process may use)."""
    from shoplens.eval.report import cpu_cores

    return f"local[{workers or max(1, cpu_cores())}]"


def session_conf(master: str, driver_memory: str = "1g") -> dict[str, str]:
    """Spark settings of the pipeline (UI and console progress off, no adaptive plans)."""
    conf = {
        "spark.app.name": "shoplens-pipeline",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "false",  # keep the planned partitions as they are
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": driver_memory,
        "spark.python.worker.reuse": "true",  # keeps each worker's cached encoder
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    }
    if master.startswith("local"):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        # The JVM only moves rows here (Python decodes and embeds): its start-up dominates,
        # and the client compiler with the serial GC starts in about half the CPU time.
        conf["spark.driver.extraJavaOptions"] = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    return conf


def create_session(master: str = "local[2]", *, driver_memory: str = "1g") -> SparkSession:
    """A SparkSession for the pipeline; local masters run workers on this Python.

    Raises:
        InvalidInputError: Java missing or too old, or Spark failed to start.
    """
    import warnings

    find_java()
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warnings.filterwarnings("ignore", message=_PANDAS3_WARNING)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master)
    for key, value in session_conf(master, driver_memory).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        raise InvalidInputError(f"Spark did not start (master {master}): {exc}") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_embed(
    manifest: str | Path,
    out: str | Path,
    encoder: str,
    *,
    shards: int = 8,
    batch_size: int = 64,
    spark: SparkSession | None = None,
    master: str | None = None,
    workers: int | None = None,
    driver_memory: str = "1g",
    allow_outside_root: bool = False,
    concurrency: int = 8,
    timeout: float = 10.0,
    retries: int = 2,
    torch_threads: int = 1,
) -> EmbedReport:
    """Embed every image of ``manifest`` into ``out`` (see module docs); resumable.

    Args:
        manifest: CSV / TSV / JSONL / JSON / Parquet manifest or a folder of images.
        out: output folder (new, or one an earlier run with the same settings wrote).
        encoder: encoder spec (``effnet-lite0@64``, ``trained:DIR``, ``test-tiny``...).
        shards: number of shards (``shard = sha1(sku) mod shards``).
        batch_size: images per encoder call.
        spark: an existing session (tests); else one is created for ``master`` or
            ``local[workers]`` and stopped at the end.
        torch_threads: ``torch.set_num_threads`` in every Python worker.

    Raises:
        NotFoundError: no manifest, or an unknown encoder.
        InvalidInputError: a bad manifest or option, no Java, or ``out`` holding another run.
    """
    started = time.time()
    if not 1 <= shards <= MAX_SHARDS:
        raise InvalidInputError(f"--shards must be 1..{MAX_SHARDS}, got {shards}")
    if batch_size < 1 or torch_threads < 1:
        raise InvalidInputError("--batch-size and --torch-threads must be at least 1")
    if master and workers:
        raise InvalidInputError("give --master or --workers (which sets local[N]), not both")
    records = read_records(manifest, allow_outside_root=allow_outside_root)
    enc = _image_encoder(encoder)
    if spark is None:
        find_java()  # before anything is written
    where = str(spark.sparkContext.master) if spark is not None else master or ""
    where = where or local_master(workers)
    layout = Layout(out)
    run = {
        "format": FORMAT,
        "encoder": encoder,
        "shards": shards,
        "batch_size": batch_size,
        "input_fingerprint": records.fingerprint,
    }
    table = records_table(records.rows, shards)
    counts = Counter(table.column("shard").to_pylist())
    with layout.locked():
        layout.check_run(run)
        done = layout.committed(shards)
        layout.clean(shards, done)
        _stage(layout, table, records)
        pending = [k for k in range(shards) if k not in done]
        if pending:
            layout.manifest_json.unlink(missing_ok=True)
        for k in [k for k in pending if not counts[k]]:  # nothing to compute: commit now
            (layout.tmp / f"shard-{k}").mkdir(parents=True)
            layout.commit(k, layout.tmp / f"shard-{k}")
        work = [k for k in pending if counts[k]]
        report = EmbedReport(
            out=str(layout.out), encoder=encoder, dim=enc.dim, shards=shards,
            products=len(records.rows), rejected_manifest=len(records.errors),
            computed=pending, resumed=sorted(done), master=where,
        )  # fmt: skip
        what = f"spark embed ({encoder}, {shards} shards, {where})"
        with progress.task(what, len(records.rows)) as advance:
            advance(sum(counts[k] for k in done))
            if work:
                cfg = TaskConfig(
                    encoder, batch_size, str(records.root), str(layout.images),
                    allow_outside_root, concurrency, timeout, retries, torch_threads,
                )  # fmt: skip
                session = spark or create_session(where, driver_memory=driver_memory)
                try:
                    report.encoder_loads = _run_shards(session, layout, cfg, work, counts, advance)
                finally:
                    if spark is None:
                        session.stop()
        markers = layout.committed(shards)
        report.seconds = time.time() - started
        settings = {"batch_size": batch_size, "rows_per_task": ROWS_PER_TASK}
        finish(layout, report, records, enc, markers, settings)
    return report


def _image_encoder(spec: str) -> Any:
    from shoplens.registry import get_encoder

    enc = get_encoder(spec)
    if "image" not in enc.modalities:
        raise InvalidInputError(f"encoder {spec!r} does not embed images (it is {enc.name})")
    return enc


def _stage(layout: Layout, table: Any, records: Records) -> None:
    """Write the valid rows (sorted by shard, sku) and the manifest's rejects."""
    import pyarrow.parquet as pq

    table = table.sort_by([("shard", "ascending"), ("sku", "ascending")])
    with atomic_write(layout.staging) as f:
        pq.write_table(table, f, row_group_size=ROWS_PER_TASK)
    bad = rejects_table((e.line, e.sku, None, e.message, "manifest") for e in records.errors)
    with atomic_write(
        layout.shard_dir(layout.rejects, MANIFEST_SHARD) / "part-00000-c000.parquet"
    ) as f:
        pq.write_table(bad, f)


def _run_shards(
    spark: SparkSession,
    layout: Layout,
    cfg: TaskConfig,
    pending: list[int],
    counts: Counter[int],
    advance: Any,
) -> int:
    """Run and commit the pending shards, several at once; returns encoder loads."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    loads = sc.accumulator(0)
    fn = partial(embed_partition, cfg, loads)
    staging = _uri(layout.staging)

    def one(k: int) -> None:
        tmp = layout.tmp / f"shard-{k}"
        parts = max(1, math.ceil(counts[k] / ROWS_PER_TASK))
        rows = spark.read.parquet(staging).where(F.col("shard") == k).drop("shard")
        result = (
            rows.repartition(parts, "sku")
            .sortWithinPartitions("sku")
            .mapInPandas(fn, RESULT_SCHEMA)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        try:
            ok = result.where(F.col("reason").isNull()).select(*EMBEDDING_COLUMNS)
            ok.write.parquet(_uri(tmp / "embeddings"))
            bad = result.where(F.col("reason").isNotNull()).select(
                "line", "sku", "image", "reason", F.lit("image").alias("stage")
            )
            bad.write.parquet(_uri(tmp / "rejects"))
        finally:
            result.unpersist()
        layout.commit(k, tmp)
        advance(counts[k])

    parallel = max(1, min(len(pending), sc.defaultParallelism, 64))
    with ThreadPoolExecutor(parallel, thread_name_prefix="shard") as pool:
        futures = [pool.submit(one, k) for k in pending]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            sc.cancelAllJobs()
            raise failed[0].exception()  # type: ignore[misc]
    return int(loads.value)


def _uri(path: Path) -> str:
    """A local path for Spark: ``file://`` keeps it off a cluster's default file system;
    Hadoop takes the path as it is (``Path.as_uri`` would percent-encode it)."""
    return f"file://{path}"
