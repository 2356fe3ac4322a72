"""``shoplens pipeline``: batch jobs on Apache Spark (``embed``) and loading their output."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shoplens import progress

pipeline_app = typer.Typer(
    help="Batch pipelines on Apache Spark: embed a large catalogue, load the result.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
FactoryOpt = Annotated[
    str | None,
    typer.Option(help="FAISS factory string of the index (default: Flat below 100k, HNSW32)."),
]


def _emit(as_json: bool, payload: Any, human: str) -> None:
    typer.echo(json.dumps(payload, ensure_ascii=False, indent=2) if as_json else human)


@pipeline_app.command("embed")
def embed_command(
    manifest: Annotated[
        str, typer.Argument(help="CSV/TSV/JSONL/JSON/Parquet manifest or a folder of images.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder (resumable).")],
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder", "-e", help="Image encoder spec, e.g. effnet-lite0@64, trained:DIR."
        ),
    ] = "effnet-lite0",
    shards: Annotated[int, typer.Option(min=1, max=100_000, help="Output shards.")] = 8,
    master: Annotated[
        str | None, typer.Option(help="Spark master URL, e.g. spark://host:7077, yarn.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Run on local[N] (default: all cores).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Images per batch.")] = 64,
    torch_threads: Annotated[
        int, typer.Option(min=1, max=256, help="torch threads in each Spark Python worker.")
    ] = 1,
    driver_memory: Annotated[str, typer.Option(help="spark.driver.memory.")] = "1g",
    allow_outside_root: Annotated[
        bool, typer.Option(help="Allow image paths outside the manifest's folder.")
    ] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Parallel downloads.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per image download.")] = 10.0,
    retries: Annotated[int, typer.Option(min=0, max=10)] = 2,
    load_index: Annotated[
        bool, typer.Option(help="Then load the result into --catalog and its index.")
    ] = False,
    catalog: Annotated[
        str | None, typer.Option("--catalog", "-c", help="Catalogue for --load-index.")
    ] = None,
    factory: FactoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed a manifest's images with Spark into sharded Parquet (re-run to resume)."""
    from shoplens.errors import InvalidInputError
    from shoplens.pipeline.spark import run_embed

    if load_index and not catalog:
        raise InvalidInputError("--load-index needs --catalog NAME")
    progress.set_mode("off" if as_json else "auto")
    report = run_embed(
        manifest,
        out,
        encoder,
        shards=shards,
        batch_size=batch_size,
        master=master,
        workers=workers,
        driver_memory=driver_memory,
        allow_outside_root=allow_outside_root,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        torch_threads=torch_threads,
    )
    payload: dict[str, Any] = report.to_dict()
    lines = [
        f"{report.embedded} embedded, {report.rejected_manifest + report.rejected_images} "
        f"rejected ({report.rejected_manifest} in the manifest, {report.rejected_images} "
        f"images) in {report.shards} shards ({len(report.resumed)} resumed) with "
        f"{report.encoder} (dim {report.dim}) on {report.master} in {report.seconds:.1f}s",
        f"output: {report.out} (rejects: {report.out}/rejects)",
    ]
    lines += [f"  line {r['line']}: {r['reason']}" for r in report.rejects]
    if load_index and catalog:
        from shoplens.pipeline.load import load_output

        loaded = load_output(report.out, catalog, factory=factory)
        payload["load"] = loaded.to_dict()
        lines.append(_load_line(loaded))
    _emit(as_json, payload, "\n".join(lines))


@pipeline_app.command("load")
def load_command(
    out: Annotated[str, typer.Argument(help="Output folder of 'shoplens pipeline embed'.")],
    catalog: Annotated[str, typer.Option("--catalog", "-c", help="Catalogue name.")],
    factory: FactoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a finished run into a catalogue (products upserted) and its image index."""
    from shoplens.pipeline.load import load_output

    progress.set_mode("off" if as_json else "auto")
    report = load_output(out, catalog, factory=factory)
    _emit(as_json, report.to_dict(), _load_line(report))


def _load_line(r: Any) -> str:
    return (
        f"catalogue {r.catalog}: {r.added} added, {r.updated} updated, {r.unchanged} "
        f"unchanged; image index {r.encoder} ({r.index['factory']}, {r.index['count']} "
        f"vectors, dim {r.index['dim']}; {r.embedded_here} embedded here) in {r.seconds:.1f}s"
    )
