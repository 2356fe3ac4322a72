"""``shoplens pipeline embed`` on Spark in local mode, on a tiny generated catalogue.

One SparkSession (local[2]) is shared by the module. The killed run is a real
``shoplens pipeline embed`` subprocess, SIGKILLed (with its JVM and Python workers) as
soon as its first shard commits; the same command's output after resuming must equal an
uninterrupted run's, file by file and byte by byte in the embeddings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoplens.errors import InvalidInputError, NotReadyError
from shoplens.pipeline.load import load_output, read_output, vectors_of
from shoplens.pipeline.records import read_records, shard_of
from shoplens.pipeline.report import EmbedReport
from shoplens.pipeline.spark import find_java, run_embed

from ..conftest import write_catalog
from ..helpers import SHOPLENS

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")
SHARDS = 4
ENCODER = "test-tiny"


def _java_or_skip() -> None:
    try:
        find_java()
    except InvalidInputError as exc:
        pytest.skip(f"Spark tests need Java: {exc.message}")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    _java_or_skip()
    from shoplens.pipeline.spark import create_session

    session = create_session("local[2]", driver_memory="512m")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 good products, a truncated PNG, a missing file and a duplicate sku."""
    path = write_catalog(tmp_path_factory.mktemp("spark-src"))
    good = (path.parent / "img" / "SKU-100.png").read_bytes()
    (path.parent / "img" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    with path.open("a", encoding="utf-8") as f:
        f.write("SKU-BROKEN,Broken photo,Red circle,img/broken.png,red,small\n")
        f.write("SKU-GONE,Missing photo,Red circle,img/gone.png,red,small\n")
        f.write("SKU-000,Same sku again,Red circle,img/SKU-000.png,red,small\n")
    return path


@pytest.fixture(scope="module")
def reference(spark: Any, manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An uninterrupted run (in this process's session)."""
    out = tmp_path_factory.mktemp("spark-ref") / "out"
    report = run_embed(manifest, out, ENCODER, shards=SHARDS, batch_size=8, spark=spark)
    return out, report


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    _, table = read_output(out)
    return {r["sku"]: r for r in table.to_pylist()}


def _rejects(out: Path) -> set[tuple[int, str | None, str, str]]:
    table = pq.read_table(out / "rejects", partitioning="hive")
    return {(r["line"], r["sku"], r["reason"], r["stage"]) for r in table.to_pylist()}


def test_parquet_manifest_reads_like_csv(manifest: Path, tmp_path: Path) -> None:
    csv_records = read_records(manifest)
    rows = [
        {
            "SKU": r.sku,
            "Title": r.title,
            "category": r.category,
            "image": r.image,
            "attributes": r.attributes,
            "extra": 7 if r.line % 2 else None,
        }
        for r in csv_records.rows
    ]
    path = manifest.parent / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    pq_records = read_records(path)
    assert pq_records.kind == "parquet" and pq_records.root == csv_records.root
    got = [(r.sku, r.title, r.category, r.image, r.attributes) for r in pq_records.rows]
    want = [
        (
            r.sku,
            r.title,
            r.category,
            r.image,
            {**r.attributes, **({"extra": "7"} if r.line % 2 else {})},
        )
        for r in csv_records.rows
    ]
    assert got == want
    assert pq_records.fingerprint != csv_records.fingerprint
    pq.write_table(pa.table({"sku": ["a"], "title": ["t"]}), tmp_path / "bad.parquet")
    with pytest.raises(InvalidInputError, match="missing required column"):
        read_records(tmp_path / "bad.parquet")


def test_embeddings_equal_single_process(reference: Any, manifest: Path, home: Path) -> None:
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_image_index

    out, report = reference
    assert isinstance(report, EmbedReport)
    assert (report.embedded, report.rejected_manifest, report.rejected_images) == (24, 1, 2)
    assert 1 <= report.encoder_loads <= 2  # once per Python worker, not per task or batch
    # the single-process path: ingest + index build with the same encoder
    ingested = ingest_manifest(manifest, "spark-ref")
    with Catalog.open("spark-ref") as cat:
        build = build_image_index(cat, ENCODER)
        products = {p.sku: p for p in cat.iter_products()}
    rows = _rows(out)
    assert set(rows) == set(products)
    for sku, row in rows.items():
        p = products[sku]
        assert row["shard"] == shard_of(sku, SHARDS)
        assert (row["image_key"], row["phash"], row["width"], row["height"]) == (
            p.image_key,
            p.phash,
            p.width,
            p.height,
        )
        assert json.loads(row["attributes"]) == p.attributes
        assert (out / "images" / p.image_key[:2] / p.image_key).is_file()
        np.testing.assert_allclose(row["embedding"], build.vectors_for([p.id])[0], atol=1e-6)
    # the same rows are refused, for the same reasons, as by ingest
    want = {(e.line, e.sku, e.message) for e in ingested.rejected}
    assert {r[:3] for r in _rejects(out)} == want
    reasons = {r[1]: (r[2], r[3]) for r in _rejects(out)}
    assert "truncated or corrupt" in reasons["SKU-BROKEN"][0]
    assert reasons["SKU-GONE"] == ("image file not found: 'img/gone.png'", "image")
    assert reasons["SKU-000"][1] == "manifest"
    meta = json.loads((out / "_manifest.json").read_text())
    assert (meta["encoder"], meta["dim"], meta["shards"]) == (ENCODER, 64, SHARDS)
    assert meta["rows"] == {
        "manifest": 27,
        "valid": 26,
        "embedded": 24,
        "rejected_manifest": 1,
        "rejected_images": 2,
    }
    assert sum(s["rows"] for s in meta["per_shard"].values()) == 24
    table = pq.read_table(out / "embeddings", partitioning="hive")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())


def _committed(out: Path) -> list[int]:
    return sorted(int(p.stem.split("=")[1]) for p in (out / "_commits").glob("shard=*.json"))


def test_kill_and_resume_equals_uninterrupted_run(
    spark: Any, reference: Any, manifest: Path, tmp_path: Path
) -> None:
    ref_out, _ = reference
    out = tmp_path / "out"
    cmd = [
        SHOPLENS,
        "pipeline",
        "embed",
        str(manifest),
        "--out",
        str(out),
        "--encoder",
        ENCODER,
        "--shards",
        str(SHARDS),
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--json",
    ]
    env = {**os.environ, "SHOPLENS_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 400
        while not (out / "_commits").is_dir() or not _committed(out):
            assert proc.poll() is None, "the pipeline exited before its first commit"
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its JVM and its Python workers
        proc.wait(timeout=60)
    done = _committed(out)
    assert 1 <= len(done) < SHARDS, f"killed too late: shards {done} were committed"
    assert not (out / "_manifest.json").exists()
    with pytest.raises(NotReadyError, match="has not finished"):
        load_output(out, "never")
    report = run_embed(manifest, out, ENCODER, shards=SHARDS, batch_size=8, spark=spark)
    assert report.resumed == done and sorted(report.resumed + report.computed) == [0, 1, 2, 3]
    # same files, same rows, same embedding bytes
    files = sorted(p.relative_to(ref_out) for p in ref_out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".parquet":
            assert pq.read_table(out / rel).equals(pq.read_table(ref_out / rel)), rel
        elif rel.parts[0] in ("images", "_commits") or rel.name == "_run.json":
            assert (out / rel).read_bytes() == (ref_out / rel).read_bytes(), rel
    a, b = (json.loads((d / "_manifest.json").read_text()) for d in (out, ref_out))
    assert {k: v for k, v in a.items() if k != "run"} == {k: v for k, v in b.items() if k != "run"}
    _, table_a = read_output(out)
    _, table_b = read_output(ref_out)
    assert vectors_of(table_a, 64).tobytes() == vectors_of(table_b, 64).tobytes()
    # a re-run with other settings is refused instead of mixing two runs
    with pytest.raises(InvalidInputError, match="holds another pipeline run"):
        run_embed(manifest, out, ENCODER, shards=SHARDS + 1, batch_size=8, spark=spark)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from shoplens.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def test_load_into_catalog_then_search(reference: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from shoplens.catalog.store import Catalog
    from shoplens.index.store import load_build

    out, _ = reference
    code, stdout, err = _cli(capsys, "pipeline", "load", str(out), "--catalog", "piped", "--json")
    assert code == 0, err
    loaded = json.loads(stdout)
    assert (loaded["added"], loaded["vectors"], loaded["embedded_here"]) == (24, 24, 0)
    assert loaded["index"]["count"] == 24 and loaded["index"]["dim"] == 64
    rows = _rows(out)
    with Catalog.open("piped") as cat:
        build = load_build(cat, ENCODER)
        for p in cat.iter_products():
            assert p.image_key == rows[p.sku]["image_key"]
            assert (
                build.vectors_for([p.id])[0].tobytes()
                == np.asarray(rows[p.sku]["embedding"], np.float32).tobytes()
            )
            assert cat.image_path(p.image_key).is_file()
    code, stdout, err = _cli(
        capsys, "search", "--catalog", "piped", "--sku", "SKU-100", "-k", "3", "--json"
    )
    assert code == 0, err
    hits = json.loads(stdout)["results"]
    assert len(hits) == 3 and "SKU-100" not in {h["sku"] for h in hits}
    assert load_output(out, "piped").unchanged == 24  # loading again changes nothing


def test_cli_errors_exit_2(
    manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = str(tmp_path / "out")
    code, _, err = _cli(capsys, "pipeline", "embed", str(tmp_path / "nope.csv"), "--out", out)
    assert code == 2 and "manifest not found" in err
    code, _, err = _cli(capsys, "pipeline", "embed", str(manifest), "--out", out, "-e", "nope")
    assert code == 2 and "unknown encoder" in err
    code, _, err = _cli(
        capsys, "pipeline", "embed", str(manifest), "--out", out, "-e", "test-tiny-text"
    )
    assert code == 2 and "does not embed images" in err
    code, _, err = _cli(
        capsys,
        "pipeline",
        "embed",
        str(manifest),
        "--out",
        out,
        "-e",
        ENCODER,
        "--master",
        "local[1]",
        "--workers",
        "2",
    )
    assert code == 2 and "not both" in err
    code, _, err = _cli(capsys, "pipeline", "embed", str(manifest), "--out", out, "--shards", "0")
    assert code == 2
    code, _, err = _cli(capsys, "pipeline", "load", str(tmp_path), "--catalog", "x")
    assert code == 2 and "not an output" in err
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    code, _, err = _cli(capsys, "pipeline", "embed", str(manifest), "--out", out, "-e", ENCODER)
    assert code == 2 and "apt-get install default-jre-headless" in err
    assert not Path(out).exists()  # nothing written before the checks pass
