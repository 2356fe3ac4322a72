"""``shoplens report``: one static, self-contained, accessible HTML research report.

:func:`build_report` reads the stored results (eval JSON files under
``SHOPLENS_HOME/evals/``, the foundation eval ``docs/RESULTS.json``, MLflow training runs,
``docs/bench/*.json``, ``docs/img/*.png``), turns them into sections of tables and plots
(one builder function per section, below) and renders
``template.html`` (inline CSS, images as data URIs, no script, no external request). A
missing input gives its section a "not measured yet" note instead of an error.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar

import typer

from shoplens.config import atomic_write, shoplens_home
from shoplens.report import plots
from shoplens.report.plots import Plot

NA = "n/a"


# --- document model: what a section holds ------------------------------------------------


@dataclass
class Table:
    """A data table; the first cell of each row is its row header."""

    caption: str
    columns: list[str]
    rows: list[list[str]]
    source: str
    id: str = ""
    kind: ClassVar[str] = "table"


@dataclass
class Figure:
    plot: Plot
    caption: str
    kind: ClassVar[str] = "figure"


@dataclass
class Text:
    text: str
    missing: bool = False  # shown as a "not measured yet" notice
    kind: ClassVar[str] = "text"


@dataclass
class Bullets:
    items: list[str]
    kind: ClassVar[str] = "bullets"


@dataclass
class Sub:
    """A titled sub-section (an ``h3``)."""

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
    note: str = ""  # one line for the summary: what is missing and why


# --- inputs ----------------------------------------------------------------------------------


@dataclass
class Doc:
    """One result file: its path, how the report names it, and its parsed JSON."""

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
    loss: dict[str, list[tuple[float, float]]]
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
    tracking: str = ""  # where training runs were read from, or why not
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
        d = doc.data
        if path.name.startswith("gen-"):
            inp.generation.append(doc)
        elif path.name.startswith("recs-") or isinstance(d.get("settings"), list):
            inp.recs.append(doc)
        elif "tasks" in d and "meta" in d:
            inp.model_evals.append(doc)
        elif "knn" in d and "meta" in d:
            inp.foundation.append(doc)
        else:
            inp.problems.append(f"{doc.shown}: not a known result file, skipped")
    if results_json.is_file():
        doc = _read_json(results_json, str(results_json), inp.problems)
        if doc is not None and "knn" in doc.data:
            inp.foundation.append(doc)
    if bench_dir.is_dir():
        for path in sorted(bench_dir.glob("*.json")):
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
    """The MLflow store of ``home``: ``$SHOPLENS_TRACKING_URI`` when ``home`` is the default
    home, else its ``mlflow.db`` (None when that file does not exist: nothing is created)."""
    import os

    uri = os.environ.get("SHOPLENS_TRACKING_URI")
    if uri and home.resolve() == shoplens_home().resolve():
        return uri
    db = home / "mlflow.db"
    return f"sqlite:///{db.resolve()}" if db.is_file() else None


def _load_training(home: Path, problems: list[str]) -> tuple[list[TrainRun], str]:
    """Training runs (those with per-epoch ``train/`` metrics), newest first."""
    uri = _tracking_uri(home)
    if uri is None:
        return [], "no MLflow tracking database (mlflow.db in SHOPLENS_HOME)"
    shown = "mlflow.db" if uri.startswith("sqlite:") else uri
    try:
        from shoplens.training.tracking import mlflow_client

        client = mlflow_client(uri)
        names = {e.experiment_id: e.name for e in client.search_experiments()}
        found = client.search_runs(
            list(names), order_by=["attributes.start_time DESC"], max_results=200
        )
        runs = []
        for r in found:
            keys = [k for k in r.data.metrics if k.startswith(("train/", "eval/"))]
            if not any(k.startswith("train/") for k in keys) or len(runs) >= MAX_TRAIN_RUNS:
                continue
            epoch = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "epoch")}
            curves: dict[str, list[tuple[float, float]]] = {}
            for k in sorted(keys):
                if k.rsplit("/", 1)[-1] in SKIP_CURVES:
                    continue
                hist = sorted(client.get_metric_history(r.info.run_id, k), key=lambda m: m.step)
                curves[k] = [(epoch.get(m.step, float(m.step)), m.value) for m in hist]
            main_loss = [k for k in curves if k in ("train/loss", "eval/loss")] or [
                k for k in curves if k.endswith("loss")
            ]
            quality = [k for k in curves if k.startswith("eval/") or "accuracy" in k]
            runs.append(TrainRun(
                name=r.info.run_name or r.info.run_id, run_id=r.info.run_id,
                experiment=names.get(r.info.experiment_id, r.info.experiment_id),
                status=r.info.status, started=_ms_date(r.info.start_time),
                model=r.data.tags.get("shoplens.model", NA),
                commit=r.data.tags.get("mlflow.source.git.commit", "")[:7] or "not recorded",
                params=dict(r.data.params),
                loss={k: curves[k] for k in main_loss if curves[k]},
                quality={k: curves[k] for k in quality if k not in main_loss and curves[k]},
            ))  # fmt: skip
        return runs, f"MLflow tracking store {shown}"
    except Exception as e:  # a store that cannot be read must not stop the report
        problems.append(f"MLflow store {shown}: {type(e).__name__}: {e}")
        return [], f"MLflow store {shown} could not be read"


def _ms_date(ms: int | None) -> str:
    if not ms:
        return NA
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- build -----------------------------------------------------------------------------------


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render(sections: list[Section], context: dict[str, Any]) -> str:
    """The HTML page of ``sections`` (tables get ids for their labelled scroll regions)."""
    import jinja2

    count = 0

    def number(parts: list[Any]) -> None:
        nonlocal count
        for p in parts:
            if isinstance(p, Table):
                count += 1
                p.id = f"table-{count}"
            elif isinstance(p, (Sub, Details)):
                number(p.parts)

    for s in sections:
        number(s.parts)
    text = resources.files("shoplens.report").joinpath("template.html").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.tests["numeric"] = _is_numeric
    env.filters["inline"] = _inline_code
    return env.from_string(text).render(sections=sections, **context)


def _inline_code(text: str) -> Any:
    """Escape ``text`` and show its `backquoted` parts as ``<code>``."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _is_numeric(cell: str) -> bool:
    if cell == NA:
        return True
    text = str(cell).replace(",", "").replace("x", "").replace("%", "").strip()
    try:
        float(text.split(" ")[0])
    except ValueError:
        return False
    return True


def build_report(
    home: Path | None = None,
    out: Path = Path("docs/report.html"),
    bench_dir: Path = Path("docs/bench"),
    img_dir: Path = Path("docs/img"),
    results_json: Path = Path("docs/RESULTS.json"),
) -> dict[str, Any]:
    """Write the research report to ``out`` (atomically) from the stored run results.

    Args:
        home: the ``SHOPLENS_HOME`` to read (evals/, mlflow.db); default the current one.
        out: the HTML file to write.
        bench_dir: benchmark results (``ann.json``: recall/QPS, ``http.json``: latency).
        img_dir: sample grids (PNG/JPEG) to embed.
        results_json: the foundation eval JSON written by ``shoplens eval``.

    Returns:
        A summary: ``out``, ``bytes``, ``sections`` (key -> title, present, note),
        ``present`` / ``missing`` section keys, ``inputs`` (counts) and ``problems``.
    """
    home = Path(home) if home is not None else shoplens_home()
    inp = load_inputs(home, Path(bench_dir), Path(img_dir), Path(results_json))
    sections = [builder(inp) for builder in SECTION_BUILDERS]
    sections.insert(0, overview_section(inp, sections))
    context = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "home": str(home),
    }
    html = render(sections, context)
    out = Path(out)
    with atomic_write(out) as f:
        f.write(html.encode("utf-8"))
    out.chmod(0o644)  # a published page (atomic_write's temp file is private)
    return {
        "out": str(out),
        "bytes": len(html.encode("utf-8")),
        "sections": {
            s.key: {"title": s.title, "present": s.present, "note": s.note} for s in sections
        },
        "present": [s.key for s in sections if s.present],
        "missing": [s.key for s in sections if not s.present],
        "inputs": {
            "model_evals": len(inp.model_evals), "foundation_evals": len(inp.foundation),
            "recs_evals": len(inp.recs), "generation_evals": len(inp.generation),
            "training_runs": len(inp.training), "bench_files": len(inp.bench),
            "images": len(inp.images),
        },  # fmt: skip
        "problems": inp.problems,
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A short human summary of :func:`build_report`."""
    lines = [f"report: {summary['out']} ({summary['bytes'] / 1024:.0f} KiB)"]
    for s in summary["sections"].values():
        lines.append(f"  {'ok  ' if s['present'] else 'none'}  {s['title']}" + (
            f": {s['note']}" if s["note"] else ""))  # fmt: skip
    lines += [f"  skipped: {p}" for p in summary["problems"]]
    return lines


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


# --- shared helpers of the section builders ------------------------------------------------


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
        import ast

        try:
            return _f(list(ast.literal_eval(x)))
        except (ValueError, SyntaxError):
            return x
    return _f(x)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


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
    return str(meta.get("commit") or _get(meta, "machine", "commit") or "not recorded")


def _hardware(machine: Any) -> str:
    if not isinstance(machine, dict):
        return str(machine or NA)
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return f"{machine.get('nproc', '?')} CPU cores ({machine.get('cpu', '?')}){gpu}"


def _eval_source(doc: Doc) -> str:
    m = _meta(doc)
    run = f", MLflow run {m['mlflow_run_id'][:8]}" if m.get("mlflow_run_id") else ""
    return f"{_label(doc)}: {doc.shown} ({m.get('date', NA)}, commit {_commit(m)}{run})"


def _eval_settings(doc: Doc) -> str:
    m = _meta(doc)
    held = f", held out of training: {_f(m['held_out'])}" if m.get("held_out") else ""
    return f"{m.get('data_description', m.get('data', NA))}, seed {m.get('seed', NA)}{held}"


def _sources(docs: list[Doc], extra: str = "") -> str:
    src = "; ".join(_eval_source(d) for d in docs)
    settings = "; ".join(dict.fromkeys(_eval_settings(d) for d in docs))
    return f"Source: {src}. Settings: {settings}{extra}."


def _foundation_source(doc: Doc) -> str:
    m = _meta(doc)
    return (
        f"Source: foundation eval {doc.shown} ({m.get('date', NA)}, commit {_commit(m)}). "
        f"Settings: catalogue {m.get('catalog', NA)} ({_f(m.get('train'))} train, "
        f"{_f(m.get('test'))} test products), seed {m.get('seed', NA)}."
    )


def _with_task(docs: list[Doc], task: str) -> list[Doc]:
    """Per model, the newest eval that ran ``task`` (not skipped); sorted by label."""
    best: dict[str, Doc] = {}
    for d in docs:
        t = _get(d.data, "tasks", task)
        if not isinstance(t, dict) or "skipped" in t:
            continue
        spec = str(_meta(d).get("model", d.path))
        if spec not in best or _order(d) >= _order(best[spec]):
            best[spec] = d
    return sorted(best.values(), key=_label)


def _order(doc: Doc) -> tuple[str, str]:
    return str(_meta(doc).get("date", "")), doc.path.name


def _latest(docs: list[Doc]) -> Doc | None:
    return max(docs, key=_order, default=None)


def _skipped(docs: list[Doc], tasks: tuple[str, ...]) -> list[Any]:
    """Notes for tasks a model's newest eval skipped (and no eval of it ran)."""
    notes = []
    for task in tasks:
        ran = {str(_meta(d).get("model")) for d in _with_task(docs, task)}
        for d in docs:
            reason = _get(d.data, "tasks", task, "skipped")
            if reason and str(_meta(d).get("model")) not in ran:
                ran.add(str(_meta(d).get("model")))
                notes.append(f"{_label(d)}: {task.replace('_', ' ')} not run ({reason}).")
    return [Bullets(notes)] if notes else []


def _missing(key: str, title: str, note: str, text: str = "") -> Section:
    return Section(key, title, [Text(text or f"Not measured yet: {note}.", missing=True)], False, note)


def _per_class(doc: Doc, task: str, what: str) -> Details:
    """Per-class precision/recall/F1 and the confusion matrix of one model's ``task``."""
    t, label = doc.data["tasks"][task], _label(doc)
    rows = [
        [c, _f(v.get("precision")), _f(v.get("recall")), _f(v.get("f1")), _f(v.get("support"))]
        for c, v in (t.get("per_class") or {}).items()
    ]
    parts: list[Any] = [Table(
        f"Per-class {what} of {label}", ["class", "precision", "recall", "F1", "test images"],
        rows, _sources([doc]),
    )]  # fmt: skip
    if t.get("confusion_matrix") and t.get("classes"):
        plot = plots.confusion_matrix(f"{label}, {what}", t["classes"], t["confusion_matrix"])
        parts.append(Figure(plot, f"Confusion matrix of {label}, {what} ({_f(t.get('n'))} "
                                  f"test images; rows: true class). Source: {doc.shown}."))  # fmt: skip
    return Details(f"{label}: per-class {what} and confusion matrix", parts)


# --- sections: evaluation tasks ------------------------------------------------------------

EVALS = "no model evaluation with this task in $SHOPLENS_HOME/evals/ (run `shoplens eval --model`)"
IN_DOMAIN = (
    "Fashion-MNIST has no product texts: every text here (prompts such as \"a photo of a "
    "{class}\") is derived from the class labels, so these text metrics are in-domain."
)


def classification_section(inp: Inputs) -> Section:
    key, title = "classification", "Classification"
    docs = _with_task(inp.model_evals, "classification")
    if not docs:
        return _missing(key, title, EVALS)
    rows = [
        [_label(d), t.get("method", NA), _f(t.get("n")), _f(t.get("accuracy")),
         _f(t.get("macro_f1")), _f(t.get("weighted_f1"))]
        for d in docs for t in [d.data["tasks"]["classification"]]
    ]  # fmt: skip
    parts: list[Any] = [
        Text("Each model labels the Fashion-MNIST test images with its own classifier head, "
             "else with a linear probe (logistic regression) on its train-split embeddings."),
        Table("Classification of the Fashion-MNIST test images",
              ["model", "method", "test images", "accuracy", "macro F1", "weighted F1"],
              rows, _sources(docs)),
        *[_per_class(d, "classification", "classification") for d in docs],
    ]  # fmt: skip
    return Section(key, title, parts, True)


def retrieval_section(inp: Inputs) -> Section:
    key, title = "retrieval", "Image retrieval"
    docs = _with_task(inp.model_evals, "image_retrieval")
    found = _latest(inp.foundation)
    if not docs and found is None:
        return _missing(key, title, EVALS)
    parts: list[Any] = []
    if docs:
        rows = []
        for d in docs:
            t = d.data["tasks"]["image_retrieval"]
            r, p = t.get("recall_at_k") or {}, t.get("precision_at_k") or {}
            rows.append([_label(d), _f(t.get("queries")), _f(t.get("gallery")), _f(r.get("1")),
                         _f(r.get("5")), _f(r.get("10")), _f(p.get("10")), _f(t.get("ndcg_at_10")),
                         _f(t.get("map")), _f(t.get("knn_accuracy"))])  # fmt: skip
        parts += [
            Text("Test images query the train images; a result is relevant when it shows the "
                 "query's class. R@k: share of queries with a relevant result in the top k; "
                 "5-NN accuracy: majority class of the 5 nearest train images."),
            Table("Image-to-image retrieval, test images against the train gallery",
                  ["model", "queries", "gallery", "R@1", "R@5", "R@10", "P@10", "nDCG@10",
                   "mAP", "5-NN accuracy"], rows, _sources(docs)),
        ]  # fmt: skip
    if found is not None:
        knn = found.data.get("knn") or {}
        classes = list(dict.fromkeys(c for v in knn.values() for c in v.get("per_class", {})))
        rows = [[enc, _f(v.get("accuracy")), _f(v.get("k")), _f(v.get("queries")),
                 _f(v.get("gallery"))] for enc, v in knn.items()]  # fmt: skip
        per = [[c, *[_f(_get(v, "per_class", c)) for v in knn.values()]] for c in classes]
        parts += [
            Table("k-NN accuracy of the foundation encoders (catalogue index)",
                  ["encoder", "k-NN accuracy", "k", "queries", "gallery"], rows,
                  _foundation_source(found)),
            Details("Foundation encoders: k-NN accuracy per class", [Table(
                "k-NN accuracy per class, foundation encoders", ["class", *knn], per,
                _foundation_source(found))]),
        ]  # fmt: skip
    return Section(key, title, parts, True)


def text_section(inp: Inputs) -> Section:
    key, title = "text-to-image", "Text-to-image and zero-shot"
    t2i = _with_task(inp.model_evals, "text_to_image")
    zs = _with_task(inp.model_evals, "zero_shot")
    held = _with_task(inp.model_evals, "held_out")
    found = _latest(inp.foundation)
    if not (t2i or zs or held or found):
        return _missing(key, title, EVALS)
    parts: list[Any] = [Text(IN_DOMAIN)]
    if t2i:
        rows = []
        for d in t2i:
            t = d.data["tasks"]["text_to_image"].get("by_label") or {}
            r, p = t.get("recall_at_k") or {}, t.get("precision_at_k") or {}
            rows.append([_label(d), _f(t.get("queries")), _f(t.get("gallery")), _f(r.get("1")),
                         _f(r.get("5")), _f(r.get("10")), _f(p.get("10")), _f(t.get("ndcg_at_10")),
                         _f(t.get("map"))])  # fmt: skip
        templates = _f(_get(t2i[0].data, "tasks", "text_to_image", "by_label", "templates"))
        parts.append(Table(
            "Text-to-image retrieval: class prompts query the test images",
            ["model", "prompts", "gallery", "R@1", "R@5", "R@10", "P@10", "nDCG@10", "mAP"],
            rows, _sources(t2i, f"; prompt templates: {templates}"),
        ))  # fmt: skip
    if zs:
        rows = [[_label(d), _f(t.get("n")), _f(t.get("accuracy")), _f(t.get("macro_f1")),
                 _f(t.get("weighted_f1"))] for d in zs for t in [d.data["tasks"]["zero_shot"]]]
        parts += [
            Table("Zero-shot classification (argmax over prompt-ensemble class embeddings)",
                  ["model", "test images", "accuracy", "macro F1", "weighted F1"], rows,
                  _sources(zs)),
            *[_per_class(d, "zero_shot", "zero-shot classification") for d in zs],
        ]  # fmt: skip
    if held:
        rows = []
        for d in held:
            t = d.data["tasks"]["held_out"]
            a, o = t.get("all_classes") or {}, t.get("held_out_only") or {}
            rows.append([_label(d), _f(t.get("held_out")), _f(t.get("images")),
                         f"{_f(a.get('accuracy'))} (chance {_f(a.get('chance_accuracy'))})",
                         f"{_f(o.get('accuracy'))} (chance {_f(o.get('chance_accuracy'))})",
                         _f(t.get("predicted_as_seen_class"))])  # fmt: skip
        parts.append(Table(
            "Zero-shot accuracy on classes held out of training",
            ["model", "held-out classes", "test images", "accuracy among all classes",
             "accuracy among held-out classes", "share predicted as a seen class"],
            rows, _sources(held),
        ))  # fmt: skip
    text = found.data.get("text") if found is not None else None
    if found is not None and isinstance(text, dict):
        rows = [[c, _f(v.get("precision"))] for c, v in (text.get("per_class") or {}).items()]
        rows.append(["mean", _f(text.get("mean_precision"))])
        parts.append(Table(
            f"Text search precision@{text.get('k', 10)} per class name, text encoder "
            f"{text.get('text_encoder', NA)} over label-derived product titles",
            ["query (class name)", f"precision@{text.get('k', 10)}"], rows,
            _foundation_source(found),
        ))  # fmt: skip
    parts += _skipped(inp.model_evals, ("text_to_image", "zero_shot"))
    return Section(key, title, parts, True)


def robustness_section(inp: Inputs) -> Section:
    key, title = "robustness", "Robustness and near-duplicates"
    docs = _with_task(inp.model_evals, "robustness")
    dup = _with_task(inp.model_evals, "near_duplicates")
    found = _latest(inp.foundation)
    aug = {
        k: v for k, v in ((found.data.get("augmented") or {}) if found else {}).items()
        if isinstance(v, dict)
    }  # fmt: skip
    if not (docs or dup or aug):
        return _missing(key, title, EVALS)
    parts: list[Any] = [Text(
        "Synthetic altered copies of test images (crop, noise, brightness, blur + JPEG) query "
        "the whole catalogue; R@k is the share whose original is in the top k.")]
    named = [(_label(d), d.data["tasks"]["robustness"]) for d in docs]
    if found is not None:
        extra = {"queries": found.data["augmented"].get("queries"),
                 "gallery": _meta(found).get("products")}  # fmt: skip
        named += [(f"{enc} (foundation)", {**v, **extra}) for enc, v in aug.items()]
    if named:
        kinds = list(dict.fromkeys(k for _, t in named for k in t.get("r_at_1", {}) if k != "overall"))
        rows = [[name, _f(t.get("queries")), _f(t.get("gallery")),
                 *[_f(_get(t, "r_at_1", k)) for k in [*kinds, "overall"]],
                 _f(_get(t, "r_at_10", "overall"))] for name, t in named]  # fmt: skip
        source = " ".join(
            ([_sources(docs)] if docs else []) + ([_foundation_source(found)] if aug and found else [])
        )
        series = {name: [_get(t, "r_at_1", k) for k in [*kinds, "overall"]] for name, t in named}
        plot = plots.grouped_bars("altered-copy R@1 by alteration", [*kinds, "overall"],
                                  series, "R@1")  # fmt: skip
        parts += [
            Table("Altered-copy retrieval: R@1 by alteration, and R@10",
                  ["model", "queries", "gallery", *[f"R@1 {k}" for k in kinds], "R@1 overall",
                   "R@10 overall"], rows, source),
            Figure(plot, "R@1 of altered copies per alteration and model (higher is better); "
                         "data and sources: the table above."),
        ]  # fmt: skip
    dups = [(_label(d), d.data["tasks"]["near_duplicates"], _sources([d])) for d in dup]
    if found is not None and isinstance(found.data.get("dedupe"), dict):
        dd = found.data["dedupe"]
        dups.append((f"{dd.get('encoder', '?')} (foundation)", dd, _foundation_source(found)))
    if dups:
        kinds = list(dict.fromkeys(k for _, t, _ in dups for k in t.get("recall_by_alteration", {})))
        rows = [[name, _f(t.get("products")), _f(t.get("injected")), _f(t.get("injected_found")),
                 _f(t.get("precision")), _f(t.get("recall")), _f(t.get("other_pairs")),
                 *[_f(_get(t, "recall_by_alteration", k)) for k in kinds]]
                for name, t, _ in dups]  # fmt: skip
        parts.append(Table(
            "Near-duplicate detection of injected altered copies (hash + embedding)",
            ["model", "products", "injected copies", "found", "precision", "recall",
             "other pairs", *[f"recall {k}" for k in kinds]],
            rows, " ".join(dict.fromkeys(s for _, _, s in dups)),
        ))  # fmt: skip
    return Section(key, title, parts, True)


# --- sections: recommendations, generation ---------------------------------------------------

RECS_COLUMNS = ["ndcg@10", "recall@20", "map@12", "coverage@10"]


def recs_section(inp: Inputs) -> Section:
    key, title = "recommendations", "Recommendations (simulated customers)"
    latest: dict[str, Doc] = {}
    for d in sorted(inp.recs, key=lambda d: d.path.name):
        latest[str(_meta(d).get("catalog", d.path.name))] = d
    if not latest:
        return _missing(key, title, "no recommendation eval (recs-*.json) in $SHOPLENS_HOME/evals/ "
                                    "(run `shoplens recommend eval`)")  # fmt: skip
    parts: list[Any] = [Text(
        "All customer data here is SIMULATED: customers, sessions and events come from the "
        "shoplens simulator, not from real shoppers. Each customer's last events are held "
        "out; models never return products already in the customer's history. Cold-start: "
        "customers with a held-out product that has no training events.")]
    for catalog, d in latest.items():
        m = _meta(d)
        for s in d.data.get("settings") or []:
            sim, split, results = s.get("simulator") or {}, s.get("split") or {}, s.get("results") or {}
            names = list(results)
            rows = [[n, *[_f(r.get(c), 4) for c in RECS_COLUMNS],
                     _f(_get(r, "cold_start_items", "ndcg@10"), 4),
                     _f(_get(r, "cold_start_items", "recall@20"), 4),
                     _f(_get(s, "ratios_vs_als", n, "ndcg@10"), 2)]
                    for n, r in results.items()]  # fmt: skip
            source = (
                f"Source: {d.shown} ({m.get('date', NA)}, commit {_commit(m)}, "
                f"{m.get('hardware', NA)}). Settings: catalogue {catalog} ({_f(m.get('items'))} "
                f"products, image embeddings {model_label(str(m.get('encoder', NA)))}), "
                f"{_f(sim.get('n_customers', m.get('customers')))} SIMULATED customers, preset "
                f"{s.get('preset', NA)} (taste_strength {sim.get('taste_strength', NA)}, "
                f"{sim.get('days', NA)} days), seed {m.get('seed', NA)}; last "
                f"{split.get('holdout_last_events', NA)} events held out, "
                f"{_f(split.get('customers'))} customers evaluated, "
                f"{_f(split.get('customers_with_cold_relevant'))} in the cold-start slice."
            )
            series = {
                "NDCG@10": [_get(results, n, "ndcg@10") for n in names],
                "cold-start NDCG@10": [_get(results, n, "cold_start_items", "ndcg@10") for n in names],
            }
            plot = plots.grouped_bars(f"preset {s.get('preset')}: NDCG@10 per model", names,
                                      series, "NDCG@10", digits=4)  # fmt: skip
            parts.append(Sub(f"{catalog}, preset {s.get('preset', NA)} (simulated)", [
                Table(f"Recommenders on simulated customers, {catalog}, preset {s.get('preset')}",
                      ["model", "NDCG@10", "Recall@20", "MAP@12", "coverage@10",
                       "cold-start NDCG@10", "cold-start Recall@20", "NDCG@10 / ALS"],
                      rows, source),
                Figure(plot, "NDCG@10 overall and on the cold-start slice per recommender "
                             "(simulated customers); data and sources: the table above."),
            ]))  # fmt: skip
    return Section(key, title, parts, True)


def generation_section(inp: Inputs) -> Section:
    """Generation evals (``gen-*.json``): their numbers, until a dedicated layout exists."""
    key, title = "generation", "Generation"
    if not inp.generation:
        return _missing(key, title, "no generation runs found",
                        "Not available yet (no generation runs found). Generation evals "
                        "written as $SHOPLENS_HOME/evals/gen-*.json appear here.")  # fmt: skip
    from shoplens.training.tracking import flatten

    parts: list[Any] = []
    for d in sorted(inp.generation, key=lambda d: d.path.name):
        m = _meta(d)
        body = flatten({k: v for k, v in d.data.items() if k != "meta"})
        rows = [[k, _f(v, 4)] for k, v in body.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]  # fmt: skip
        settings = ", ".join(f"{k} {_f(v)}" for k, v in m.items()
                             if k not in ("date", "commit", "machine", "json")
                             and not isinstance(v, dict))  # fmt: skip
        parts.append(Table(
            f"Generation eval {d.path.stem}", ["metric", "value"], rows,
            f"Source: {d.shown} ({m.get('date', NA)}, commit {_commit(m)}). "
            f"Settings: {settings or NA}.",
        ))  # fmt: skip
    return Section(key, title, parts, True)


# --- sections: training, benchmarks, samples --------------------------------------------------


def training_section(inp: Inputs) -> Section:
    key, title = "training", "Training curves"
    if not inp.training:
        return _missing(key, title, f"no training runs with per-epoch metrics ({inp.tracking})")
    runs = inp.training
    source = (f"Source: {inp.tracking}; runs " + ", ".join(
        f"{r.name} = {r.run_id[:8]} ({r.experiment}, commit {r.commit})" for r in runs) + ".")
    rows = []
    for r in runs:
        epochs = max((p[0] for c in [*r.loss.values(), *r.quality.values()] for p in c), default=None)
        last_loss = next(iter(r.loss.values()), [])
        quality = ", ".join(f"{k} {v[-1][1]:.3f}" for k, v in r.quality.items() if v)
        rows.append([r.name, r.model, r.status, r.started, _v(epochs),
                     _f(last_loss[-1][1]) if last_loss else NA, quality or NA])  # fmt: skip
    p = [("data.source", "data"), ("data.held_out", "held-out classes"), ("train.epochs", "epochs"),
         ("train.batch_size", "batch size"), ("train.lr", "learning rate"),
         ("train.schedule", "schedule"), ("train.precision", "precision"), ("train.seed", "seed")]
    settings = [[r.name, *[_v(r.params.get(k, NA)) for k, _ in p]] for r in runs]
    parts: list[Any] = [
        Text(f"The {len(runs)} newest training runs with per-epoch metrics, logged to MLflow "
             "by the training loop (train/*: means over the epoch; eval/*: validation split)."),
        Table("Training runs: final epoch", ["run", "model", "status", "started", "epochs",
              "final train loss", "final metrics"], rows, source),
        Table("Training run settings", ["run", *[n for _, n in p]], settings, source),
    ]  # fmt: skip
    for r in runs:
        if r.loss or r.quality:
            plot = plots.training_curves(r.name, r.loss, r.quality)
            parts.append(Figure(plot, f"Training curves of {r.name} ({r.model}; MLflow run "
                                      f"{r.run_id[:8]}, started {r.started}, {r.status})."))
    return Section(key, title, parts, True)


RECALL_RE = re.compile(r"recall(@\d+|_?at_?\d+|\d+)?", re.I)
QPS_RE = re.compile(r"qps|queries_per_s(ec(ond)?)?", re.I)
PCT_RE = re.compile(r"(latency_)?p\d+(\.\d+)?(_?ms|_?s)?", re.I)
NAME_KEYS = ("endpoint", "route", "index", "factory", "name", "method", "backend", "config")


def _records(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every JSON object in ``obj`` with its key path."""
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    if isinstance(obj, dict):
        out.append((path, obj))
        for k, v in obj.items():
            out += _records(v, (*path, str(k)))
    elif isinstance(obj, list):
        for v in obj:
            out += _records(v, path)
    return out


def _number_key(d: dict[str, Any], pattern: re.Pattern[str]) -> str | None:
    return next((k for k, v in d.items() if pattern.fullmatch(k) and isinstance(v, (int, float))
                 and not isinstance(v, bool)), None)  # fmt: skip


def _name(path: tuple[str, ...], d: dict[str, Any]) -> str:
    named = [str(d[k]) for k in NAME_KEYS if isinstance(d.get(k), str)]
    return named[0] if named else (path[-1] if path else "results")


def _bench_source(doc: Doc) -> str:
    m = _meta(doc)
    settings = ", ".join(f"{k} {_f(v)}" for k, v in m.items()
                         if k not in ("date", "commit", "machine") and not isinstance(v, dict))
    hw = f", {_hardware(m['machine'])}" if "machine" in m else ""
    return (f"Source: {doc.shown} ({m.get('date', NA)}, commit {_commit(m)}{hw}). "
            f"Settings: {settings or 'as recorded in the file'}.")  # fmt: skip


def _ann_part(doc: Doc) -> list[Any]:
    curves: dict[str, list[tuple[float, float]]] = {}
    rows, recall_name, extra = [], "recall", list[str]()
    recs = []
    for path, d in _records(doc.data):
        rk, qk = _number_key(d, RECALL_RE), _number_key(d, QPS_RE)
        if rk and qk:
            recs.append((path, d, rk, qk))
            extra += [k for k, v in d.items() if k not in (rk, qk) and k not in NAME_KEYS
                      and isinstance(v, (int, float, str)) and k not in extra]  # fmt: skip
    for path, d, rk, qk in recs:
        name, recall_name = _name(path, d), rk
        curves.setdefault(name, []).append((float(d[rk]), float(d[qk])))
        rows.append([name, _f(d[rk]), _f(float(d[qk]), 0), *[_f(d.get(k)) for k in extra[:6]]])
    if not rows:
        return []
    plot = plots.recall_qps(f"{recall_name} against QPS", curves, recall_name)
    source = _bench_source(doc)
    return [Table(f"ANN {recall_name} and throughput ({doc.path.name})",
                  ["index", recall_name, "QPS", *extra[:6]], rows, source),
            Figure(plot, f"Queries per second against {recall_name} per index (up and to the "
                         f"right is better). {source}")]  # fmt: skip


def _latency_part(doc: Doc) -> list[Any]:
    samples: dict[str, list[float]] = {}
    pct: dict[str, dict[str, float]] = {}
    for path, d in _records(doc.data):
        keys = [k for k in d if PCT_RE.fullmatch(k) and isinstance(d[k], (int, float))]
        raw = [k for k, v in d.items() if ("latenc" in k.lower() or "samples" in k.lower())
               and isinstance(v, list) and len(v) >= 5
               and all(isinstance(x, (int, float)) for x in v)]  # fmt: skip
        if keys:
            pct[_name(path, d)] = {k: float(d[k]) for k in keys}
        if raw:
            samples[_name(path, d)] = [float(x) for x in d[raw[0]]]
    if not pct and not samples:
        return []
    unit = "s" if any(k.endswith("_s") for p in pct.values() for k in p) else "ms"
    plot = plots.latency(f"request latency ({doc.path.name})", samples, pct, unit)
    source = _bench_source(doc)
    parts: list[Any] = []
    if pct:
        cols = sorted({k for p in pct.values() for k in p}, key=plots._percentile_order)
        rows = [[n, *[_f(p.get(k), 1) for k in cols]] for n, p in pct.items()]
        parts.append(Table(f"Latency percentiles ({doc.path.name})", ["endpoint", *cols], rows, source))
    parts.append(Figure(plot, f"Latency distribution per endpoint ({unit}). {source}"))
    return parts


def bench_section(inp: Inputs) -> Section:
    key, title = "benchmarks", "Benchmarks: ANN recall/QPS and latency"
    ann = [p for d in inp.bench for p in _ann_part(d)]
    lat = [p for d in inp.bench for p in _latency_part(d)]
    where = inp.bench_dir
    parts: list[Any] = [
        Sub("ANN recall and QPS", ann or [Text(
            f"Not measured yet (no recall/QPS results in {where / 'ann.json'}).", missing=True)]),
        Sub("Request latency", lat or [Text(
            f"Not measured yet (no latency results in {where / 'http.json'}).", missing=True)]),
    ]  # fmt: skip
    gaps = [n for n, got in (("ANN recall/QPS", ann), ("latency", lat)) if not got]
    note = f"{' and '.join(gaps)} not measured yet" if gaps else ""
    return Section(key, title, parts, bool(ann or lat), note)


GRID_ALT = {
    "results_grid": "Demo search results on the Fashion-MNIST catalogue: each row is one query "
    "(first column: a photo, a photo combined with a text, a text, or a catalogue product), "
    "followed by its top results, each labelled with its category and similarity score.",
}


def samples_section(inp: Inputs, max_images: int = 6) -> Section:
    key, title = "samples", "Sample grids"
    if not inp.images:
        return _missing(key, title, "no sample grids in docs/img/")
    parts: list[Any] = []
    for path in inp.images[:max_images]:
        side = path.with_suffix(".txt")
        alt = (side.read_text(encoding="utf-8").strip() if side.is_file() else "") or GRID_ALT.get(
            path.stem, f"Sample image {path.stem.replace('_', ' ')}")
        when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
        parts.append(Figure(plots.image_file(path, alt),
                            f"{path.stem.replace('_', ' ')}: {path} ({when}; downscaled)."))
    return Section(key, title, parts, True)


# --- sections: overview, data and settings, what is simulated --------------------------------

HEADLINE = (
    ("accuracy", "accuracy"), ("knn_accuracy", "5-NN accuracy"),
    ("text_to_image_r1", "R@1 text→image"), ("zero_shot_weighted_f1", "zero-shot weighted F1"),
    ("held_out_only", "held-out accuracy (held-out classes only)"),
    ("aug_r1", "altered-copy R@1"),
)  # fmt: skip


def overview_section(inp: Inputs, sections: list[Section]) -> Section:
    """Headline figures of every model (newest value of each), and what the report lacks."""
    by_model: dict[str, list[Doc]] = {}
    for d in sorted(inp.model_evals, key=_order):
        by_model.setdefault(str(_meta(d).get("model")), []).append(d)
    parts: list[Any] = [Text(
        "Every number in this report is read from stored run results (eval JSON files, "
        "MLflow runs, benchmark files); each table names its source, date, commit and "
        "settings. Regenerate with `shoplens report`.")]
    if by_model:
        rows, used = [], list[Doc]()
        for docs in by_model.values():
            row = [_label(docs[-1])]
            for k, _ in HEADLINE:
                hit = next((d for d in reversed(docs) if _get(d.data, "headline", k) is not None), None)
                row.append(_f(_get(hit.data, "headline", k)) if hit else NA)
                if hit and hit not in used:
                    used.append(hit)
            rows.append(row)
        parts.append(Table("Headline figures per model (Fashion-MNIST test split)",
                           ["model", *[n for _, n in HEADLINE]], rows, _sources(used)))  # fmt: skip
    lacking = [f"{s.title}: {s.note}" for s in sections if s.note]
    if lacking:
        parts += [Text("Not in this report yet:"), Bullets(lacking)]
    return Section("summary", "Summary", parts, bool(by_model))


def data_section(inp: Inputs) -> Section:
    key, title = "data", "Data and settings"
    parts: list[Any] = [Text(f"Results read from SHOPLENS_HOME {inp.home}; training runs from "
                             f"{inp.tracking or NA}.")]  # fmt: skip
    if inp.model_evals:
        rows = []
        for d in sorted(inp.model_evals, key=_order):
            m = _meta(d)
            rows.append([_label(d), str(m.get("model", NA)), str(m.get("data_description", NA)),
                         _f(m.get("seed")), _f(m.get("tasks")), _f(m.get("held_out")),
                         _f(m.get("templates")), f"{_f(m.get('eval_s'), 0)} s",
                         _hardware(m.get("machine")), str(m.get("date", NA)), _commit(m),
                         d.shown])  # fmt: skip
        parts.append(Table(
            "Model evaluations read (all runs, oldest first)",
            ["model", "spec", "data", "seed", "tasks", "held-out classes", "prompt templates",
             "eval time", "hardware", "date", "commit", "file"],
            rows, "Source: the meta block of each eval JSON file listed.",
        ))  # fmt: skip
    for d in inp.foundation:
        m = _meta(d)
        rows = [[d.shown, str(m.get("catalog", NA)), _f(m.get("products")), _f(m.get("train")),
                 _f(m.get("test")), _f(m.get("encoders")), str(m.get("text_encoder", NA)),
                 _f(m.get("n_aug")), _f(m.get("seed")), _hardware(m.get("machine"))]]  # fmt: skip
        parts.append(Table(
            "Foundation evaluation settings", ["file", "catalogue", "products", "train", "test",
            "image encoders", "text encoder", "altered copies", "seed", "hardware"], rows,
            _foundation_source(d)))  # fmt: skip
    sim_keys = ("n_customers", "days", "sessions_per_customer", "events_per_session",
                "taste_strength", "category_concentration", "popularity_bias", "new_item_share",
                "outfit_rate", "seed")  # fmt: skip
    for d in inp.recs:
        rows = [[str(s.get("preset")), *[_v(_get(s, "simulator", k)) for k in sim_keys],
                 _f(_get(s, "simulation", "events"))] for s in d.data.get("settings") or []]
        m = _meta(d)
        parts.append(Table(
            f"Customer simulator settings ({d.path.name})",
            ["preset", "customers", *[k.replace("_", " ") for k in sim_keys[1:]],
             "simulated events"], rows,
            f"Source: {d.shown} ({m.get('date', NA)}, commit {_commit(m)}). Settings: "
            f"catalogue {m.get('catalog', NA)}, {_f(m.get('items'))} products.",
        ))  # fmt: skip
    if inp.problems:
        parts += [Text("Inputs skipped:"), Bullets(list(inp.problems))]
    return Section(key, title, parts, bool(inp.model_evals or inp.foundation or inp.recs))


def simulated_section(inp: Inputs) -> Section:
    items = []
    for d in inp.recs:
        for s in d.data.get("settings") or []:
            sim = s.get("simulation") or {}
            items.append(
                f"All recommendation results ({d.path.name}, preset {s.get('preset')}): "
                f"{_f(sim.get('events'))} events of {_f(sim.get('customers'))} customers, all "
                f"simulated ({sim.get('note') or 'generated by shoplens.personalize.simulate'})."
            )
    if not items:
        items.append("All recommendation results, when present, come from simulated customers "
                     "(none found yet).")  # fmt: skip
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


SECTION_BUILDERS = (
    classification_section, retrieval_section, text_section, robustness_section,
    recs_section, generation_section, training_section, bench_section, samples_section,
    data_section, simulated_section,
)  # fmt: skip
