"""``shoplens eval``: the Typer command (registered in :mod:`shoplens.cli`).

Without ``--model`` it measures the foundation encoders (``run_foundation_eval``); with
``--model SPEC`` (repeatable) it evaluates each model (``run_model_eval``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shoplens import progress
from shoplens.errors import InvalidInputError
from shoplens.eval.tasks import TASK_NAMES


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


def model_table(runs: list[dict[str, Any]]) -> list[str]:
    """A compact table of :func:`~shoplens.eval.runner.run_model_eval` results, then notes."""
    from shoplens.eval.results_md import fmt, fmt_accuracy, held_out_text

    header = ["model", "accuracy", "5-NN", "R@1 t->i", "ZS wF1", "held-out", "aug R@1", "time"]
    rows = []
    for r in runs:
        h = r["headline"]
        rows.append([
            r["meta"]["model"], fmt_accuracy(h["accuracy"]), fmt(h["knn_accuracy"]),
            fmt(h["text_to_image_r1"]), fmt(h["zero_shot_weighted_f1"]),
            held_out_text(h, names=False), fmt(h["aug_r1"]), f"{r['meta']['eval_s']:.0f}s",
        ])  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    for r in runs:
        m = r["meta"]
        lines += [
            f"{m['model']}: skipped {name}: {t['skipped']}"
            for name, t in r["tasks"].items()
            if "skipped" in t
        ]
        tracked = f"; MLflow run {m['mlflow_run_id']}" if m["mlflow_run_id"] else ""
        lines.append(f"{m['model']}: {m['data_description']}; metrics {m['json']}{tracked}")
    return lines


def _model_evals(
    models: list[str], tasks: list[str] | None, held_out: str, out: Path, **options: Any
) -> list[dict[str, Any]]:
    """Check every option and model first, then evaluate each model in turn."""
    from shoplens.data.fashion_mnist import CLASSES
    from shoplens.eval.context import check_classes
    from shoplens.eval.runner import load_model, run_model_eval
    from shoplens.eval.tasks import check_tasks

    check_tasks(tasks)
    check_classes([c.strip() for c in held_out.split(",") if c.strip()], CLASSES, "--held-out")
    if options.get("mlflow_run_id") and len(models) > 1:
        raise InvalidInputError("--mlflow-run takes one --model")
    for spec in models:
        load_model(spec)  # a spec that does not load fails before any work
    return [
        run_model_eval(spec, tasks=tasks, held_out=held_out, out=out, **options) for spec in models
    ]


def eval_command(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Evaluate this model (encoder spec, e.g. trained:PATH; repeatable) on "
            "Fashion-MNIST instead of the foundation report; appends a row to the "
            "'## Trained models' table of --out.",
        ),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            "-t",
            help="With --model: task to run (repeatable; default all that apply): "
            + ", ".join(TASK_NAMES),
        ),
    ] = None,
    held_out: Annotated[
        str,
        typer.Option(
            "--held-out", help='With --model: classes left out of training, e.g. "Sandal,Bag".'
        ),
    ] = "",
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="With --model: log to MLflow.")
    ] = True,
    mlflow_run: Annotated[
        str | None,
        typer.Option("--mlflow-run", help="With --model: log into this MLflow run id."),
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            "-c",
            help="Foundation eval: Fashion-MNIST catalogue (ingested if missing) "
            "[default: fashion-mnist].",
        ),
    ] = None,
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
            help="Foundation eval: image encoder to evaluate (repeatable; default "
            "effnet-lite0@64 and pixels). The first one also serves the text and "
            "near-duplicate parts.",
        ),
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(help="Foundation eval: text encoder of the text index [default: minilm]."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
) -> None:
    """Measure search quality on Fashion-MNIST (foundation encoders, or each --model)."""
    from shoplens.eval.foundation import run_foundation_eval

    progress.set_mode("off" if as_json else "auto")
    if model:
        given = [n for n, v in (("--catalog", catalog), ("--encoder", encoder),
                                ("--text-encoder", text_encoder)) if v]  # fmt: skip
        if given:
            raise InvalidInputError(f"{given[0]} is for the foundation eval, not with --model")
        runs = _model_evals(
            model, task, held_out, out, limit=limit, seed=seed, n_aug=n_aug,
            track=mlflow, mlflow_run_id=mlflow_run,
        )  # fmt: skip
        payload: Any = runs[0] if len(runs) == 1 else runs
        human = "\n".join(model_table(runs))
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2) if as_json else human)
        return
    if task or held_out or mlflow_run:
        raise InvalidInputError("--task, --held-out and --mlflow-run need --model")
    results = run_foundation_eval(
        catalog=catalog or "fashion-mnist",
        encoders=tuple(encoder) if encoder else ("effnet-lite0@64", "pixels"),
        n_aug=n_aug,
        seed=seed,
        out=out,
        limit=limit,
        text_encoder=text_encoder or "minilm",
    )
    if as_json:
        typer.echo(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join(summary_lines(results, out)))
