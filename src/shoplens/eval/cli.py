"""``shoplens eval``: the Typer command (registered in :mod:`shoplens.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shoplens import progress


def summary_lines(results: dict[str, Any], out: Path) -> list[str]:
    """A short human summary of :func:`~shoplens.eval.foundation.run_foundation_eval`."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    m, d = results["meta"], results["dedupe"]
    lines = [f"catalogue {m['catalog']}: {m['train']} train, {m['test']} test products"]
    for spec, v in results["knn"].items():
        aug = results["augmented"][spec]
        lines.append(
            f"{spec}: {v['k']}-NN accuracy {f(v['accuracy'])}, altered-copy R@1 "
            f"{f(aug['r_at_1']['overall'])} ("
            + ", ".join(f"{k} {f(x)}" for k, x in aug["r_at_1"].items() if k != "overall")
            + ")"
        )
    t = results["text"]
    lines.append(
        f"text queries ({t['text_encoder']}): mean precision@{t['k']} {f(t['mean_precision'])}"
    )
    lines.append(
        f"near-duplicates ({d['encoder']}): precision {f(d['precision'])}, recall "
        f"{f(d['recall'])} ({d['injected_found']}/{d['injected']} injected pairs, "
        f"{d['other_pairs']} other pairs)"
    )
    lines.append(f"report: {out} and {out.with_suffix('.json')} ({m['timings_s']['total_s']:.0f}s)")
    return lines


def eval_command(
    catalog: Annotated[
        str, typer.Option("--catalog", "-c", help="Fashion-MNIST catalogue (ingested if missing).")
    ] = "fashion-mnist",
    out: Annotated[Path, typer.Option(help="Markdown report; JSON is written beside it.")] = Path(
        "docs/RESULTS.md"
    ),
    n_aug: Annotated[
        int, typer.Option("--n-aug", min=1, help="Test images altered 4 ways for the R@1 part.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the samples and alterations.")] = 0,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="Only the first N products of each split (a quick run, own catalogue)."
        ),
    ] = None,
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Image encoder to evaluate (repeatable; default effnet-lite0@64 and pixels). "
            "The first one also serves the text and near-duplicate parts.",
        ),
    ] = None,
    text_encoder: Annotated[str, typer.Option(help="Text encoder of the text index.")] = "minilm",
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
) -> None:
    """Measure search quality on the Fashion-MNIST test split and write docs/RESULTS.md."""
    from shoplens.eval.foundation import run_foundation_eval

    progress.set_mode("off" if as_json else "auto")
    results = run_foundation_eval(
        catalog=catalog,
        encoders=tuple(encoder) if encoder else ("effnet-lite0@64", "pixels"),
        n_aug=n_aug,
        seed=seed,
        out=out,
        limit=limit,
        text_encoder=text_encoder,
    )
    if as_json:
        typer.echo(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join(summary_lines(results, out)))
