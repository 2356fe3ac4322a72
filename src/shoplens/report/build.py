"""``shoplens report``: one static, self-contained, accessible HTML research report.

:func:`build_report` reads the stored results (eval JSON files under
``SHOPLENS_HOME/evals/``, the foundation eval ``docs/RESULTS.json``, MLflow training runs,
``docs/bench/*.json``, ``docs/img/*``), turns them into sections of tables and plots (one
builder function per section, :data:`SECTION_BUILDERS`) and renders ``template.html``
(inline CSS, images as data URIs, no script, no external request). A missing input gives
its section a "not measured yet" note instead of an error.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar

import typer

from shoplens.config import atomic_write, shoplens_home
from shoplens.eval.report import git_commit
from shoplens.report import plots
from shoplens.report.plots import Plot

NA = "n/a"


# --- document model: what a section holds --------------------------------------------------


@dataclass
class Table:
    """A data table; the first cell of each row is its row header."""

    caption: str
    columns: list[str]
    rows: list[list[str]]
    source: str  # which file or run, its date and commit, and the settings
    id: str = ""  # set by render()
    kind: ClassVar[str] = "table"


@dataclass
class Figure:
    plot: Plot
    caption: str
    kind: ClassVar[str] = "figure"


@dataclass
class Text:
    text: str  # `backquoted` parts are shown as code
    missing: bool = False  # a "not measured yet" notice
    kind: ClassVar[str] = "text"


@dataclass
class Bullets:
    items: list[str]
    kind: ClassVar[str] = "bullets"


@dataclass
class Sub:
    """A titled sub-section (``h3``)."""

    title: str
    parts: list[Any]
    kind: ClassVar[str] = "sub"


@dataclass
class Details:
    """Collapsed detail (``<details>``): per-class tables, confusion matrices."""

    summary: str
    parts: list[Any]
    kind: ClassVar[str] = "details"


@dataclass
class Section:
    key: str
    title: str
    parts: list[Any]
    present: bool
    note: str = ""  # for the summary: what is missing and why


# --- inputs ----------------------------------------------------------------------------------


@dataclass
class Doc:
    """One result file: its path, how the report names it, its parsed JSON."""

    path: Path
    shown: str
    data: dict[str, Any]


@dataclass
class TrainRun:
    name: str
    run_id: str
    experiment: str
    status: str
    started: str
    model: str
    commit: str
    params: dict[str, str]
    loss: dict[str, list[tuple[float, float]]]  # metric -> [(epoch, value)]
    quality: dict[str, list[tuple[float, float]]]


@dataclass
class Inputs:
    home: Path
    bench_dir: Path = Path("docs/bench")
    model_evals: list[Doc] = field(default_factory=list)
    foundation: list[Doc] = field(default_factory=list)
    recs: list[Doc] = field(default_factory=list)
    generation: list[Doc] = field(default_factory=list)
    training: list[TrainRun] = field(default_factory=list)
    tracking: str = ""  # where training runs were read from, or why none were
    bench: list[Doc] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _read_json(path: Path, shown: str, problems: list[str]) -> Doc | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.append(f"{shown}: not readable JSON ({type(e).__name__}), skipped")
        return None
    if not isinstance(data, dict):
        problems.append(f"{shown}: not a JSON object, skipped")
        return None
    return Doc(path, shown, data)


def load_inputs(home: Path, bench_dir: Path, img_dir: Path, results_json: Path) -> Inputs:
    """Every stored result the report can use; unreadable files are listed as problems."""
    inp = Inputs(home=home, bench_dir=bench_dir)
    for path in sorted((home / "evals").glob("*.json")):
        doc = _read_json(path, f"evals/{path.name}", inp.problems)
        if doc is None:
            continue
        if path.name.startswith(("gen-", "generate-")):  # generate-*: `shoplens generate eval`
            inp.generation.append(doc)
        elif path.name.startswith("recs-") or isinstance(doc.data.get("settings"), list):
            inp.recs.append(doc)
        elif "tasks" in doc.data and "meta" in doc.data:
            inp.model_evals.append(doc)
        elif "knn" in doc.data and "meta" in doc.data:
            inp.foundation.append(doc)
        else:
            inp.problems.append(f"{doc.shown}: not a known result file, skipped")
    if results_json.is_file():
        doc = _read_json(results_json, str(results_json), inp.problems)
        if doc is not None and "knn" in doc.data:
            inp.foundation.append(doc)
    for path in sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []:
        doc = _read_json(path, str(path), inp.problems)
        if doc is not None:
            inp.bench.append(doc)
    if img_dir.is_dir():
        inp.images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    inp.training, inp.tracking = _load_training(home, inp.problems)
    return inp


MAX_TRAIN_RUNS = 10
SKIP_CURVES = ("lr", "grad_norm", "logit_scale")


def _tracking_uri(home: Path) -> str | None:
    """``$SHOPLENS_TRACKING_URI`` when ``home`` is the current home, else ``home``'s
    ``mlflow.db``; None when that file does not exist (reading creates no store)."""
    uri = os.environ.get("SHOPLENS_TRACKING_URI")
    if uri and home.resolve() == shoplens_home().resolve():
        return uri
    db = home / "mlflow.db"
    return f"sqlite:///{db.resolve()}" if db.is_file() else None


def _load_training(home: Path, problems: list[str]) -> tuple[list[TrainRun], str]:
    """The newest training runs (those with per-epoch ``train/`` metrics), newest first."""
    uri = _tracking_uri(home)
    if uri is None:
        return [], "no MLflow tracking database (mlflow.db in SHOPLENS_HOME)"
    shown = "mlflow.db" if uri.startswith("sqlite:") else uri
    try:
        from shoplens.training.tracking import mlflow_client

        client = mlflow_client(uri)
        names = {e.experiment_id: e.name for e in client.search_experiments()}
        found = client.search_runs(list(names), order_by=["attributes.start_time DESC"])
        runs: list[TrainRun] = []
        for r in found:
            keys = [k for k in r.data.metrics if k.startswith(("train/", "eval/"))]
            if not any(k.startswith("train/") for k in keys) or len(runs) >= MAX_TRAIN_RUNS:
                continue
            history = client.get_metric_history
            epoch = {m.step: m.value for m in history(r.info.run_id, "epoch")}
            curves = {
                k: [
                    (epoch.get(m.step, float(m.step)), m.value)
                    for m in sorted(history(r.info.run_id, k), key=lambda m: m.step)
                ]
                for k in sorted(keys)
                if k.rsplit("/", 1)[-1] not in SKIP_CURVES
            }
            loss = [k for k in curves if k in ("train/loss", "eval/loss")] or [
                k for k in curves if k.endswith("loss")
            ]
            quality = [k for k in curves if k.startswith("eval/") or "accuracy" in k]
            runs.append(
                TrainRun(
                    name=r.info.run_name or r.info.run_id,
                    run_id=r.info.run_id,
                    experiment=names.get(r.info.experiment_id, r.info.experiment_id),
                    status=r.info.status,
                    started=_ms_date(r.info.start_time),
                    model=r.data.tags.get("shoplens.model", NA),
                    commit=r.data.tags.get("mlflow.source.git.commit", "")[:7] or "not recorded",
                    params=dict(r.data.params),
                    loss={k: curves[k] for k in loss if curves[k]},
                    quality={k: curves[k] for k in quality if k not in loss and curves[k]},
                )
            )
        return runs, f"MLflow tracking store {shown}"
    except Exception as e:  # a store that cannot be read must not stop the report
        problems.append(f"MLflow store {shown}: {type(e).__name__}: {e}")
        return [], f"MLflow store {shown} could not be read"


def _ms_date(ms: int | None) -> str:
    if not ms:
        return NA
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- cells, labels, sources ----------------------------------------------------------------


def _f(x: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` places, ints with separators, None -> n/a."""
    if x is None:
        return NA
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)):
        return ", ".join(str(v) for v in x) or "none"
    return str(x)


def _v(x: Any) -> str:
    """A setting: ``90.0`` -> ``90``, ``0.6`` -> ``0.6``, ``"['a', 'b']"`` -> ``a, b``."""
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, str) and x.startswith("[") and x.endswith("]"):
        try:
            return _f(list(ast.literal_eval(x)))
        except (ValueError, SyntaxError):
            return x
    return _f(x)


def _get(d: Any, path: str) -> Any:
    """``_get(d, "a.b")`` is ``d["a"]["b"]``, or None when any part is missing."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


Cols = Sequence[tuple[str, str]]  # (column header, dotted path into a row's dict)


def _table(
    caption: str,
    named: Sequence[tuple[str, Any]],
    cols: Cols,
    source: str,
    first: str = "model",
    digits: int = 3,
) -> Table:
    """One row per ``(name, dict)``, one column per ``(header, path)`` of ``cols``."""
    rows = [[name, *[_f(_get(d, path), digits) for _, path in cols]] for name, d in named]
    return Table(caption, [first, *[h for h, _ in cols]], rows, source)


def model_label(spec: str) -> str:
    """A short name for a model spec: ``trained:/x/runs/fm-resnet/model`` -> ``fm-resnet``."""
    if not spec.startswith("trained:"):
        return spec
    path = PurePosixPath(spec.split(":", 1)[1].rstrip("/"))
    if path.name == "model":
        path = path.parent
    if path.name == "artifacts":  # an MLflow artefact folder: name it by its run id
        return f"run {path.parent.name[:8]}"
    return path.name or spec


def _meta(doc: Doc) -> dict[str, Any]:
    meta = doc.data.get("meta")
    return meta if isinstance(meta, dict) else {}


def _label(doc: Doc) -> str:
    return model_label(str(_meta(doc).get("model", doc.path.stem)))


def _commit(meta: dict[str, Any]) -> str:
    return str(meta.get("commit") or _get(meta, "machine.commit") or "not recorded")


def _hardware(machine: Any) -> str:
    if not isinstance(machine, dict):
        return str(machine or NA)
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return f"{machine.get('nproc', '?')} CPU cores ({machine.get('cpu', '?')}){gpu}"


def _eval_settings(doc: Doc) -> str:
    m = _meta(doc)
    held = f", held out of training: {_f(m['held_out'])}" if m.get("held_out") else ""
    return f"{m.get('data_description', m.get('data', NA))}, seed {m.get('seed', NA)}{held}"


def _sources(docs: Sequence[Doc], extra: str = "") -> str:
    """Which eval files (date, commit, MLflow run) and settings a table comes from."""
    src = []
    for d in docs:
        m = _meta(d)
        run = f", MLflow run {m['mlflow_run_id'][:8]}" if m.get("mlflow_run_id") else ""
        src.append(f"{_label(d)}: {d.shown} ({m.get('date', NA)}, commit {_commit(m)}{run})")
    settings = "; ".join(dict.fromkeys(_eval_settings(d) for d in docs))
    return f"Source: {'; '.join(src)}. Settings: {settings}{extra}."


def _foundation_source(doc: Doc) -> str:
    m = _meta(doc)
    return (
        f"Source: foundation eval {doc.shown} ({m.get('date', NA)}, commit {_commit(m)}). "
        f"Settings: catalogue {m.get('catalog', NA)} ({_f(m.get('train'))} train, "
        f"{_f(m.get('test'))} test products), seed {m.get('seed', NA)}."
    )


def _order(doc: Doc) -> tuple[str, str]:
    return str(_meta(doc).get("date", "")), doc.path.name


def _with_task(docs: list[Doc], task: str) -> list[Doc]:
    """Per model, the newest eval that ran ``task`` (not skipped); sorted by label."""
    best: dict[str, Doc] = {}
    for d in sorted(docs, key=_order):
        t = _get(d.data, f"tasks.{task}")
        if isinstance(t, dict) and "skipped" not in t:
            best[str(_meta(d).get("model", d.path))] = d
    return sorted(best.values(), key=_label)


def _named(docs: list[Doc], task: str) -> list[tuple[str, Any]]:
    return [(_label(d), d.data["tasks"][task]) for d in docs]


def _missing(key: str, title: str, note: str, text: str = "") -> Section:
    notice = Text(text or f"Not measured yet: {note}.", missing=True)
    return Section(key, title, [notice], False, note)


# --- build, render, command ------------------------------------------------------------------


def _inline_code(text: str) -> Any:
    """Escape ``text`` and show its `backquoted` parts as ``<code>``."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _is_numeric(cell: str) -> bool:
    """Right-align numbers (and n/a) in tables: "0.933", "1,452", "3.71x", "125 s"."""
    if cell == NA:
        return True
    try:
        float(str(cell).replace(",", "").split(" ")[0].removesuffix("x"))
    except ValueError:
        return False
    return True


def render(sections: list[Section], context: dict[str, Any]) -> str:
    """The HTML page of ``sections`` (tables get ids for their labelled scroll regions)."""
    import jinja2

    tables = [p for s in sections for p in _walk(s.parts) if isinstance(p, Table)]
    for n, table in enumerate(tables, start=1):
        table.id = f"table-{n}"
    text = resources.files("shoplens.report").joinpath("template.html").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.tests["numeric"] = _is_numeric
    env.filters["inline"] = _inline_code
    return env.from_string(text).render(sections=sections, **context)


def _walk(parts: list[Any]) -> list[Any]:
    return [q for p in parts for q in ([p, *_walk(p.parts)] if hasattr(p, "parts") else [p])]


def build_report(
    home: Path | None = None,
    out: Path = Path("docs/report.html"),
    bench_dir: Path = Path("docs/bench"),
    img_dir: Path = Path("docs/img"),
    results_json: Path = Path("docs/RESULTS.json"),
) -> dict[str, Any]:
    """Write the research report to ``out`` (atomically) from the stored run results.

    Args:
        home: the ``SHOPLENS_HOME`` to read (``evals/``, ``mlflow.db``); default the current.
        out: the HTML file to write.
        bench_dir: benchmark results (recall/QPS as in ``ann.json``, latency as in
            ``http.json``).
        img_dir: sample grids (PNG/JPEG; alt text from a ``NAME.txt`` beside one) to embed.
        results_json: the foundation eval JSON written by ``shoplens eval``.

    Returns:
        A summary: ``out``, ``bytes``, ``sections`` (key -> title, present, note),
        ``present`` / ``missing`` section keys, ``inputs`` (counts) and ``problems``.
    """
    home = Path(home) if home is not None else shoplens_home()
    inp = load_inputs(home, Path(bench_dir), Path(img_dir), Path(results_json))
    sections = [_build(builder, inp) for builder in SECTION_BUILDERS]
    sections.insert(0, overview_section(inp, sections))
    html = render(
        sections,
        {
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(),
            "home": str(home),
        },
    ).encode("utf-8")
    out = Path(out)
    with atomic_write(out) as f:
        f.write(html)
    out.chmod(0o644)  # a page to publish (atomic_write's temp file is private)
    counts: dict[str, Sized] = {
        "model_evals": inp.model_evals,
        "foundation_evals": inp.foundation,
        "recs_evals": inp.recs,
        "generation_evals": inp.generation,
        "training_runs": inp.training,
        "bench_files": inp.bench,
        "images": inp.images,
    }
    return {
        "out": str(out),
        "bytes": len(html),
        "sections": {
            s.key: {"title": s.title, "present": s.present, "note": s.note} for s in sections
        },
        "present": [s.key for s in sections if s.present],
        "missing": [s.key for s in sections if not s.present],
        "inputs": {k: len(v) for k, v in counts.items()},
        "problems": inp.problems,
    }


def _build(builder: Callable[[Inputs], Section], inp: Inputs) -> Section:
    """One section; a result file of an unexpected shape costs its section, not the report."""
    try:
        return builder(inp)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        key = builder.__name__.removesuffix("_section").replace("_", "-")
        why = f"could not be built from the stored results ({type(e).__name__}: {e})"
        inp.problems.append(f"section {key}: {why}")
        return _missing(key, key.replace("-", " ").capitalize(), why, f"Not shown: {why}.")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A short human summary of :func:`build_report`."""
    lines = [f"report: {summary['out']} ({summary['bytes'] / 1024:.0f} KiB)"]
    for s in summary["sections"].values():
        note = f": {s['note']}" if s["note"] else ""
        lines.append(f"  {'ok  ' if s['present'] else 'none'}  {s['title']}{note}")
    return lines + [f"  skipped: {p}" for p in summary["problems"]]


def report_command(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("docs/report.html"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
) -> None:
    """Write the research report (one static HTML file) from the stored run results."""
    summary = build_report(out=out)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join(summary_lines(summary)))


# --- sections: evaluation tasks --------------------------------------------------------------

EVALS = "no model evaluation with this task in SHOPLENS_HOME/evals/ (run `shoplens eval --model`)"
CLASSIFY: Cols = (
    ("test images", "n"), ("accuracy", "accuracy"), ("macro F1", "macro_f1"),
    ("weighted F1", "weighted_f1"),
)  # fmt: skip
RANKING: Cols = (
    ("queries", "queries"), ("gallery", "gallery"), ("R@1", "recall_at_k.1"),
    ("R@5", "recall_at_k.5"), ("R@10", "recall_at_k.10"), ("P@10", "precision_at_k.10"),
    ("nDCG@10", "ndcg_at_10"), ("mAP", "map"),
)  # fmt: skip
HELD_OUT: Cols = (
    ("held-out classes", "held_out"), ("test images", "images"),
    ("accuracy among all classes", "all_classes.accuracy"),
    ("chance, all classes", "all_classes.chance_accuracy"),
    ("accuracy among held-out classes", "held_out_only.accuracy"),
    ("chance, held-out classes", "held_out_only.chance_accuracy"),
    ("share predicted as a seen class", "predicted_as_seen_class"),
)  # fmt: skip
NEAR_DUPLICATES: Cols = (
    ("products", "products"), ("injected copies", "injected"), ("found", "injected_found"),
    ("precision", "precision"), ("recall", "recall"), ("other pairs", "other_pairs"),
)  # fmt: skip


def _per_class(doc: Doc, task: str, what: str) -> Details:
    """Per-class precision/recall/F1 and the confusion matrix of one model's ``task``."""
    t, label = doc.data["tasks"][task], _label(doc)
    cols = (
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
        ("test images", "support"),
    )
    per = list((t.get("per_class") or {}).items())
    parts: list[Any] = [_table(f"Per-class {what} of {label}", per, cols, _sources([doc]), "class")]
    if t.get("confusion_matrix") and t.get("classes"):
        plot = plots.confusion_matrix(f"{label}, {what}", t["classes"], t["confusion_matrix"])
        caption = f"Confusion matrix of {label}, {what} ({_f(t.get('n'))} test images; rows: "
        parts.append(Figure(plot, caption + f"true class). Source: {doc.shown}."))
    return Details(f"{label}: per-class {what} and confusion matrix", parts)


def classification_section(inp: Inputs) -> Section:
    docs = _with_task(inp.model_evals, "classification")
    if not docs:
        return _missing("classification", "Classification", EVALS)
    intro = Text(
        "Each model labels the Fashion-MNIST test images with its own classifier head, else "
        "with a linear probe (logistic regression) on its train-split embeddings."
    )
    table = _table(
        "Classification of the Fashion-MNIST test images",
        _named(docs, "classification"),
        [("method", "method"), *CLASSIFY],
        _sources(docs),
    )
    details = [_per_class(d, "classification", "classification") for d in docs]
    return Section("classification", "Classification", [intro, table, *details], True)


def retrieval_section(inp: Inputs) -> Section:
    key, title = "retrieval", "Image retrieval"
    docs = _with_task(inp.model_evals, "image_retrieval")
    found = max(inp.foundation, key=_order, default=None)
    if not docs and found is None:
        return _missing(key, title, EVALS)
    parts: list[Any] = []
    if docs:
        parts += [
            Text(
                "Test images query the train images; a result is relevant when it shows the "
                "query's class. R@k: share of queries with a relevant result in the top k; "
                "5-NN accuracy: majority class of the 5 nearest train images."
            ),
            _table(
                "Image-to-image retrieval, test images against the train gallery",
                _named(docs, "image_retrieval"),
                [*RANKING, ("5-NN accuracy", "knn_accuracy")],
                _sources(docs),
            ),
        ]
    if found is not None:
        knn = found.data.get("knn") or {}
        src = _foundation_source(found)
        cols = (
            ("k-NN accuracy", "accuracy"),
            ("k", "k"),
            ("queries", "queries"),
            ("gallery", "gallery"),
        )
        classes = dict.fromkeys(c for v in knn.values() for c in v.get("per_class", {}))
        per = [(c, {enc: _get(v, f"per_class.{c}") for enc, v in knn.items()}) for c in classes]
        parts += [
            _table(
                "k-NN accuracy of the foundation encoders (catalogue index)",
                list(knn.items()),
                cols,
                src,
                "encoder",
            ),
            Details(
                "Foundation encoders: k-NN accuracy per class",
                [
                    _table(
                        "k-NN accuracy per class, foundation encoders",
                        per,
                        [(enc, enc) for enc in knn],
                        src,
                        "class",
                    )
                ],
            ),
        ]
    return Section(key, title, parts, True)


def text_to_image_section(inp: Inputs) -> Section:
    key, title = "text-to-image", "Text-to-image and zero-shot"
    t2i, zs, held = (
        _with_task(inp.model_evals, t) for t in ("text_to_image", "zero_shot", "held_out")
    )
    found = max(inp.foundation, key=_order, default=None)
    text = found.data.get("text") if found is not None else None
    if not (t2i or zs or held or isinstance(text, dict)):
        return _missing(key, title, EVALS)
    parts: list[Any] = [
        Text(
            'Fashion-MNIST has no product texts: every text here (prompts such as "a photo of a '
            '{class}") is derived from the class labels, so these text metrics are in-domain.'
        )
    ]
    if t2i:
        templates = _f(_get(t2i[0].data, "tasks.text_to_image.by_label.templates"))
        parts.append(
            _table(
                "Text-to-image retrieval: class prompts query the test images",
                [(_label(d), d.data["tasks"]["text_to_image"].get("by_label")) for d in t2i],
                [("prompts", "queries"), *RANKING[1:]],
                _sources(t2i, f"; prompt templates: {templates}"),
            )
        )
    if zs:
        parts.append(
            _table(
                "Zero-shot classification (argmax over prompt-ensemble class embeddings)",
                _named(zs, "zero_shot"),
                CLASSIFY,
                _sources(zs),
            )
        )
        parts += [_per_class(d, "zero_shot", "zero-shot classification") for d in zs]
    if held:
        parts.append(
            _table(
                "Zero-shot accuracy on classes held out of training",
                _named(held, "held_out"),
                HELD_OUT,
                _sources(held),
            )
        )
    if found is not None and isinstance(text, dict):
        k = text.get("k", 10)
        rows = [
            *(text.get("per_class") or {}).items(),
            ("mean", {"precision": text.get("mean_precision")}),
        ]
        parts.append(
            _table(
                f"Text search precision@{k} per class name, text encoder "
                f"{text.get('text_encoder', NA)} over label-derived product titles",
                rows,
                [(f"precision@{k}", "precision")],
                _foundation_source(found),
                "query (class name)",
            )
        )
    return Section(
        key, title, parts + _skipped(inp.model_evals, ("text_to_image", "zero_shot")), True
    )


def _skipped(docs: list[Doc], tasks: tuple[str, ...]) -> list[Any]:
    """Notes for tasks a model skipped in every eval of it (e.g. text tasks, image-only)."""
    notes: dict[tuple[str, str], str] = {}
    for task in tasks:
        ran = {str(_meta(d).get("model")) for d in _with_task(docs, task)}
        for d in docs:
            reason = _get(d.data, f"tasks.{task}.skipped")
            if reason and str(_meta(d).get("model")) not in ran:
                notes[(_label(d), task)] = (
                    f"{_label(d)}: {task.replace('_', ' ')} not run ({reason})."
                )
    return [Bullets(list(notes.values()))] if notes else []


def robustness_section(inp: Inputs) -> Section:
    key, title = "robustness", "Robustness and near-duplicates"
    docs, dup = (
        _with_task(inp.model_evals, "robustness"),
        _with_task(inp.model_evals, "near_duplicates"),
    )
    found = max(inp.foundation, key=_order, default=None)
    fd = found.data if found is not None else {}
    aug = {k: v for k, v in (fd.get("augmented") or {}).items() if isinstance(v, dict)}
    if not (docs or dup or aug or isinstance(fd.get("dedupe"), dict)):
        return _missing(key, title, EVALS)
    parts: list[Any] = [
        Text(
            "Synthetic altered copies of test images (crop, noise, brightness, blur + JPEG) query "
            "the whole catalogue; R@k is the share whose original is in the top k."
        )
    ]
    named = _named(docs, "robustness")
    shared = {"queries": _get(fd, "augmented.queries"), "gallery": _get(fd, "meta.products")}
    named += [(f"{enc} (foundation)", {**v, **shared}) for enc, v in aug.items()]
    sources = ([_sources(docs)] if docs else []) + ([_foundation_source(found)] if found else [])
    if named:
        kinds = [
            *dict.fromkeys(k for _, t in named for k in t.get("r_at_1", {}) if k != "overall"),
            "overall",
        ]
        cols = [
            ("queries", "queries"),
            ("gallery", "gallery"),
            *[(f"R@1 {k}", f"r_at_1.{k}") for k in kinds],
            ("R@10 overall", "r_at_10.overall"),
        ]
        series = {name: [_get(t, f"r_at_1.{k}") for k in kinds] for name, t in named}
        plot = plots.grouped_bars("altered-copy R@1 by alteration", kinds, series, "R@1")
        parts += [
            _table(
                "Altered-copy retrieval: R@1 by alteration, and R@10",
                named,
                cols,
                " ".join(sources),
            ),
            Figure(
                plot,
                "R@1 of altered copies per alteration and model (higher is better); "
                "data and sources: the table above.",
            ),
        ]
    dups = _named(dup, "near_duplicates")
    if isinstance(fd.get("dedupe"), dict):
        dups.append((f"{fd['dedupe'].get('encoder', '?')} (foundation)", fd["dedupe"]))
    if dups:
        kinds = list(dict.fromkeys(k for _, t in dups for k in t.get("recall_by_alteration", {})))
        cols = [*NEAR_DUPLICATES, *[(f"recall {k}", f"recall_by_alteration.{k}") for k in kinds]]
        source = " ".join(
            ([_sources(dup)] if dup else []) + ([_foundation_source(found)] if found else [])
        )
        parts.append(
            _table(
                "Near-duplicate detection of injected altered copies (hash + embedding)",
                dups,
                cols,
                source,
            )
        )
    return Section(key, title, parts, True)


# --- sections: recommendations, generation -----------------------------------------------------

RECS: Cols = (
    ("NDCG@10", "ndcg@10"), ("Recall@20", "recall@20"), ("MAP@12", "map@12"),
    ("coverage@10", "coverage@10"), ("cold-start NDCG@10", "cold_start_items.ndcg@10"),
    ("cold-start Recall@20", "cold_start_items.recall@20"), ("NDCG@10 / ALS", "ratio"),
)  # fmt: skip


def _ratio(x: Any) -> str | None:
    return f"{x:.2f}x" if _is_number(x) else None


def _recs_setting(doc: Doc, s: dict[str, Any]) -> Sub:
    """One simulator preset of a recommendation eval: its table and NDCG@10 chart."""
    m, sim, split = _meta(doc), s.get("simulator") or {}, s.get("split") or {}
    results = {n: r for n, r in (s.get("results") or {}).items() if isinstance(r, dict)}
    ratios = {n: _get(s, f"ratios_vs_als.{n}.ndcg@10") for n in results}
    named = [(n, {**r, "ratio": _ratio(ratios[n])}) for n, r in results.items()]
    source = (
        f"Source: {doc.shown} ({m.get('date', NA)}, commit {_commit(m)}, "
        f"{m.get('hardware', NA)}). Settings: catalogue {m.get('catalog', NA)} "
        f"({_f(m.get('items'))} products, image embeddings "
        f"{model_label(str(m.get('encoder', NA)))}), "
        f"{_f(sim.get('n_customers', m.get('customers')))} SIMULATED customers, preset "
        f"{s.get('preset', NA)} (taste_strength {sim.get('taste_strength', NA)}, "
        f"{_v(sim.get('days', NA))} days), seed {m.get('seed', NA)}; last "
        f"{split.get('holdout_last_events', NA)} events held out, "
        f"{_f(split.get('customers'))} customers evaluated, "
        f"{_f(split.get('customers_with_cold_relevant'))} in the cold-start slice."
    )
    series = {
        "NDCG@10": [_get(r, "ndcg@10") for r in results.values()],
        "cold-start NDCG@10": [_get(r, "cold_start_items.ndcg@10") for r in results.values()],
    }
    preset = f"preset {s.get('preset', NA)}"
    title = f"{preset}: NDCG@10 per model"
    plot = plots.grouped_bars(title, list(results), series, "NDCG@10", digits=4)
    caption = f"Recommenders on simulated customers, {m.get('catalog', NA)}, {preset}"
    return Sub(
        f"{m.get('catalog', NA)}, {preset} (simulated)",
        [
            _table(caption, named, RECS, source, digits=4),
            Figure(
                plot,
                "NDCG@10 overall and on the cold-start slice per recommender "
                "(simulated customers); data and sources: the table above.",
            ),
        ],
    )


def recommendations_section(inp: Inputs) -> Section:
    key, title = "recommendations", "Recommendations (simulated customers)"
    latest = {str(_meta(d).get("catalog", d.path.name)): d for d in sorted(inp.recs, key=_order)}
    if not latest:
        why = "no recommendation eval (recs-*.json) in SHOPLENS_HOME/evals/ "
        return _missing(key, title, why + "(run `shoplens recommend eval`)")
    intro = Text(
        "All customer data here is SIMULATED: customers, sessions and events come from the "
        "shoplens simulator, not from real shoppers. Each customer's last events are held "
        "out; models never return products already in the customer's history. Cold-start: "
        "customers with a held-out product that has no training events."
    )
    subs = [_recs_setting(d, s) for d in latest.values() for s in d.data.get("settings") or []]
    return Section(key, title, [intro, *subs], True)


GEN_COLS: Cols = (
    ("samples", "samples.n"), ("guidance", "settings.guidance"), ("steps", "settings.steps"),
    ("sampler", "settings.scheduler"), ("conditional accuracy", "conditional_accuracy.overall"),
    ("FID (own tower)", "fid.value"), ("FID real floor", "fid.real_floor"),
    ("precision", "precision_recall.precision"), ("recall", "precision_recall.recall"),
    ("memorised share, features", "memorisation.features.share"),
    ("memorised share, pixels", "memorisation.pixels.share"),
    ("SIMULATED customers: cosine with", "customers.settings.any category.mean_conditioned"),
    ("without", "customers.settings.any category.mean_unconditioned"),
    ("inpainting: outside the mask identical", "edits.inpainting_outside_mask_identical"),
)  # fmt: skip


def generation_section(inp: Inputs) -> Section:
    """Generation evals (``generate-*.json`` of ``shoplens generate eval``; ``gen-*.json``):
    one row per eval with the checks of the generation issue, then every number of the
    newest one."""
    key, title = "generation", "Generation"
    if not inp.generation:
        text = (
            "Not available yet (no generation runs found). The results of `shoplens "
            "generate eval` (SHOPLENS_HOME/evals/generate-*.json) appear here."
        )
        return _missing(key, title, "no generation runs found", text)
    from shoplens.training.tracking import flatten

    docs = sorted(inp.generation, key=_order)
    named = [
        (f"{model_label(str(_meta(d).get('model_spec') or _meta(d).get('model') or NA))} "
         f"({_meta(d).get('date', NA)}, {d.path.stem})", d.data)
        for d in docs
    ]  # fmt: skip
    notes = {str(d.data.get("feature_note") or "") for d in docs} - {""}
    summary = _table(
        "Generation evals: the fidelity checks, one row per evaluation",
        named,
        GEN_COLS,
        "FID, precision / recall and memorisation use shoplens's own trained image tower "
        "as the feature extractor (not Inception: not comparable with published FIDs)"
        + (f"; {' '.join(sorted(notes))}" if notes else "")
        + ". Memorised share: samples closer to a training image than 99% of real test "
        "images are (targets: conditional accuracy >= 0.90 at guidance 3, memorised < 1%). "
        "Customers are SIMULATED.",
        "evaluation",
    )
    parts: list[Any] = [summary]
    for d in docs[-1:]:  # every number of the newest; the others are in their JSON files
        m = _meta(d)
        numbers = [
            (k, {"v": v})
            for k, v in flatten({k: v for k, v in d.data.items() if k != "meta"}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        settings = ", ".join(
            f"{k} {_f(v)}"
            for k, v in m.items()
            if k not in ("date", "commit", "machine") and not isinstance(v, dict)
        )
        source = f"Source: {d.shown} ({m.get('date', NA)}, commit {_commit(m)}). "
        parts.append(
            _table(
                f"Newest generation eval ({d.path.stem}): every number",
                numbers,
                [("value", "v")],
                source + f"Settings: {settings or NA}.",
                "metric",
                digits=4,
            )
        )
    return Section(key, title, parts, True)


# --- sections: training, benchmarks, samples ---------------------------------------------------

TRAIN_SETTINGS: Cols = (
    ("data", "data.source"), ("held-out classes", "data.held_out"), ("epochs", "train.epochs"),
    ("batch size", "train.batch_size"), ("learning rate", "train.lr"),
    ("schedule", "train.schedule"), ("precision", "train.precision"), ("seed", "train.seed"),
)  # fmt: skip


def training_section(inp: Inputs) -> Section:
    key, title = "training", "Training curves"
    runs = inp.training
    if not runs:
        return _missing(key, title, f"no training runs with per-epoch metrics ({inp.tracking})")
    commits = {r.commit for r in runs}
    one = len(commits) == 1
    ids = ", ".join(
        f"{r.name} = {r.run_id[:8]} ({r.experiment}" + ("" if one else f", commit {r.commit}") + ")"
        for r in runs
    )
    source = f"Source: {inp.tracking}; runs {ids}" + (f"; commit {runs[0].commit}." if one else ".")
    rows = []
    for r in runs:
        curves = [*r.loss.values(), *r.quality.values()]
        epochs = max((p[0] for c in curves for p in c), default=None)
        loss = next(iter(r.loss.values()), [])
        final = ", ".join(f"{k} {v[-1][1]:.3f}" for k, v in r.quality.items() if v)
        rows.append(
            [
                r.name,
                r.model,
                r.status,
                r.started,
                _v(epochs),
                _f(loss[-1][1]) if loss else NA,
                final or NA,
            ]
        )
    settings = [[r.name, *[_v(r.params.get(k, NA)) for _, k in TRAIN_SETTINGS]] for r in runs]
    parts: list[Any] = [
        Text(
            f"The {len(runs)} newest training runs with per-epoch metrics, as logged to "
            "MLflow by the training loop (train/*: means over the epoch; eval/*: validation "
            "split)."
        ),
        Table(
            "Training runs: final epoch",
            ["run", "model", "status", "started", "epochs", "final train loss", "final metrics"],
            rows,
            source,
        ),
        Table("Training run settings", ["run", *[h for h, _ in TRAIN_SETTINGS]], settings, source),
    ]
    for r in runs:
        if r.loss or r.quality:
            caption = f"Training curves of {r.name} ({r.model}; MLflow run {r.run_id[:8]}, "
            plot = plots.training_curves(r.name, r.loss, r.quality)
            parts.append(Figure(plot, caption + f"started {r.started}, {r.status})."))
    return Section(key, title, parts, True)


RECALL_RE = re.compile(r"recall(@\d+|_?at_?\d+|\d+)?", re.I)
QPS_RE = re.compile(r"qps(_single)?|queries_per_s(ec(ond)?)?", re.I)  # bench_ann: qps_single
PCT_RE = re.compile(r"(latency_)?p\d+(\.\d+)?(_?ms|_?s)?", re.I)
NAME_KEYS = ("endpoint", "route", "index", "factory", "name", "method", "backend", "config")


def _records(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every JSON object inside ``obj``, with its key path."""
    if isinstance(obj, dict):
        inner = [r for k, v in obj.items() for r in _records(v, (*path, str(k)))]
        return [(path, obj), *inner]
    if isinstance(obj, list):
        return [r for v in obj for r in _records(v, path)]
    return []


def _number_key(d: dict[str, Any], pattern: re.Pattern[str]) -> str | None:
    return next((k for k, v in d.items() if pattern.fullmatch(k) and _is_number(v)), None)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _name(path: tuple[str, ...], d: dict[str, Any]) -> str:
    named = [str(d[k]) for k in NAME_KEYS if isinstance(d.get(k), str)]
    return named[0] if named else (path[-1] if path else "results")


def _bench_source(doc: Doc) -> str:
    m = _meta(doc)
    settings = ", ".join(
        f"{k} {_f(v)}"
        for k, v in m.items()
        if k not in ("date", "commit", "machine") and not isinstance(v, dict)
    )
    hw = f", {_hardware(m['machine'])}" if "machine" in m else ""
    return (
        f"Source: {doc.shown} ({m.get('date', NA)}, commit {_commit(m)}{hw}). "
        f"Settings: {settings or 'as recorded in the file'}."
    )


def _ann_parts(doc: Doc) -> list[Any]:
    """Recall/QPS points found anywhere in a benchmark file: a table and the curve."""
    found = []
    for path, d in _records(doc.data):
        rk, qk = _number_key(d, RECALL_RE), _number_key(d, QPS_RE)
        if rk and qk:
            found.append((_name(path, d), d, rk, qk))
    if not found:
        return []
    recall = found[0][2]
    params = list(
        dict.fromkeys(
            k
            for _, d, rk, qk in found
            for k, v in d.items()
            if k not in (rk, qk, *NAME_KEYS) and isinstance(v, (int, float, str))
        )
    )[:6]
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, d, rk, qk in found:
        curves.setdefault(name, []).append((float(d[rk]), float(d[qk])))
    rows = [
        [name, _f(d[rk]), f"{float(d[qk]):.0f}", *[_f(d.get(k)) for k in params]]
        for name, d, rk, qk in found
    ]
    source = _bench_source(doc)
    plot = plots.recall_qps(f"{recall} against QPS", curves, recall)
    return [
        Table(
            f"ANN {recall} and throughput ({doc.path.name})",
            ["index", recall, "QPS", *params],
            rows,
            source,
        ),
        Figure(
            plot,
            f"Queries per second against {recall} per index (up and to the right is "
            "better); data and sources: the table above.",
        ),
    ]


def _latency_parts(doc: Doc) -> list[Any]:
    """Latency percentiles and raw samples found anywhere in a benchmark file."""
    samples: dict[str, list[float]] = {}
    pct: dict[str, dict[str, float]] = {}
    for path, d in _records(doc.data):
        keys = [k for k, v in d.items() if PCT_RE.fullmatch(k) and _is_number(v)]
        raw = [
            v
            for k, v in d.items()
            if re.search("latenc|samples", k, re.I)
            and isinstance(v, list)
            and len(v) >= 5
            and all(map(_is_number, v))
        ]
        if keys:
            pct[_name(path, d)] = {k: float(d[k]) for k in keys}
        if raw:
            samples[_name(path, d)] = [float(x) for x in raw[0]]
    if not pct and not samples:
        return []
    unit = "s" if any(k.endswith("_s") for p in pct.values() for k in p) else "ms"
    plot = plots.latency(f"request latency ({doc.path.name})", samples, pct, unit)
    parts: list[Any] = []
    if pct:
        cols = sorted({k for p in pct.values() for k in p}, key=plots.percentile_order)
        named = [(n, {k.replace(".", "_"): v for k, v in p.items()}) for n, p in pct.items()]
        parts.append(
            _table(
                f"Latency percentiles ({doc.path.name})",
                named,
                [(k, k.replace(".", "_")) for k in cols],
                _bench_source(doc),
                "endpoint",
                digits=1,
            )
        )
    caption = f"Latency distribution per endpoint ({unit}). {_bench_source(doc)}"
    return [*parts, Figure(plot, caption)]


def benchmarks_section(inp: Inputs) -> Section:
    ann = [p for d in inp.bench for p in _ann_parts(d)]
    lat = [p for d in inp.bench for p in _latency_parts(d)]
    where = inp.bench_dir
    parts: list[Any] = [
        Sub(
            "ANN recall and QPS",
            ann
            or [
                Text(
                    f"Not measured yet (no recall/QPS results in {where / 'ann.json'}).",
                    missing=True,
                )
            ],
        ),
        Sub(
            "Request latency",
            lat
            or [
                Text(
                    f"Not measured yet (no latency results in {where / 'http.json'}).", missing=True
                )
            ],
        ),
    ]
    gaps = [n for n, got in (("ANN recall/QPS", ann), ("latency", lat)) if not got]
    note = f"not measured yet ({' and '.join(gaps)}; no results in {where})" if gaps else ""
    title = "Benchmarks: ANN recall/QPS and latency"
    return Section("benchmarks", title, parts, bool(ann or lat), note)


GRID_ALT = {
    "results_grid": "Demo search results on the Fashion-MNIST catalogue: each row is one "
    "query (first column: a photo, a photo combined with a text, a text, or a catalogue "
    "product), followed by its top results, each labelled with its category and similarity "
    "score.",
}


def samples_section(inp: Inputs, max_images: int = 6) -> Section:
    if not inp.images:
        return _missing("samples", "Sample grids", "no sample grids in docs/img/")
    parts: list[Any] = []
    for path in inp.images[:max_images]:
        side = path.with_suffix(".txt")
        name = path.stem.replace("_", " ")
        alt = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
        alt = alt or GRID_ALT.get(path.stem, f"Sample image: {name}")
        when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
        caption = f"{name}: {path} ({when}; downscaled to at most {plots.MAX_IMAGE_WIDTH} px)."
        parts.append(Figure(plots.image_file(path, alt), caption))
    return Section("samples", "Sample grids", parts, True)


# --- sections: summary, data and settings, what is simulated -----------------------------------

HEADLINE: Cols = (
    ("accuracy", "accuracy"), ("5-NN accuracy", "knn_accuracy"),
    ("R@1 text→image", "text_to_image_r1"), ("zero-shot weighted F1", "zero_shot_weighted_f1"),
    ("held-out accuracy (held-out classes only)", "held_out_only"),
    ("altered-copy R@1", "aug_r1"),
)  # fmt: skip


def overview_section(inp: Inputs, sections: list[Section]) -> Section:
    """Headline figures per model (each the newest value measured) and what is missing."""
    by_model: dict[str, list[Doc]] = {}
    for d in sorted(inp.model_evals, key=_order):
        by_model.setdefault(str(_meta(d).get("model")), []).append(d)
    parts: list[Any] = [
        Text(
            "Every number in this report is read from stored run results (eval JSON files, "
            "MLflow runs, benchmark files); each table names its source, date, commit and "
            "settings. Regenerate with `shoplens report`."
        )
    ]
    named, used = [], []
    for docs in by_model.values():
        newest = {}
        for _, path in HEADLINE:
            hit = next(
                (d for d in reversed(docs) if _get(d.data, f"headline.{path}") is not None), None
            )
            newest[path] = _get(hit.data, f"headline.{path}") if hit else None
            used += [hit] if hit and hit not in used else []
        named.append((_label(docs[-1]), newest))
    if named:
        parts.append(
            _table(
                "Headline figures per model (Fashion-MNIST test split)",
                named,
                HEADLINE,
                _sources(used or [d[-1] for d in by_model.values()]),
            )
        )
    lacking = [f"{s.title}: {s.note}" for s in sections if s.note]
    if lacking:
        parts += [Text("Not in this report yet:"), Bullets(lacking)]
    return Section("summary", "Summary", parts, bool(named))


def data_section(inp: Inputs) -> Section:
    parts: list[Any] = [
        Text(
            f"Results read from SHOPLENS_HOME {inp.home}; training runs from {inp.tracking or NA}."
        )
    ]
    evals = [
        (
            _label(d),
            {
                **_meta(d),
                "file": d.shown,
                "hardware": _hardware(_meta(d).get("machine")),
                "commit": _commit(_meta(d)),
            },
        )
        for d in sorted(inp.model_evals, key=_order)
    ]
    if evals:
        cols = [
            ("spec", "model"),
            ("data", "data_description"),
            ("seed", "seed"),
            ("tasks", "tasks"),
            ("held-out classes", "held_out"),
            ("prompt templates", "templates"),
            ("eval time (s)", "eval_s"),
            ("hardware", "hardware"),
            ("date", "date"),
            ("commit", "commit"),
            ("file", "file"),
        ]
        parts.append(
            _table(
                "Model evaluations read (all runs, oldest first)",
                evals,
                cols,
                "Source: the meta block of each eval JSON file listed.",
                digits=1,
            )
        )
    for d in inp.foundation:
        m = {**_meta(d), "hardware": _hardware(_meta(d).get("machine"))}
        cols = [
            ("catalogue", "catalog"),
            ("products", "products"),
            ("train", "train"),
            ("test", "test"),
            ("image encoders", "encoders"),
            ("text encoder", "text_encoder"),
            ("altered copies", "n_aug"),
            ("seed", "seed"),
            ("hardware", "hardware"),
        ]
        parts.append(
            _table(
                "Foundation evaluation settings",
                [(d.shown, m)],
                cols,
                _foundation_source(d),
                "file",
            )
        )
    sim_keys = (
        "days",
        "sessions_per_customer",
        "events_per_session",
        "taste_strength",
        "category_concentration",
        "popularity_bias",
        "new_item_share",
        "outfit_rate",
        "seed",
    )
    for d in inp.recs:
        m = _meta(d)
        rows = [
            [
                str(s.get("preset")),
                _v(_get(s, "simulator.n_customers")),
                *[_v(_get(s, f"simulator.{k}")) for k in sim_keys],
                _f(_get(s, "simulation.events")),
            ]
            for s in d.data.get("settings") or []
        ]
        parts.append(
            Table(
                f"Customer simulator settings ({d.path.name})",
                [
                    "preset",
                    "customers",
                    *[k.replace("_", " ") for k in sim_keys],
                    "simulated events",
                ],
                rows,
                f"Source: {d.shown} ({m.get('date', NA)}, commit {_commit(m)}). Settings: "
                f"catalogue {m.get('catalog', NA)}, {_f(m.get('items'))} products.",
            )
        )
    if inp.problems:
        parts += [Text("Inputs skipped:"), Bullets(list(inp.problems))]
    present = bool(inp.model_evals or inp.foundation or inp.recs)
    return Section("data", "Data and settings", parts, present)


def simulated_section(inp: Inputs) -> Section:
    items = [
        f"All recommendation results ({d.path.name}, preset {s.get('preset')}): "
        f"{_f(_get(s, 'simulation.events'))} events of {_f(_get(s, 'simulation.customers'))} "
        f"customers, all simulated ({_get(s, 'simulation.note') or 'shoplens simulator'})."
        for d in inp.recs
        for s in d.data.get("settings") or []
    ] or [
        "All recommendation results, when present, come from simulated customers (none found yet)."
    ]
    items += [
        "Fashion-MNIST texts are derived from labels (in-domain): prompts and product titles "
        "are built from the 10 class names, so text-to-image, zero-shot and held-out figures "
        "do not measure free-form shopper text.",
        "Robustness queries and near-duplicates are synthetic: seeded crop, noise, brightness "
        "and blur + JPEG alterations of catalogue images.",
    ]
    for d in inp.bench:
        m = _meta(d)
        if m.get("simulated") or m.get("synthetic") or m.get("note"):
            items.append(f"Benchmark {d.path.name}: {m.get('note') or 'synthetic inputs'}.")
    return Section("simulated", "What is simulated", [Bullets(items)], True)


#: The sections after the summary, in page order; a section's key is its function's name.
SECTION_BUILDERS = (
    classification_section, retrieval_section, text_to_image_section, robustness_section,
    recommendations_section, generation_section, training_section, benchmarks_section,
    samples_section, data_section, simulated_section,
)  # fmt: skip
