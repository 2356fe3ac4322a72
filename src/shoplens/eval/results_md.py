"""``docs/RESULTS.md``: the foundation report and the appended "## Trained models" table.

The foundation writer regenerates the whole file but keeps the trained-models section;
each ``run_model_eval`` appends one row to that section and leaves everything else as it
is. Files are replaced atomically (temp file, fsync, rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoplens.config import atomic_write

TRAINED_HEADING = "## Trained models"
IN_DOMAIN_NOTE = (
    "On Fashion-MNIST the texts are derived from the class labels, so text metrics are in-domain."
)
COLUMNS = (
    "date",
    "model",
    "data",
    "seed",
    "accuracy",
    "5-NN acc",
    "R@1 text→image",
    "zero-shot wF1",
    "held-out acc (all / held-out only)",
    "aug R@1",
    "eval time",
    "hardware",
)
SECTION_INTRO = (
    "Appended by `shoplens eval --model SPEC`, one row per run; earlier rows are kept. The "
    "full figures of a run (per class, confusion matrices, skipped tasks and why) are in its "
    "JSON file under `$SHOPLENS_HOME/evals/` and in MLflow (experiment `shoplens-eval`). "
    "accuracy: classifier head, else a linear probe on train embeddings; 5-NN acc: test "
    "images query the train images; R@1 text→image: share of class-prompt queries whose top "
    "test image shows that class; zero-shot wF1: weighted F1 of the argmax over prompt-"
    "ensemble class embeddings; held-out: zero-shot accuracy on the test images of the "
    "classes the model was trained without, choosing among all classes / among the held-out "
    "ones only; aug R@1: altered copies (crop, noise, brightness, blur-jpeg) whose top hit "
    "is the original. `-`: the model cannot do the task (or it was not run)."
)


def write_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`shoplens.config.atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def split_section(text: str, heading: str = TRAINED_HEADING) -> tuple[str, str, str]:
    """(before, section, after): the section runs from its heading line to the next
    ``#``/``##`` heading or the end. ``section`` is "" when the heading is absent."""
    lines = text.splitlines(keepends=True)
    start = next((n for n, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return text, "", ""
    end = next(
        (n for n in range(start + 1, len(lines)) if lines[n].startswith(("# ", "## "))),
        len(lines),
    )
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def _join(*parts: str) -> str:
    """Non-empty parts separated by one blank line, ending with a newline."""
    return "\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"


#: Sections other commands append; regenerating the foundation report keeps them.
RECS_HEADING = "## Recommendations (simulated customers)"
GEN_HEADING = "## Generation (diffusion)"
KEPT_SECTIONS = (TRAINED_HEADING, RECS_HEADING, GEN_HEADING)


def write_foundation_report(out: Path, markdown: str) -> None:
    """Write the regenerated foundation report, keeping the sections of KEPT_SECTIONS."""
    existing = Path(out).read_text(encoding="utf-8") if Path(out).is_file() else ""
    kept = [split_section(existing, heading)[1] for heading in KEPT_SECTIONS]
    write_atomic(Path(out), _join(markdown, *kept))


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table_line(cells: list[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table_header() -> list[str]:
    return [_table_line(list(COLUMNS)), "|" + "|".join("---" for _ in COLUMNS) + "|"]


def new_section() -> str:
    """The trained-models heading, its explanation and an empty table."""
    return _join(TRAINED_HEADING, SECTION_INTRO, IN_DOMAIN_NOTE, "\n".join(_table_header()))


def append_trained_row(out: Path, cells: list[str]) -> None:
    """Append one row to the trained-models table of ``out`` (section created if absent)."""
    out = Path(out)
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    before, section, after = split_section(text)
    lines = (section or new_section()).rstrip("\n").split("\n")
    table = [n for n, line in enumerate(lines) if line.startswith("|")]
    row = _table_line(cells)
    if table:
        lines.insert(table[-1] + 1, row)
    else:
        lines += ["", *_table_header(), row]
    write_atomic(out, _join(before, "\n".join(lines), after))


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a row shows (None where a task was skipped or not run)."""
    t = results["tasks"]
    return {
        "accuracy": _get(t, "classification", "accuracy"),
        "classification_method": _get(t, "classification", "method"),
        "classification_tta": _get(t, "classification", "tta"),
        "knn_accuracy": _get(t, "image_retrieval", "knn_accuracy"),
        "text_to_image_r1": _get(t, "text_to_image", "by_label", "recall_at_k", "1"),
        "zero_shot_weighted_f1": _get(t, "zero_shot", "weighted_f1"),
        "held_out_all": _get(t, "held_out", "all_classes", "accuracy"),
        "held_out_only": _get(t, "held_out", "held_out_only", "accuracy"),
        "held_out_classes": _get(t, "held_out", "held_out"),
        "aug_r1": _get(t, "robustness", "r_at_1", "overall"),
    }


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_accuracy(x: float | None) -> str:
    """Accuracy at 4 decimals: on 10,000 test images one image is 0.0001 (0.9399 would
    print as 0.940 at 3)."""
    return "-" if x is None else f"{x:.4f}"


def hardware(machine: dict[str, Any]) -> str:
    """e.g. "2 CPU cores (AMD EPYC)" plus the GPU when there is one."""
    gpu = machine.get("gpu")
    return f"{machine['nproc']} CPU cores ({machine['cpu']})" + (f", GPU {gpu}" if gpu else "")


def held_out_text(h: dict[str, Any], *, names: bool = True) -> str:
    """Held-out accuracy among all classes / among the held-out ones, e.g. "0.41 / 0.80"."""
    if h["held_out_all"] is None:
        return "-"
    text = f"{fmt(h['held_out_all'])} / {fmt(h['held_out_only'])}"
    return text + (f" ({', '.join(h['held_out_classes'])})" if names else "")


def trained_row(results: dict[str, Any]) -> list[str]:
    """The cells of one trained-models row, in :data:`COLUMNS` order."""
    m, h = results["meta"], headline(results)
    # 4 places: one test image in 10,000 (targets such as 0.94 sit at that precision)
    acc = fmt_accuracy(h["accuracy"])
    if h["accuracy"] is not None:
        tta = h["classification_tta"]
        head = str(h["classification_method"] or "").startswith("classifier head")
        acc += (f" (head, {tta} TTA)" if tta else " (head)") if head else " (probe)"
    return [
        m["date"],
        f"`{m['model']}`",
        m["data_description"],
        str(m["seed"]),
        acc,
        fmt(h["knn_accuracy"]),
        fmt(h["text_to_image_r1"]),
        fmt(h["zero_shot_weighted_f1"]),
        held_out_text(h),
        fmt(h["aug_r1"]),
        f"{m['eval_s']:.0f} s",
        hardware(m["machine"]),
    ]
