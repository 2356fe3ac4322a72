"""``shoplens report``: the HTML research report built from tiny stored runs.

One module-wide SHOPLENS_HOME holds a real model eval (``run_model_eval`` on synthetic
images with the test-tiny encoder), a real MLflow training run (``MlflowTracker``), and
minimal result files with the structure of the real ones (a CLIP-style eval, a
recommendation eval, a foundation eval, benchmark files, a sample grid).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shoplens.report.build import _is_numeric, build_report, model_label, report_command

HELD = ["Sandal", "Bag"]


# --- inputs -------------------------------------------------------------------------------


def _real_model_eval(home: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
    """``run_model_eval`` of test-tiny on 30 test / 40 train random images, with a head."""
    from shoplens.data.fashion_mnist import CLASSES
    from shoplens.eval import runner
    from shoplens.eval.context import EvalData

    rng = np.random.default_rng(0)

    def tiny_data(data: str, limit: int | None = None) -> EvalData:
        return EvalData(
            classes=CLASSES,
            test_images=runner.ArrayImages(rng.integers(0, 255, (30, 28, 28), dtype=np.uint8)),
            test_labels=np.arange(30) % 10,
            train_images=runner.ArrayImages(rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)),
            train_labels=np.arange(40) % 10,
            name=data,
        )

    def head(images: Sequence[Image.Image]) -> np.ndarray:
        return np.eye(10, dtype=np.float32)[np.arange(len(images)) % 10]  # (N, 10)

    mp.setattr(runner, "load_data", tiny_data)
    return runner.run_model_eval(
        "test-tiny",
        tasks=["classification", "image_retrieval", "robustness", "near_duplicates"],
        classifier=head,
        out=None,
        track=False,
        n_aug=8,
        dedupe_base=10,
        dedupe_copies=3,
    )


META = {
    "date": "2026-11-25 17:15 UTC",
    "seed": 0,
    "machine": {"nproc": 2, "cpu": "X", "commit": "abc1234"},
}


def _clip_eval() -> dict[str, Any]:
    """A text-capable model's eval, in the structure ``run_model_eval`` writes."""
    ranking = {
        "queries": 6,
        "gallery": 30,
        "recall_at_k": {"1": 0.8333, "5": 1.0, "10": 1.0},
        "precision_at_k": {"1": 0.8333, "5": 0.6, "10": 0.5},
        "ndcg_at_10": 0.71,
        "map": 0.64,
        "templates": ["a photo of a {c}"],
    }
    per_class = {c: {"precision": 0.5, "recall": 0.25, "f1": 0.3333, "support": 4} for c in HELD}
    held = {
        "candidates": 10,
        "chance_accuracy": 0.1,
        "accuracy": 0.0625,
        "weighted_f1": 0.05,
        "recall": {c: 0.0625 for c in HELD},
    }
    return {
        "meta": {
            **META,
            "model": "trained:/x/runs/tiny-clip/model",
            "data": "fashion-mnist",
            "data_description": "fashion-mnist test (30) vs train (40)",
            "eval_s": 1.0,
            "tasks": ["text_to_image", "zero_shot", "held_out"],
            "held_out": HELD,
            "templates": ["a photo of a {c}"],
            "mlflow_run_id": "f" * 32,
        },
        "tasks": {
            "text_to_image": {
                "by_label": ranking,
                "texts_from_labels": True,
                "captions": {"skipped": "no per-item captions"},
            },
            "zero_shot": {
                "n": 8,
                "accuracy": 0.4375,
                "macro_f1": 0.4121,
                "weighted_f1": 0.4242,
                "per_class": per_class,
                "classes": HELD,
                "confusion_matrix": [[1, 3], [2, 2]],
                "templates": ["{c}"],
            },
            "held_out": {
                "held_out": HELD,
                "images": 8,
                "all_classes": held,
                "held_out_only": {
                    **held,
                    "candidates": 2,
                    "chance_accuracy": 0.5,
                    "accuracy": 0.6875,
                },
                "predicted_as_seen_class": 0.9,
            },
        },
        "headline": {
            "accuracy": None,
            "knn_accuracy": None,
            "text_to_image_r1": 0.8333,
            "zero_shot_weighted_f1": 0.4242,
            "held_out_all": 0.0625,
            "held_out_only": 0.6875,
            "aug_r1": None,
        },
    }


def _recs_eval() -> dict[str, Any]:
    """A recommendation eval, in the structure ``run_recs_eval`` writes (two models)."""

    def result(ndcg: float, cold: float) -> dict[str, Any]:
        return {
            "ndcg@10": ndcg,
            "recall@20": 0.0412,
            "map@12": 0.0101,
            "coverage@10": 0.25,
            "cold_start_items": {"ndcg@10": cold, "recall@20": 0.02},
        }

    return {
        "meta": {
            "catalog": "tiny",
            "items": 80,
            "encoder": "test-tiny",
            "customers": 30,
            "seed": 0,
            "simulated": True,
            "date": "2026-11-25",
            "commit": "def5678",
            "hardware": "x86_64, 2 CPU cores",
        },
        "settings": [
            {
                "preset": "balanced",
                "simulated": True,
                "simulator": {"n_customers": 30, "days": 90.0, "taste_strength": 0.6, "seed": 0},
                "simulation": {
                    "simulated": True,
                    "events": 1452,
                    "customers": 30,
                    "note": "simulated data: generated by shoplens.personalize.simulate",
                },
                "split": {
                    "customers": 13,
                    "customers_with_cold_relevant": 3,
                    "holdout_last_events": 5,
                },
                "results": {"als": result(0.0123, 0.0), "fused": result(0.0456, 0.0321)},
                "ratios_vs_als": {"als": {"ndcg@10": 1.0}, "fused": {"ndcg@10": 3.7073}},
            }
        ],
    }


FOUNDATION = {
    "meta": {
        **META,
        "catalog": "fashion-mnist",
        "products": 70,
        "train": 40,
        "test": 30,
        "encoders": ["pixels"],
        "text_encoder": "minilm",
        "n_aug": 8,
    },
    "knn": {
        "pixels": {
            "accuracy": 0.7777,
            "k": 5,
            "queries": 30,
            "gallery": 40,
            "per_class": {"Bag": 0.6666},
        }
    },
    "text": {
        "k": 10,
        "text_encoder": "minilm",
        "mean_precision": 0.9191,
        "per_class": {"Bag": {"precision": 0.9191, "others": {}}},
    },
    "augmented": {
        "originals": 2,
        "queries": 8,
        "pixels": {
            "r_at_1": {"crop": 0.125, "noise": 1.0, "overall": 0.5678},
            "r_at_10": {"overall": 0.75},
        },
    },
    "dedupe": {
        "encoder": "pixels",
        "products": 12,
        "injected": 3,
        "injected_found": 2,
        "precision": 0.6667,
        "recall": 0.6667,
        "other_pairs": 1,
        "recall_by_alteration": {"crop": 0.5},
    },
}
ANN = {
    "meta": {"date": "2026-11-25", "commit": "0a1b2c3", "vectors": 10000, "dim": 64},
    "results": [
        {"index": "HNSW32", "ef_search": ef, "recall@10": r, "qps": q}
        for ef, r, q in ((16, 0.9123, 15000.0), (64, 0.9876, 6000.0))
    ]
    + [{"index": "Flat", "recall@10": 1.0, "qps": 900.0}],
}
HTTP = {
    "meta": {"date": "2026-11-25", "commit": "0a1b2c3", "requests": 40},
    "endpoints": [
        {
            "endpoint": "/v1/search",
            "p50_ms": 12.5,
            "p95_ms": 30.25,
            "p99_ms": 41.0,
            "samples_ms": [10.0 + i for i in range(40)],
        }
    ],
}


def _log_training_run(home: Path) -> str:
    """A real MLflow run with three epochs of per-epoch metrics, as the training loop logs."""
    from shoplens.training.tracking import MlflowTracker

    tracker = MlflowTracker(
        "tiny-train",
        run_name="tiny-run",
        tags={"shoplens.model": "tiny"},
        uri=f"sqlite:///{home / 'mlflow.db'}",
    )
    run_id = tracker.start({"train": {"epochs": 3, "lr": 0.01}, "data": {"source": "synthetic"}})
    for epoch, (loss, acc) in enumerate([(1.25, 0.5), (0.75, 0.625), (0.5, 0.875)], start=1):
        tracker.log_metrics({"train_step/loss": loss + 0.1, "train/lr": 0.01}, step=epoch * 10 - 5)
        metrics = {"epoch": epoch, "train/loss": loss, "eval/val_accuracy": acc}
        tracker.log_metrics(metrics, step=epoch * 10)
    tracker.end()
    return run_id


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every kind of input in one home, and the report built from them."""
    root = tmp_path_factory.mktemp("report")
    home, docs = root / "home", root / "docs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPLENS_HOME", str(home))
        mp.delenv("SHOPLENS_TRACKING_URI", raising=False)
        real = _real_model_eval(home, mp)
        evals = home / "evals"
        (evals / "20261125-171500-tiny-clip.json").write_text(json.dumps(_clip_eval()))
        (evals / "recs-tiny-20261125-181512.json").write_text(json.dumps(_recs_eval()))
        (docs / "bench").mkdir(parents=True)
        (docs / "RESULTS.json").write_text(json.dumps(FOUNDATION))
        (docs / "bench" / "ann.json").write_text(json.dumps(ANN))
        (docs / "bench" / "http.json").write_text(json.dumps(HTTP))
        (docs / "img").mkdir()
        Image.new("RGB", (1200, 300), "white").save(docs / "img" / "results_grid.png")
        run_id = _log_training_run(home)
        out = root / "out" / "report.html"
        summary = build_report(home, out, docs / "bench", docs / "img", docs / "RESULTS.json")
        yield {
            "summary": summary,
            "html": out.read_text("utf-8"),
            "out": out,
            "real": real,
            "run_id": run_id,
        }


# --- what the report says ------------------------------------------------------------------


def test_summary_lists_sections(built: dict[str, Any]) -> None:
    s = built["summary"]
    assert s["missing"] == ["generation"]
    assert {
        "summary",
        "classification",
        "retrieval",
        "text-to-image",
        "robustness",
        "recommendations",
        "training",
        "benchmarks",
        "samples",
        "data",
        "simulated",
    } <= set(s["present"])
    assert s["inputs"]["model_evals"] == 2 and s["inputs"]["training_runs"] == 1
    assert s["bytes"] == built["out"].stat().st_size < 2_000_000
    assert not s["problems"]
    assert [p.name for p in built["out"].parent.iterdir()] == ["report.html"]  # no temp file


def test_tables_hold_the_stored_numbers(built: dict[str, Any]) -> None:
    html, real = built["html"], built["real"]
    tasks = real["tasks"]
    assert f"{tasks['classification']['accuracy']:.3f}" in html
    assert f"{tasks['image_retrieval']['ndcg_at_10']:.3f}" in html
    assert f"{tasks['robustness']['r_at_1']['overall']:.3f}" in html
    assert "classifier head" in html and "test-tiny" in html
    for number in ("0.833", "0.424", "0.688", "0.778", "0.919", "0.568"):
        assert number in html, number  # CLIP-style eval and foundation eval
    for number in ("0.0456", "0.0321", "3.71x", "1,452"):
        assert number in html, number  # recommendations (simulated)
    assert "tiny-run" in html and "0.500" in html and "0.875" in html  # MLflow curves
    assert "HNSW32" in html and "0.912" in html and "15000" in html  # ANN bench
    assert "/v1/search" in html and "30.2" in html  # latency bench
    assert "Not available yet (no generation runs found)" in html


def test_sources_and_simulated_data_are_named(built: dict[str, Any]) -> None:
    html = built["html"]
    real = Path(built["real"]["meta"]["json"]).name
    assert f"evals/{real}" in html and "evals/20261125-171500-tiny-clip.json" in html
    assert "commit abc1234" in html and "commit def5678" in html and "commit 0a1b2c3" in html
    assert built["run_id"][:8] in html
    simulated = html.split('id="simulated"', 1)[1]
    assert "recommendation results" in simulated and "1,452 events" in simulated
    assert "Fashion-MNIST texts are derived from labels (in-domain)" in simulated


# --- accessibility and self-containment ------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def test_page_is_accessible_and_self_contained(built: dict[str, Any]) -> None:
    html = built["html"]
    page = _Page()
    page.feed(html)
    tags = page.tags
    assert ("html", {"lang": "en"}) in tags
    names = [t for t, _ in tags]
    assert "script" not in names and "iframe" not in names and "link" not in names
    ids = [a["id"] for _, a in tags if "id" in a]
    assert len(ids) == len(set(ids))
    assert any(t == "main" and a.get("id") == "main" for t, a in tags)
    assert any(t == "a" and a.get("href") == "#main" for t, a in tags)  # skip link
    assert any(t == "nav" and a.get("aria-label") for t, a in tags)
    levels = [int(t[1]) for t in names if re.fullmatch(r"h[1-6]", t)]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels))
    imgs = [a for t, a in tags if t == "img"]
    assert len(imgs) >= 6
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert len(a["alt"]) > 20 and a["width"] and a["height"]
    conf = next(a["alt"] for a in imgs if a["alt"].startswith("Confusion matrix, tiny-clip"))
    assert "Sandal 1 of 4, Bag 2 of 4" in conf and "Sandal predicted as Bag 3 times" in conf
    for t, a in tags:
        for key in ("src", "href", "action", "srcset"):
            assert not re.match(r"\s*(https?:)?//", a.get(key, "")), (t, a)
    assert "url(" not in html and "@import" not in html
    # tables: a caption, scoped headers, a focusable labelled scroll region each
    assert html.count("<table") == html.count("<caption") > 10
    ths = re.findall(r"<th\b[^>]*>", html)
    assert ths and all('scope="col"' in th or 'scope="row"' in th for th in ths)
    regions = [a for t, a in tags if t == "div" and a.get("role") == "region"]
    assert len(regions) == html.count("<table")
    assert all(a["tabindex"] == "0" and a["aria-labelledby"] in ids for a in regions)
    assert "prefers-color-scheme: dark" in html
    assert sum(1 for t in names if t == "figcaption") == len(imgs)


# --- missing inputs, the generation slot, bad files, the command ------------------------------


def test_missing_inputs_say_not_measured_yet(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    out = tmp_path / "r.html"
    s = build_report(home, out, tmp_path / "no-bench", tmp_path / "no-img", tmp_path / "no.json")
    html = out.read_text("utf-8")
    assert set(s["missing"]) >= {
        "classification",
        "recommendations",
        "training",
        "benchmarks",
        "generation",
        "samples",
    }
    assert html.count("Not measured yet") >= 6
    assert "Not available yet (no generation runs found)" in html
    assert "Fashion-MNIST texts are derived from labels (in-domain)" in html
    assert not (home / "mlflow.db").exists()  # reading never creates a tracking store
    assert "<img" not in html


def test_generation_results_slot_in_and_bad_files_are_skipped(tmp_path: Path) -> None:
    evals = tmp_path / "home" / "evals"
    evals.mkdir(parents=True)
    gen = {
        "meta": {"date": "2026-12-01", "commit": "9999999", "model": "tiny-diffusion"},
        "results": {"fid": 12.3456, "outside_mask_identical": 1.0},
    }
    (evals / "gen-tiny-20261201.json").write_text(json.dumps(gen))
    (evals / "broken.json").write_text("{not json")
    odd = {"meta": {"model": "m"}, "tasks": {"classification": {"per_class": [1, 2]}}}
    (evals / "20261201-odd.json").write_text(json.dumps(odd))  # valid JSON, unexpected shape
    out = tmp_path / "r.html"
    s = build_report(tmp_path / "home", out, tmp_path, tmp_path, tmp_path / "no.json")
    html = out.read_text("utf-8")
    assert "generation" in s["present"]
    assert "results.fid" in html and "12.3456" in html and "commit 9999999" in html
    assert s["problems"][0] == "evals/broken.json: not readable JSON (JSONDecodeError), skipped"
    assert s["problems"][1].startswith("section classification: could not be built")
    assert "classification" in s["missing"] and "retrieval" in s["missing"]
    assert "broken.json" in html

    # what `shoplens generate eval` writes (generate-*.json): one summary row per eval,
    # every number of the newest only
    newer = {
        "meta": {"date": "2026-12-02", "commit": "8888888", "model_spec": "/runs/gen-v3/model"},
        "settings": {"guidance": 3.0, "steps": 50, "scheduler": "ddpm"},
        "samples": {"n": 1000},
        "conditional_accuracy": {"overall": 0.989},
        "fid": {"value": 1.6347, "real_floor": 0.343},
        "memorisation": {"features": {"share": 0.006}, "pixels": {"share": 0.002}},
        "customers": {"settings": {"any category": {"mean_conditioned": 0.9323,
                                                    "mean_unconditioned": 0.4055}}},
        "edits": {"inpainting_outside_mask_identical": 1.0},
    }  # fmt: skip
    (evals / "generate-20261202-101010.json").write_text(json.dumps(newer))
    s = build_report(tmp_path / "home", out, tmp_path, tmp_path, tmp_path / "no.json")
    html = out.read_text("utf-8")
    assert not any("generate-2026" in p for p in s["problems"])
    assert "Generation evals: the fidelity checks" in html and "not Inception" in html
    for cell in ("0.989", "1.635", "0.006", "0.932", "0.405", "1,000", "ddpm"):
        assert cell in html, cell
    assert "generate-20261202-101010): every number" in html and "1.6347" in html
    assert "gen-tiny-20261201" in html and "results.fid" not in html  # older: its row only


def test_report_command_writes_and_prints_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)  # default docs/bench, docs/img: absent here
    monkeypatch.setenv("SHOPLENS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHOPLENS_TRACKING_URI", raising=False)
    app = typer.Typer()
    app.command()(report_command)
    result = CliRunner().invoke(app, ["--out", "site/report.html", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["out"] == "site/report.html" and (tmp_path / "site/report.html").is_file()
    human = CliRunner().invoke(app, ["--out", "site/report.html"])
    assert human.exit_code == 0 and "not measured yet" in human.output


def test_helpers() -> None:
    assert model_label("trained:/home/x/runs/fm-resnet-v3/model") == "fm-resnet-v3"
    assert (
        model_label("trained:/h/mlartifacts/e/0123456789abcdef/artifacts/model") == "run 01234567"
    )
    assert model_label("effnet-lite0@64") == "effnet-lite0@64"
    assert _is_numeric("0.933") and _is_numeric("1,452") and _is_numeric("n/a")
    assert _is_numeric("3.71x") and _is_numeric("125 s")
    assert not _is_numeric("classifier head") and not _is_numeric("Sandal, Bag")
