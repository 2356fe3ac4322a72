"""Typer commands: ``shoplens events``, ``shoplens simulate``, ``shoplens recommend``, ``keys``.

Registered in :mod:`shoplens.cli`. Anything the simulator produced is printed with the
word SIMULATED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shoplens.errors import InvalidInputError

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
CatalogOpt = Annotated[str, typer.Option("--catalog", "-c", help="Catalogue name.")]
SIMULATED_NOTE = "SIMULATED data (shoplens simulator), not real customers"

events_app = typer.Typer(help="Customer events: import and inspect.", no_args_is_help=True)
simulate_app = typer.Typer(help="Generate SIMULATED customer events.", no_args_is_help=True)
recommend_app = typer.Typer(
    help="Recommendations: for a customer, complete-the-look, fit, evaluate.",
    invoke_without_command=True,
)
keys_app = typer.Typer(help="API keys for the HTTP service.", no_args_is_help=True)


def _emit(as_json: bool, payload: Any, human: str) -> None:
    typer.echo(json.dumps(payload, ensure_ascii=False, indent=2) if as_json else human)


def _say(as_json: bool) -> Any:
    return (lambda _m: None) if as_json else (lambda m: typer.echo(m, err=True))


# ---- events -------------------------------------------------------------------------
@events_app.command("import")
def events_import(
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file of events.")],
    catalog: CatalogOpt = "fashion-mnist",
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="auto, csv, jsonl, parquet, hm (H&M transactions), retailrocket."
        ),
    ] = "auto",
    simulated: Annotated[
        bool, typer.Option(help="Mark every event as simulated (not real customers).")
    ] = False,
    rejects: Annotated[
        Path | None, typer.Option(help="Write every rejected event and why (JSONL).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import events (idempotent: events already stored, by event_id, are skipped).

    After each committed chunk a line goes to stderr (JSON with --json): the first
    ``committed`` events of the file are then stored for good (an acknowledgement).
    """
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.events import EventReport, EventStore, import_events

    def ack(n: int, r: EventReport) -> None:
        counts = {"accepted": r.accepted, "duplicates": r.duplicates, "rejected": r.rejected_count}
        typer.echo(
            json.dumps({"committed": n, **counts})
            if as_json
            else f"committed {n} events ({r.accepted} stored, {r.duplicates} already there, "
            f"{r.rejected_count} rejected)",
            err=True,
        )

    with Catalog.open(catalog) as cat, EventStore.open(cat) as store:
        report = import_events(
            store, file, fmt=fmt, simulated=simulated, rejects_path=rejects, on_commit=ack
        )
        total = store.count()
    body = report.to_dict()
    lines = [
        f"{file}: {report.accepted} stored, {report.duplicates} already there, "
        f"{report.rejected_count} rejected; the store has {total} events"
    ]
    lines += [f"  event {r.position}: {r.reason}" for r in report.rejected[:5]]
    if report.rejected_count > 5:
        lines.append(
            f"  ... {report.rejected_count - 5} more" + ("" if rejects else " (--rejects)")
        )
    if report.simulated:
        lines.append(f"note: {SIMULATED_NOTE}")
    _emit(as_json, {**body, "total_events": total}, "\n".join(lines))


@events_app.command("stats")
def events_stats(catalog: CatalogOpt = "fashion-mnist", as_json: JsonOpt = False) -> None:
    """Counts of stored events (by type, customers, simulated share)."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.events import EventStore

    with Catalog.open(catalog) as cat, EventStore.open(cat) as store:
        stats = store.stats()
    lines = [f"{k}: {v}" for k, v in stats.items()]
    if stats.get("simulated_events"):
        lines.append(f"note: {stats['simulated_events']} events are {SIMULATED_NOTE}")
    _emit(as_json, stats, "\n".join(lines))


# ---- simulate -----------------------------------------------------------------------
def _overrides(items: list[str]) -> dict[str, Any]:
    """``["repeat_rate=0.2", ...]`` -> ``{"repeat_rate": 0.2}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--set {item!r} must look like field=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


@simulate_app.command("events")
def simulate_events(
    catalog: CatalogOpt = "fashion-mnist",
    preset: Annotated[
        str, typer.Option(help="visual, balanced or low-image-signal (taste strength).")
    ] = "balanced",
    customers: Annotated[int, typer.Option(min=1, max=1_000_000)] = 2000,
    seed: int = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a SimulatorConfig field, e.g. repeat_rate=0.2."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the events (JSONL).")] = None,
    store: Annotated[bool, typer.Option(help="Store the events in the catalogue.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Simulate customers over the catalogue's indexed products (labelled simulated)."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.items import item_space
    from shoplens.personalize.simulate import preset_config, simulate, write_events

    cfg = preset_config(preset, n_customers=customers, seed=seed, **_overrides(set_ or []))
    with Catalog.open(catalog) as cat:
        items = item_space(cat, text=False)
        sim = simulate(items, cfg)
        path = write_events(sim, out) if out else None
        stored = None
        if store:
            with EventStore.open(cat) as es:
                stored = es.add_simulated(sim.events)
    payload = {
        "simulated": True,
        "preset": preset,
        "meta": sim.meta,
        "file": str(path) if path else None,
    }
    if stored is not None:
        payload["stored"] = stored.to_dict()
    lines = [
        f"{SIMULATED_NOTE}: {len(sim.events)} events of {customers} customers "
        f"(preset {preset}, seed {seed}) over {len(items)} products"
    ]
    if path:
        lines.append(f"written to {path} (+ {path.name}.simulation.json)")
    if stored is not None:
        lines.append(
            f"stored in catalogue {catalog}: {stored.accepted} new, "
            f"{stored.duplicates} already there"
        )
    _emit(as_json, payload, "\n".join(lines))


# ---- recommend ----------------------------------------------------------------------
def _rec_lines(results: list[Any]) -> list[str]:
    return [
        f"{n:>3}. {r.product.sku}  {r.score:.3f}  {r.product.category}: {r.product.title}"
        + (f"  [{', '.join(r.sources)}]" if r.sources else "")
        for n, r in enumerate(results, 1)
    ]


def _rec_json(r: Any) -> dict[str, Any]:
    return {**r.product.to_dict(), "score": r.score, "sources": r.sources}


@recommend_app.callback()
def recommend(
    ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="Recommend for this customer id.")] = None,
    sku: Annotated[str | None, typer.Option(help="A product (with --complete-the-look).")] = None,
    complete_the_look: Annotated[
        bool, typer.Option("--complete-the-look", help="Products that go with --sku.")
    ] = False,
    k: Annotated[int, typer.Option("-k", min=1, max=100)] = 10,
    catalog: CatalogOpt = "fashion-mnist",
    as_json: JsonOpt = False,
) -> None:
    """For a customer (--customer ID), or complete a look (--sku SKU --complete-the-look)."""
    if ctx.invoked_subcommand is not None:
        return
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.service import Recommendations

    if (customer is None) == (sku is None):
        raise InvalidInputError("give --customer ID, or --sku SKU --complete-the-look")
    if sku is not None and not complete_the_look:
        raise InvalidInputError(
            "--sku needs --complete-the-look (for similar items: shoplens search --sku)"
        )
    with Catalog.open(catalog) as cat:
        recs = Recommendations(cat, ann=False)  # one answer: no index worth building
        try:
            if customer is not None:
                out = recs.for_customer(customer, k)
                head = f"customer {customer}: " + (
                    f"personalized from {out['history_events']} events"
                    if out["personalized"]
                    else "no events yet -> popular products (not personalized)"
                )
                if out["simulated"]:
                    head += f" [{SIMULATED_NOTE}]"
                _emit(
                    as_json,
                    {**out, "results": [_rec_json(r) for r in out["results"]]},
                    "\n".join([head, *_rec_lines(out["results"])]),
                )
            else:
                assert sku is not None
                look = recs.complete_the_look(sku, k)
                lines = [f"complete the look for {look['sku']} ({look['category']}):"]
                for g in look["groups"]:
                    lines.append(f"  {g['category']}:")
                    lines += ["    " + line for line in _rec_lines(g["results"])]
                _emit(
                    as_json,
                    {
                        **look,
                        "groups": [
                            {
                                "category": g["category"],
                                "results": [_rec_json(r) for r in g["results"]],
                            }
                            for g in look["groups"]
                        ],
                    },
                    "\n".join(lines),
                )
        finally:
            recs.close()


@recommend_app.command("fit")
def recommend_fit(catalog: CatalogOpt = "fashion-mnist", as_json: JsonOpt = False) -> None:
    """Fit the fused ranker and complete-the-look on the stored events (new build, swapped in)."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.service import fit_recommendations

    with Catalog.open(catalog) as cat:
        meta = fit_recommendations(cat, say=_say(as_json))
    line = (
        f"catalogue {catalog}: recommender fitted on {meta['events']} events of "
        f"{meta['customers']} customers in {meta['fit_s']}s"
    )
    if meta["simulated"]:
        line += f" ({meta['simulated_events']} events are {SIMULATED_NOTE})"
    _emit(as_json, meta, line)


@recommend_app.command("eval")
def recommend_eval(
    catalog: CatalogOpt = "fashion-mnist",
    presets: Annotated[
        str, typer.Option(help="Comma-separated simulator presets to evaluate on.")
    ] = "visual,balanced,low-image-signal",
    customers: Annotated[int, typer.Option(min=50)] = 3000,
    seed: int = 0,
    results_md: Annotated[
        Path | None, typer.Option(help="Markdown file to update (default docs/RESULTS.md).")
    ] = Path("docs/RESULTS.md"),
    as_json: JsonOpt = False,
) -> None:
    """Evaluate every recommender on SIMULATED customers (temporal split, ranx-checked metrics)."""
    from shoplens.catalog.store import Catalog
    from shoplens.personalize.report import run_recs_eval, summary_lines

    names = [p.strip() for p in presets.split(",") if p.strip()]
    with Catalog.open(catalog) as cat:
        results = run_recs_eval(
            cat, names, n_customers=customers, seed=seed, results_md=results_md, say=_say(as_json)
        )
    _emit(as_json, results, "\n".join(summary_lines(results)))


# ---- keys ---------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "write",
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; it is shown once (only its hash is stored)."""
    from shoplens.serve.keys import KeyStore

    store = KeyStore()
    try:
        record, secret = store.create(scope, name)
    finally:
        store.close()
    _emit(
        as_json,
        {**record.to_dict(), "key": secret},
        f"{secret}\n(id {record.id}, scope {record.scope}; shown once, store it now)",
    )


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List API keys (ids, names, scopes; never the secrets)."""
    from shoplens.serve.keys import KeyStore

    store = KeyStore()
    try:
        keys = store.list_keys()
    finally:
        store.close()
    lines = [
        f"{k.id}  {k.scope:<5}  {'revoked' if k.revoked_at else 'live':<7}  {k.name}" for k in keys
    ]
    _emit(as_json, [k.to_dict() for k in keys], "\n".join(lines) or "no API keys yet")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id.")], as_json: JsonOpt = False
) -> None:
    """Revoke an API key (requests with it get 401 from then on)."""
    from shoplens.serve.keys import KeyStore

    store = KeyStore()
    try:
        record = store.revoke(key_id)
    finally:
        store.close()
    _emit(as_json, record.to_dict(), f"revoked {record.id} ({record.scope})")
