"""``shoplens generate``: sample product images with a trained diffusion model.

``generate_app`` is a Typer group whose callback generates when no sub-command is given
(``shoplens generate --prompt "ankle boot" --n 16``); sub-commands such as
``shoplens generate eval`` (fidelity checks) are added to it with
``@generate_app.command("eval")``. Registered in :mod:`shoplens.cli`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoplens import progress

if TYPE_CHECKING:
    import numpy as np

    from shoplens.generate.pipeline import GeneratedImage, Generator

HISTORY_LIMIT = 200  # a customer's most recent events pooled into their taste

generate_app = typer.Typer(
    help="Generate product images with a trained diffusion model (never added to a catalogue).",
    invoke_without_command=True,
    no_args_is_help=False,
)


def load_generator(spec: str | None) -> Generator:
    """``--model SPEC``, else the registered ``fm-diffusion@champion``, else the recipe's
    run folder ``SHOPLENS_HOME/runs/fm-diffusion``; NotFoundError saying how to train one."""
    from shoplens.config import runs_dir
    from shoplens.errors import NotFoundError
    from shoplens.generate.pipeline import DEFAULT_MODEL, TRAIN_HINT, Generator

    if spec:
        return Generator.load(spec)
    folder = runs_dir() / "fm-diffusion" / "model"
    try:
        return Generator.load(DEFAULT_MODEL)
    except NotFoundError:
        if (folder / "model.json").is_file():
            return Generator.load(str(folder))
    raise NotFoundError(
        f"no diffusion model: none registered as {DEFAULT_MODEL} and none in {folder.parent}; "
        f"{TRAIN_HINT} (or pass --model DIR)"
    )


def customer_taste(catalog_name: str, customer: str, cond_encoder: str) -> np.ndarray:
    """(E,) the customer's taste: their history items' images embedded by the conditioning
    encoder, pooled by recency and event type (``personalize.customer.pool_customer``)."""

    from shoplens.catalog.store import Catalog
    from shoplens.errors import InvalidInputError, NotFoundError
    from shoplens.personalize.customer import pool_customer
    from shoplens.personalize.events import EventStore
    from shoplens.personalize.items import encoded_item_space
    from shoplens.personalize.service import history_of

    if not customer.strip() or len(customer) > 128:
        raise InvalidInputError("customer id must be 1 to 128 characters")
    with Catalog.open(catalog_name) as catalog:
        with EventStore.open(catalog) as store:
            events = store.customer_events(customer, limit=HISTORY_LIMIT)
        if not events:
            raise NotFoundError(
                f"unknown customer {customer!r}: no events in catalogue {catalog_name!r}"
            )
        products = []
        for sku in dict.fromkeys(e.sku for e in events):
            try:
                products.append(catalog.get(sku))
            except NotFoundError:
                continue  # deleted since the event
        if not products:
            raise InvalidInputError(f"customer {customer!r} has no events on current products")
        items = encoded_item_space(catalog, products, cond_encoder)
    return pool_customer([history_of(events, items)], items, use_text=False)[0]


def write_outputs(images: list[GeneratedImage], out: Path) -> dict[str, Any]:
    """``out/grid.png`` and one PNG per image, all with provenance chunks."""
    from PIL.PngImagePlugin import PngInfo

    from shoplens.config import atomic_write
    from shoplens.generate import PROVENANCE_KEY
    from shoplens.generate.pipeline import make_grid

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, g in enumerate(images):
        path = out / f"{i:02d}-seed{g.seed}.png"
        with atomic_write(path) as f:
            f.write(g.png_bytes())
        paths.append({"path": str(path), "seed": g.seed})
    meta = PngInfo()
    info = {k: v for k, v in images[0].info.items() if k != "seed"}
    for key, value in {**info, "seeds": ",".join(str(g.seed) for g in images)}.items():
        meta.add_text(key, value)
    meta.add_text(PROVENANCE_KEY, "true")
    grid = out / "grid.png"
    with atomic_write(grid) as f:
        make_grid([g.image for g in images]).save(f, format="PNG", pnginfo=meta)
    return {"out": str(out), "grid": str(grid), "images": paths, "info": info}


@generate_app.callback()
def generate_command(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Option(help='Text prompt, e.g. "ankle boot".')] = None,
    category: Annotated[
        str | None, typer.Option(help="Category to generate (e.g. Bag, 'Ankle boot').")
    ] = None,
    customer: Annotated[
        str | None,
        typer.Option(help="Tailor to this customer's taste (their events in --catalog)."),
    ] = None,
    catalog: Annotated[
        str, typer.Option("--catalog", "-c", help="Catalogue of --customer's events.")
    ] = "fashion-mnist",
    n: Annotated[int, typer.Option("--n", help="Number of images (1-64).")] = 16,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (0-20).")] = 3.0,
    steps: Annotated[int, typer.Option(help="Sampling steps (1-200).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of image 1; image i uses seed + i - 1.")] = 0,
    scheduler: Annotated[str, typer.Option(help="Sampler: ddpm, ddim or dpm.")] = "ddpm",
    init_image: Annotated[
        Path | None, typer.Option("--init-image", help="Image to vary (image-to-image).")
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(help="How much of --init-image to repaint, 0-1 (default 0.6; 1 with --mask)."),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(help="Inpainting mask, the size of --init-image: white = regenerate."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model folder, trained:DIR or registered NAME[@ALIAS] "
            "(default fm-diffusion@champion).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default ./generated/TIMESTAMP).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Generate images (a grid + one PNG each, with provenance); see `generate --help`."""
    if ctx.invoked_subcommand is not None:
        return  # e.g. `shoplens generate eval`: the sub-command does the work
    from shoplens.data.images import read_image_file

    progress.set_mode("off" if as_json else "auto")
    init = read_image_file(init_image, allow_outside_root=True) if init_image else None
    mask_img = read_image_file(mask, allow_outside_root=True) if mask else None
    gen = load_generator(model)
    taste = customer_taste(catalog, customer, gen.cond_encoder) if customer is not None else None
    images = gen.generate(
        n=n,
        prompt=prompt,
        category=category,
        taste=taste,
        customer=customer,
        guidance=guidance,
        steps=steps,
        seed=seed,
        scheduler=scheduler,
        init_image=init,
        strength=strength if strength is not None else (1.0 if mask_img is not None else 0.6),
        mask=mask_img,
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    result = write_outputs(images, out or Path("generated") / stamp)
    lines = [f"{len(images)} images by {gen.name} -> {result['out']}", f"grid: {result['grid']}"]
    lines += [p["path"] for p in result["images"]]
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False) if as_json else "\n".join(lines))


@generate_app.command("eval")
def generate_eval(
    classifier: Annotated[
        str, typer.Option(help="Trained shoplens classifier that labels samples (trained:DIR).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Diffusion model (as for `generate`).")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Image tower for FID / precision-recall / memorisation "
            "(default: the classifier's; shoplens's own tower, not Inception)."
        ),
    ] = None,
    catalog: Annotated[
        str, typer.Option("--catalog", "-c", help="Catalogue of the SIMULATED customers.")
    ] = "fashion-mnist",
    n_per_class: Annotated[int, typer.Option(help="Samples per category (FID etc.).")] = 100,
    guidance: Annotated[float, typer.Option(help="Guidance scale of the main samples.")] = 3.0,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the first sample.")] = 0,
    customers: Annotated[int, typer.Option(help="SIMULATED customers (0: skip).")] = 20,
    per_customer: Annotated[int, typer.Option(help="Images per customer and setting.")] = 2,
    scheduler: Annotated[str, typer.Option(help="Sampler: ddpm, ddim or dpm.")] = "ddpm",
    sweep_per_class: Annotated[
        int, typer.Option(help="Samples per category at guidance 0 and 1 (0: skip).")
    ] = 20,
    prompt_per_class: Annotated[
        int, typer.Option(help="Text-prompt samples per category (0: skip).")
    ] = 10,
    results: Annotated[
        bool, typer.Option("--results", help="Write the section of --results-md.")
    ] = False,
    results_md: Annotated[Path, typer.Option(help="Results file.")] = Path("docs/RESULTS.md"),
    img_dir: Annotated[Path, typer.Option(help="Folder of the grid PNGs.")] = Path("docs/img"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Fidelity checks: FID (own tower), precision/recall, conditional accuracy,
    memorisation, customer conditioning (SIMULATED customers), sample grids."""
    import sys

    from shoplens.generate.fidelity_report import run_generate_eval, summary_lines

    progress.set_mode("off" if as_json else "auto")
    gen = load_generator(model)
    out = run_generate_eval(
        gen,
        model_spec=model or gen.name,
        classifier=classifier,
        features=features,
        catalog=catalog,
        n_per_class=n_per_class,
        guidance=guidance,
        steps=steps,
        seed=seed,
        customers=customers,
        per_customer=per_customer,
        scheduler=scheduler,
        sweep_per_class=sweep_per_class,
        prompt_per_class=prompt_per_class,
        img_dir=img_dir,
        results_md=results_md if results else None,
        say=(lambda _: None) if as_json else (lambda m: print(m, file=sys.stderr, flush=True)),
    )
    human = "\n".join(summary_lines(out))
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False, default=str) if as_json else human)
