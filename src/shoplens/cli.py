"""``shoplens`` command line: demo, ingest, index, search, dedupe, serve, train, eval, models,
events, simulate, recommend, keys, export, report, bench, db.

Human output by default, ``--json`` for machines. Exit 0 on success, 2 with a one-line
``error: ...`` on bad input (never a traceback for a user error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shoplens import progress
from shoplens.bench import bench_app
from shoplens.db.cli import db_app
from shoplens.errors import InvalidInputError, ShoplensError
from shoplens.eval.cli import eval_command
from shoplens.export.cli import export_app
from shoplens.generate.cli import generate_app
from shoplens.personalize.cli import events_app, keys_app, recommend_app, simulate_app
from shoplens.pipeline.cli import pipeline_app
from shoplens.report.build import report_command
from shoplens.training.cli import models_app, train_command

app = typer.Typer(
    name="shoplens",
    help="Visual and text search over a retail catalogue.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
index_app = typer.Typer(help="Build and list vector indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(models_app, name="models")
app.add_typer(events_app, name="events")
app.add_typer(simulate_app, name="simulate")
app.add_typer(recommend_app, name="recommend")
app.add_typer(keys_app, name="keys")
app.add_typer(export_app, name="export")
app.add_typer(bench_app, name="bench")
app.add_typer(generate_app, name="generate")  # `generate` and `generate eval`
app.add_typer(db_app, name="db")
app.add_typer(pipeline_app, name="pipeline")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
CatalogOpt = Annotated[str, typer.Option("--catalog", "-c", help="Catalogue name.")]
EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        "-e",
        help="Image encoder spec, e.g. effnet-lite0, "
        "effnet-lite0@96, open_clip:ARCH:PATH, hf-clip:PATH, timm:NAME:PATH.",
    ),
]


def _emit(as_json: bool, payload: Any, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        typer.echo(human)


def _progress(as_json: bool) -> None:
    progress.set_mode("off" if as_json else "auto")


def _parse_attrs(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--attr {v!r} must look like key=value")
        out[key] = val
    return out


@app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="CSV/JSONL/JSON manifest, a folder of images "
            "(sub-folder = category), or 'fashion-mnist'."
        ),
    ],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Catalogue name.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail the whole file on any bad row.")] = False,
    allow_outside_root: Annotated[
        bool, typer.Option(help="Allow image paths outside the manifest's folder.")
    ] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Parallel downloads.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per image download.")] = 10.0,
    retries: Annotated[int, typer.Option(min=0, max=10)] = 2,
    limit: Annotated[
        int | None, typer.Option(help="fashion-mnist only: first N products of each split.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a catalogue (idempotent: products are upserted by sku)."""
    from shoplens.catalog.ingest import ingest_fashion_mnist, ingest_manifest

    _progress(as_json)
    if source == "fashion-mnist":
        report = ingest_fashion_mnist(name or "fashion-mnist", limit=limit)
    else:
        if name is None:
            raise InvalidInputError("--name is required for a manifest or folder")
        report = ingest_manifest(
            source,
            name,
            strict=strict,
            allow_outside_root=allow_outside_root,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
        )
    lines = [
        f"catalogue {report.catalog}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected "
        f"({report.total} products, {report.seconds:.1f}s)"
    ]
    lines += [f"  line {e.line}: {e.message}" for e in report.rejected[:20]]
    if len(report.rejected) > 20:
        lines.append(f"  ... {len(report.rejected) - 20} more")
    if report.rejects_file:
        lines.append(f"rejects report: {report.rejects_file}")
    _emit(as_json, report.to_dict(), "\n".join(lines))


@index_app.command("build")
def index_build(
    catalog: CatalogOpt,
    encoder: EncoderOpt = None,
    factory: Annotated[
        str | None,
        typer.Option(
            help="FAISS factory string, e.g. Flat, HNSW32, IVF1024,PQ32, or 'exact' (numpy). "
            "Default: Flat below 100k products, HNSW32 above."
        ),
    ] = None,
    text: Annotated[bool, typer.Option(help="Also build the text index (BM25 + MiniLM).")] = True,
    text_encoder: Annotated[str, typer.Option(help="Text encoder of the text index.")] = "minilm",
    as_json: JsonOpt = False,
) -> None:
    """Embed the catalogue and build its indexes (swapped in atomically)."""
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes

    _progress(as_json)
    report = build_indexes(
        Catalog.open(catalog), encoder, factory, text=text, text_encoder=text_encoder
    )
    human = (
        f"catalogue {catalog}: image index {report.image['encoder']} "
        f"({report.image['factory']}, {report.image['count']} vectors, dim "
        f"{report.image['dim']})"
        + (f"; text index {report.text['encoder']}" if report.text else "")
        + f" in {report.seconds:.1f}s"
    )
    _emit(as_json, report.to_dict(), human)


@index_app.command("list")
def index_list(catalog: CatalogOpt, as_json: JsonOpt = False) -> None:
    """List the indexes of a catalogue."""
    from shoplens.catalog.store import Catalog
    from shoplens.index.store import list_builds

    builds = list_builds(Catalog.open(catalog))
    human = (
        "\n".join(
            f"{b['name']}: {b['factory']}, {b['count']} vectors, dim {b['dim']}" for b in builds
        )
        or "no indexes yet"
    )
    _emit(as_json, builds, human)


@app.command()
def search(
    catalog: CatalogOpt,
    image: Annotated[str | None, typer.Option("--image", help="Query image: path or URL.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Text query.")] = None,
    sku: Annotated[str | None, typer.Option("--sku", help="Find products similar to it.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000)] = 10,
    category: Annotated[
        list[str] | None, typer.Option(help="Only this category (repeatable).")
    ] = None,
    attr: Annotated[
        list[str] | None, typer.Option(help="Attribute filter key=value (repeatable).")
    ] = None,
    encoder: EncoderOpt = None,
    dedupe: Annotated[bool, typer.Option(help="Collapse identical images.")] = True,
    text_weight: Annotated[
        float, typer.Option(min=0, max=10, help="Weight of the text signal in image + text.")
    ] = 1.0,
    image_weight: Annotated[float, typer.Option(min=0, max=10)] = 1.0,
    compose: Annotated[
        bool | None,
        typer.Option(
            "--compose/--no-compose",
            help="Image + text through the model's learned combiner (default: when it has "
            "one) or fused rankings.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search by image, text, image + text ("like this, but in the boot category"), or sku."""
    from shoplens.data.images import load_image_ref
    from shoplens.search.engine import Filters, SearchEngine

    if sku is None and image is None and text is None:
        raise InvalidInputError("give --image, --text or --sku")
    engine = SearchEngine.open(catalog, encoder)
    query_image = load_image_ref(image, root=None) if image else None
    hits = engine.search(
        image=query_image,
        text=text,
        sku=sku,
        k=k,
        filters=Filters(category or [], _parse_attrs(attr)),
        dedupe=dedupe,
        text_weight=text_weight,
        image_weight=image_weight,
        compose=compose,
    )
    payload = {
        "catalog": catalog,
        "encoder": engine.image_build.encoder,
        "composed": bool(image and text and compose is not False and engine.composes),
        "stale_index": engine.stale,
        "results": [h.to_dict() for h in hits],
    }
    rows = [
        f"{n:>3}. {h.score:.4f}  {h.sku}  [{h.category}]  {h.title}" for n, h in enumerate(hits, 1)
    ] or ["no results"]
    if engine.stale:
        rows.append("note: the catalogue changed since the index was built; rebuild it")
    _emit(as_json, payload, "\n".join(rows))


@app.command()
def dedupe(
    catalog: CatalogOpt,
    threshold: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Embedding cosine threshold.")
    ] = 0.95,
    hash_distance: Annotated[
        int, typer.Option(min=0, max=32, help="Max perceptual-hash bit distance.")
    ] = 6,
    encoder: EncoderOpt = None,
    show: Annotated[int, typer.Option(help="Clusters to print.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Find near-duplicate products (identical image, perceptual hash, embedding)."""
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import default_image_encoder
    from shoplens.index.store import load_build
    from shoplens.search.dedupe import find_duplicates

    cat = Catalog.open(catalog)
    build = load_build(cat, encoder or default_image_encoder(cat))
    report = find_duplicates(cat, build, threshold=threshold, hash_distance=hash_distance)
    lines = [
        f"{len(report.pairs)} duplicate pairs in {len(report.clusters)} clusters "
        f"among {report.products} products"
    ]
    lines += [
        f"  {len(c)}: {', '.join(c[:8])}{' ...' if len(c) > 8 else ''}"
        for c in report.clusters[:show]
    ]
    _emit(as_json, report.to_dict(), "\n".join(lines))


@app.command()
def serve(
    catalog: CatalogOpt = "fashion-mnist",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    encoder: EncoderOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Serve a registered model NAME[@ALIAS] (alias champion by default) and "
            "follow the alias: 'shoplens models promote/rollback' swap it live."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes on the one port, each with its own copy of the models "
            "and indexes; they share the stores and index files.",
        ),
    ] = 1,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs and /openapi.json)."""
    import gc
    import signal

    import uvicorn

    from shoplens.catalog.store import Catalog
    from shoplens.serve import ServiceSettings, create_app
    from shoplens.serve.protocol import server_options

    if model and encoder:
        raise InvalidInputError("give --encoder or --model, not both")
    Catalog.open(catalog).close()  # fail fast with a clear error for an unknown catalogue
    if workers > 1:  # uvicorn's supervisor; each worker builds the app from SHOPLENS_*
        from shoplens.serve.workers import run_workers

        run_workers(workers, catalog=catalog, encoder=encoder, model=model, host=host, port=port)
        return
    extra: dict[str, Any] = {"model": model} if model else {}  # else SHOPLENS_MODEL applies
    settings = ServiceSettings(catalog=catalog, encoder=encoder, **extra)
    service = create_app(settings)
    # SIGTERM / Ctrl-C: uvicorn stops accepting, lets in-flight requests finish (at most
    # 30 s), then re-raises the signal; ignoring it then makes a drained stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        service,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=30,
        **server_options(settings),
    )
    gc.freeze()  # drained and shut down: exit without a final scan of every loaded object


@app.command()
def demo(
    serve_: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve HTTP after preparing.")
    ] = True,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N products of each split (a quick try).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the results grid PNG.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fashion-MNIST end to end: ingest, embed, index, example searches, grid, serve."""
    from shoplens.demo import run_demo

    _progress(as_json)
    summary = run_demo(limit=limit, grid_path=out, echo=None if as_json else typer.echo)
    if as_json:
        _emit(True, summary, "")
    if serve_:
        serve(catalog=summary["catalog"], host=host, port=port, encoder=None)


app.command("eval")(eval_command)
app.command("train")(train_command)
app.command("report")(report_command)


@app.command("catalogs")
def catalogs_cmd(as_json: JsonOpt = False) -> None:
    """List catalogues under SHOPLENS_HOME."""
    from shoplens.catalog.store import Catalog, list_catalogs

    rows = []
    for name in list_catalogs():
        with Catalog.open(name) as c:
            rows.append({"name": name, "products": c.count(), "categories": len(c.categories())})
    _emit(
        as_json,
        rows,
        "\n".join(
            f"{r['name']}: {r['products']} products, {r['categories']} categories" for r in rows
        )
        or "no catalogues yet",
    )


@app.command("encoders")
def encoders_cmd(as_json: JsonOpt = False) -> None:
    """List available encoders and adapters."""
    from shoplens.registry import list_encoders

    names = list_encoders()
    _emit(as_json, names, "\n".join(names))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except ShoplensError as e:
        print(f"error: {e.message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: bad option value, missing option, ...
        message = " ".join(str(e.format_message() if hasattr(e, "format_message") else e).split())
        print(f"error: {message or 'no command given (see shoplens --help)'}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
