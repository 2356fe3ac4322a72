"""``shoplens generate eval`` output: sample grids, the JSON file, the RESULTS.md section.

:func:`run_generate_eval` runs :func:`~shoplens.generate.fidelity_eval.evaluate_generator`,
writes the JSON to ``$SHOPLENS_HOME/evals/generate-*.json``, the grids to
``docs/img/generate-*.png`` and (optionally) replaces the "## Generation (diffusion)"
section of docs/RESULTS.md.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shoplens.config import atomic_write, shoplens_home
from shoplens.eval.report import json_default
from shoplens.eval.results_md import GEN_HEADING as HEADING

if TYPE_CHECKING:
    from shoplens.generate.pipeline import Generator

Say = Callable[[str], None]
GRID_COLS = 8  # samples per category in the class grid
CUSTOMER_ROWS = 4
NEAREST_PAIRS = 8


def _blank(like: Image.Image) -> Image.Image:
    return Image.new("RGB", like.size, (255, 255, 255))


def save_png(img: Image.Image, path: Path) -> str:
    """Write a grid PNG atomically (8-bit grayscale when the image is gray)."""
    arr = np.asarray(img.convert("RGB"))
    gray = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    buf = io.BytesIO()
    (img.convert("L") if gray else img.convert("RGB")).save(buf, format="PNG", optimize=True)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return str(path)


def customer_rows(customers: dict[str, Any], history: int = 3) -> list[list[Image.Image]]:
    """Grid rows per shown customer: recent items | with their taste | without it."""
    from shoplens.catalog.store import Catalog

    rows: list[list[Image.Image]] = []
    with Catalog.open(customers["catalog"]) as cat:
        for cid, imgs in list(customers["samples"].items())[:CUSTOMER_ROWS]:
            blank = _blank(imgs[0])
            skus = customers["recent"][cid][:history]
            hist = [cat.load_image(cat.get(s)).resize(blank.size) for s in skus]
            hist += [blank] * (history - len(hist))
            half = len(imgs) // 2
            rows.append([*hist, blank, *imgs[:half], blank, *imgs[half:]])
    return rows


def write_grids(
    folder: Path,
    *,
    classes: Sequence[str],
    samples: Sequence[Image.Image],
    per_class: int,
    edits: dict[str, list[list[Image.Image]]],
    customers: dict[str, Any],
    nearest: tuple[tuple[np.ndarray, np.ndarray], np.ndarray] | None,
) -> dict[str, str]:
    """Save the sample grids as ``folder/generate-*.png``; returns name -> path."""
    from shoplens.generate.pipeline import make_grid

    cols = min(GRID_COLS, per_class)
    grids: dict[str, list[list[Image.Image]]] = {
        "classes": [[samples[c * per_class + i] for i in range(cols)] for c in range(len(classes))],
        **edits,
    }
    if customers.get("samples"):
        grids["customers"] = customer_rows(customers)
    if nearest is not None:
        (dist, idx), train_images = nearest
        pairs = [
            [samples[int(i)], Image.fromarray(train_images[int(idx[i])]).convert("RGB")]
            for i in np.argsort(dist, kind="stable")[:NEAREST_PAIRS]
        ]
        grids["nearest"] = [
            [im for pair in pairs[j : j + 4] for im in pair] for j in range(0, len(pairs), 4)
        ]
    out: dict[str, str] = {}
    for name, rows in grids.items():
        if rows:
            tiles = [im for row in rows for im in row]
            grid = make_grid(tiles, cols=len(rows[0]))
            out[name] = save_png(grid, folder / f"generate-{name}.png")
    return out


# --- JSON + RESULTS.md --------------------------------------------------------------------


def read_speed(path: Path | None) -> dict[str, Any] | None:
    """The sampling-speed benchmark (``docs/bench/generate.json``) if present."""
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def speed_ratio(bench: dict[str, Any] | None) -> float | None:
    """The shoplens / plain-diffusers time ratio of ``benchmarks/bench_generate.py``'s JSON
    (``ratio_median``; else the first numeric ``*ratio*`` key)."""
    if not bench:
        return None
    if isinstance(bench.get("ratio_median"), int | float):
        return float(bench["ratio_median"])
    stack: list[Any] = [bench]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            for key, value in node.items():
                if "ratio" in str(key) and isinstance(value, int | float):
                    return float(value)
            stack += [v for v in node.values() if isinstance(v, dict | list)]
        elif isinstance(node, list):
            stack += node
    return None


def speed_summary(path: Path | None) -> dict[str, Any]:
    """``{"bench", "ratio", "setup"}`` of the sampling-speed benchmark (None values if absent)."""
    bench = read_speed(path)
    setup = bench.get("setup") if bench else None
    return {
        "bench": str(path) if bench else None,
        "ratio": speed_ratio(bench),
        "setup": setup if isinstance(setup, dict) else None,
    }


def training_provenance(model_dir: Path | None) -> dict[str, Any] | None:
    """How the model was trained, from the run folder around ``model_dir`` (``config.yaml``,
    ``metrics.json``; a registered model's MLflow artefacts have the same layout) and the
    MLflow run of that name: steps, batch, precision, warm start and minutes (MLflow run
    start to end). None when ``model_dir`` is not inside a run folder."""
    import yaml

    if model_dir is None:
        return None
    run_dir = Path(model_dir).parent
    cfg_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.json"
    if not cfg_path.is_file() or not metrics_path.is_file():
        return None
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    train, tracking = cfg.get("train") or {}, cfg.get("tracking") or {}
    run_name = str(cfg.get("run_name") or run_dir.name)
    return {
        "run_name": run_name,
        "steps": metrics.get("steps"),
        "batch_size": train.get("batch_size"),
        "precision": train.get("precision"),
        "max_minutes": train.get("max_minutes"),
        "init_from": cfg.get("init_from"),
        "minutes": _run_minutes(str(tracking.get("experiment") or "shoplens"), run_name),
    }


def _run_minutes(experiment: str, run_name: str) -> float | None:
    """Start-to-end minutes of the newest finished MLflow run ``run_name`` (None if none)."""
    from shoplens.config import tracking_uri
    from shoplens.training.tracking import mlflow_client

    try:
        client = mlflow_client(tracking_uri())
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.mlflow.runName = '{run_name}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except Exception:  # provenance is best effort: no MLflow, no minutes
        return None
    if not runs or runs[0].info.end_time is None:
        return None
    return round((runs[0].info.end_time - runs[0].info.start_time) / 60_000, 1)


def training_text(t: dict[str, Any] | None) -> str:
    """One sentence on how the model was trained (empty when unknown)."""
    if not t:
        return ""
    minutes = f"{t['minutes']:g} min" if t.get("minutes") is not None else "time not recorded"
    start = (
        f"warm-started (`init_from`) from `{t['init_from']}`, whose own training is not counted"
        if t.get("init_from")
        else "one run from scratch (no warm start)"
    )
    budget = f", stopping at train.max_minutes {t['max_minutes']:g}" if t.get("max_minutes") else ""
    return (
        f"Training of this model: run `{t['run_name']}`, {start}: {t['steps']} steps at batch "
        f"{t['batch_size']}, {t['precision']} on the CPU{budget}; {minutes} from the MLflow "
        "run's start to its end (embedding the conditioning images included)."
    )


def run_generate_eval(
    generator: Generator,
    *,
    model_spec: str,
    classifier: str,
    features: str | None = None,
    img_dir: Path | None = Path("docs/img"),
    results_md: Path | None = None,
    bench_json: Path | None = Path("docs/bench/generate.json"),
    say: Say = lambda _: None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run every fidelity check of ``generator``; write the JSON to
    ``$SHOPLENS_HOME/evals/generate-*.json`` (+ the RESULTS.md section)."""
    from shoplens.eval.report import cpu_cores, git_commit, machine_info
    from shoplens.generate.fidelity_eval import evaluate_generator

    t0 = time.perf_counter()
    out = evaluate_generator(
        generator, classifier=classifier, features=features, img_dir=img_dir, say=say, **kwargs
    )
    machine = machine_info()
    out["speed"] = speed_summary(bench_json)
    out["training"] = training_provenance(generator.folder)
    out["meta"] = {
        "model_spec": model_spec,
        "cond_encoder": generator.cond_encoder,
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "hardware": f"{platform.machine()}, {cpu_cores()} CPU cores ({machine.get('cpu', '?')})",
        "total_s": round(time.perf_counter() - t0, 1),
    }
    path = shoplens_home() / "evals" / f"generate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out["meta"]["json"] = str(path)
    if results_md is not None:
        out["meta"]["results_md"] = str(results_md)
    with atomic_write(path) as f:
        f.write(json.dumps(out, indent=2, default=json_default).encode())
    if results_md is not None:
        update_results_md(Path(results_md), out)
    return out


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _g(x: float | None) -> str:
    """3 significant digits: FIDs in a tower's own units can be large or small."""
    return "n/a" if x is None else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def share_interval(k: int, n: int) -> str:
    """Wilson 95% interval of a share ``k / n``, e.g. "95% CI 0.6-2.6%" ("" when n = 0)."""
    from scipy.stats import binomtest

    if n <= 0:
        return ""
    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson")
    return f"95% CI {100 * ci.low:.1f}-{100 * ci.high:.1f}%"


def _p(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def summary_lines(out: dict[str, Any]) -> list[str]:
    """Human summary of one evaluation."""
    s, fid, pr = out["settings"], out["fid"], out["precision_recall"]
    acc, mem = out["conditional_accuracy"], out["memorisation"]
    lines = [
        f"model {out['model']}: {out['samples']['n']} samples ({s['n_per_class']} per category), "
        f"guidance {s['guidance']:g}, {s['steps']} {s['scheduler']} steps, "
        f"{out['samples']['images_per_s']:.1f} images/s",
        f"features: {out['features']} ({out['feature_note'].split(':')[0]})",
        f"FID vs {fid['test_images']} test images: {_g(fid['value'])} (real floor: "
        f"{fid['real_floor_train_images']} train images {_g(fid['real_floor'])})",
        f"precision {_f(pr['precision'])}, recall {_f(pr['recall'])} (k={pr['k']}; train vs "
        f"test {_f(pr['real_floor']['precision'])} / {_f(pr['real_floor']['recall'])})",
        f"conditional accuracy {_f(acc['overall'])} (classifier {out['classifier']}, "
        f"{_f(out['classifier_test_accuracy'])} on real test images)",
    ]
    for g, v in out["fid"]["by_guidance"].items():
        lines.append(
            f"  guidance {g}: FID {_g(v['fid'])}, accuracy {_f(v['accuracy'])} "
            f"({v['samples']} samples)"
        )
    if out["prompt_accuracy"]:
        lines.append(f"text-prompt accuracy {_f(out['prompt_accuracy']['overall'])}")
    for view, m in mem.items():
        lines.append(
            f"memorised ({view}): {_pct(m['share'])} of {m['samples']} "
            f"(threshold {_f(m['threshold'], 4)})"
        )
    c = out["customers"]
    for name, r in (c.get("settings") or {}).items():
        lines.append(
            f"SIMULATED customers ({name}, {r['pairs']}): cosine to taste "
            f"{_f(r['mean_conditioned'])} conditioned vs {_f(r['mean_unconditioned'])} without, "
            f"higher for {_pct(r['share_conditioned_higher'])}, Wilcoxon p "
            f"{_p(r['wilcoxon_p_value'])}"
        )
    if "skipped" in c:
        lines.append(f"customer conditioning skipped: {c['skipped']}")
    lines.append(
        f"inpainting outside the mask identical: "
        f"{_pct(out['edits']['inpainting_outside_mask_identical'])}"
    )
    m = out.get("meta", {})
    if "json" in m:
        lines.append(
            f"report: {m['json']}"
            + (f" and {m['results_md']}" if "results_md" in m else "")
            + f" ({m['total_s']:.0f}s)"
        )
    return lines


def _rel(path: str, md: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), md.resolve().parent)).as_posix()


def speed_text(speed: dict[str, Any]) -> str:
    """The speed cell: ratio, benchmark file and what it measured."""
    if speed.get("ratio") is None:
        return "not measured here (`python benchmarks/bench_generate.py`)"
    setup = speed.get("setup") or {}
    what = ", ".join(f"{k} {setup[k]}" for k in ("model", "n", "steps", "guidance") if k in setup)
    return f"{speed['ratio']:.3f}x (`{speed['bench']}`" + (f": {what})" if what else ")")


def reproduce_command(out: dict[str, Any]) -> str:
    """The ``shoplens generate eval`` command line that reproduces ``out``."""
    s, m = out["settings"], out["meta"]
    flags = {
        "--model": m["model_spec"],
        "--classifier": out["classifier"],
        "--features": out["features"] if out["features"] != out["classifier"] else None,
        "--catalog": s.get("catalog"),
        "--n-per-class": s["n_per_class"],
        "--guidance": f"{s['guidance']:g}",
        "--steps": s["steps"],
        "--scheduler": s["scheduler"],
        "--seed": s["seed"],
        "--customers": s["customers"],
        "--per-customer": s["per_customer"],
        "--sweep-per-class": s["sweep_per_class"],
        "--prompt-per-class": s["prompt_per_class"],
    }
    parts = [f"{k} {shlex.quote(str(v))}" for k, v in flags.items() if v is not None]
    return "shoplens generate eval " + " ".join(parts) + " --results"


def markdown_section(out: dict[str, Any], md: Path) -> str:
    """The "## Generation (diffusion)" section for one evaluation (replaces the last one)."""
    s, fid, pr = out["settings"], out["fid"], out["precision_recall"]
    acc, mem, m = out["conditional_accuracy"], out["memorisation"], out["meta"]
    mf, mp = mem["features"], mem["pixels"]
    n, g = out["samples"]["n"], f"{s['guidance']:g}"
    lines = [
        HEADING,
        "",
        f"Fidelity checks of the diffusion model `{out['model']}` (`shoplens generate eval`). "
        f"**Features for FID, precision/recall and memorisation are {out['feature_note']}**: "
        f"`{out['features']}`. Conditional accuracy uses the trained classifier "
        f"`{out['classifier']}`. On Fashion-MNIST the texts (training captions and the "
        "prompts below) are derived from the class labels, so text conditioning is in-domain. "
        "Customer conditioning uses **SIMULATED customers** (no real customer data exists "
        "offline).",
        "",
        f"Measured {m['date']} on {m['hardware']}, commit {m['commit']}: {n} samples "
        f"({s['n_per_class']} per category), guidance {g}, {s['steps']} {s['scheduler']} "
        f"steps, seed {s['seed']}; {out['samples']['images_per_s']:.1f} images/s while "
        f"sampling; whole evaluation {m['total_s']:.0f} s. Real images: the Fashion-MNIST "
        f"test split ({out['data']['test_images']}) and train split "
        f"({out['data']['train_images']}).",
        "",
    ]
    training = training_text(out.get("training"))
    if training:
        lines += [training, ""]
    lines += [
        "| check | measured | target |",
        "|---|---|---|",
        f"| FID vs the {fid['test_images']} test images ({n} samples, own tower, not "
        f"Inception) | {_g(fid['value'])} (floor: {fid['real_floor_train_images']} real "
        f"train images vs test: {_g(fid['real_floor'])}) | lower is better |",
        f"| precision / recall (k={pr['k']}, {pr['fake']} samples vs {pr['real']} test "
        f"images) | {_f(pr['precision'])} / {_f(pr['recall'])} (train images vs test: "
        f"{_f(pr['real_floor']['precision'])} / {_f(pr['real_floor']['recall'])}) | - |",
        f"| conditional accuracy at guidance {g} (classifier labels = requested category) "
        f"| {_f(acc['overall'])} | >= 0.90 |",
        f"| the classifier's accuracy on the {out['data']['test_images']} real test images "
        f"(reference for the line above) | {_f(out['classifier_test_accuracy'])} | - |",
    ]
    if out["prompt_accuracy"]:
        pa = out["prompt_accuracy"]
        lines.append(
            f"| text-prompt accuracy at guidance {g} ({pa['samples']} samples, prompts like "
            f'"{next(iter(pa["prompts"].values()))}") | {_f(pa["overall"])} | - |'
        )
    lines += [
        f"| memorised share, tower features (threshold {_f(mf['threshold'], 4)} = "
        f"{_pct(mf['quantile'])} quantile of {mf['calibration_images']} test images' "
        f"distance to their nearest of {mf['train_images']} train images) | "
        f"{_pct(mf['share'])} ({mf['flagged']} of {mf['samples']}; "
        f"{share_interval(mf['flagged'], mf['samples'])}) | < 1% |",
        f"| memorised share, pixel space (threshold {_f(mp['threshold'], 3)} from "
        f"{mp['calibration_images']} test images) | {_pct(mp['share'])} ({mp['flagged']} "
        f"of {mp['samples']}; {share_interval(mp['flagged'], mp['samples'])}) | < 1% |",
    ]
    c = out["customers"]
    for name, r in (c.get("settings") or {}).items():
        lines.append(
            f"| SIMULATED customers ({r['pairs']}, {name}, {c['per_customer']} images each): "
            f"cosine of samples to the customer's taste, with vs without it | "
            f"{_f(r['mean_conditioned'])} vs {_f(r['mean_unconditioned'])}; higher for "
            f"{_pct(r['share_conditioned_higher'])} of customers; Wilcoxon one-sided p = "
            f"{_p(r['wilcoxon_p_value'])} | conditioned closer |"
        )
    if "skipped" in c:
        lines.append(f"| customer conditioning | not run: {c['skipped']} | - |")
    e = out["edits"]
    lines.append(
        f"| inpainting: pixels outside the mask bit-identical ({e['inpainted_images']} images) "
        f"| {_pct(e['inpainting_outside_mask_identical'])} | 100% |"
    )
    lines.append(
        "| sampling time vs a plain diffusers loop on the same UNet | "
        + speed_text(out.get("speed") or {})
        + " | <= 1.1x |"
    )
    lines += [
        "",
        "Per category (conditional accuracy at guidance " + g + "):",
        "",
        "| " + " | ".join(acc["per_class"]) + " |",
        "|" + "---|" * len(acc["per_class"]),
        "| " + " | ".join(_f(v, 2) for v in acc["per_class"].values()) + " |",
    ]
    if fid["by_guidance"]:
        lines += [
            "",
            "By guidance scale (the first samples of each category, same seeds):",
            "",
            "| guidance | samples | FID | conditional accuracy |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['samples']} | {_g(v['fid'])} | {_f(v['accuracy'])} |"
            for k, v in fid["by_guidance"].items()
        ]
    captions = {
        "classes": f"one row per category at guidance {g}",
        "img2img": "image-to-image: a test image, then strengths "
        + ", ".join(f"{x:g}" for x in e["img2img_strengths"]),
        "inpainting": "inpainting: a test image, the mask (white = regenerated), three seeds",
        "customers": "SIMULATED customers, one per row: 3 recent items | with their taste | "
        "same seeds without it",
        "nearest": "the samples closest to a training image (feature space), each beside "
        "that training image",
    }
    if out["grids"]:
        lines.append("")
        for name, path in out["grids"].items():
            lines += [
                f"![{captions.get(name, name)}]({_rel(path, md)})",
                f"*{captions.get(name, name)}*",
                "",
            ]
    lines += [
        "Reproduce (after `shoplens train --config fmnist-diffusion`):",
        "",
        "```bash",
        reproduce_command(out),
        "```",
        "",
    ]
    return "\n".join(lines)


def update_results_md(path: Path, out: dict[str, Any]) -> None:
    """Replace (or append) the generation section of ``path``, keeping the rest."""
    from shoplens.eval.results_md import split_section, write_atomic

    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    before, section, after = split_section(text, HEADING)
    body = markdown_section(out, path)
    if not section:
        new = text.rstrip("\n") + "\n\n" + body + "\n"
    else:
        new = before + body + ("\n" + after if after else "\n")
    write_atomic(path, new)
