"""``shoplens recommend eval``: every recommender on SIMULATED customers, several settings.

For each simulator preset (how strongly choices are visible in product images, down to
``low-image-signal``), simulate customers over the catalogue's indexed products, hold out
each customer's last events, fit every model on the rest and score NDCG@10, Recall@20,
MAP@12, coverage and the cold-start-items slice. Results go to a JSON file under
``SHOPLENS_HOME/evals/`` and to the "## Recommendations" section of docs/RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoplens.catalog.store import Catalog
from shoplens.config import atomic_write, config_to_dict, shoplens_home
from shoplens.eval.report import cpu_cores, git_commit, json_default
from shoplens.eval.results_md import RECS_HEADING as HEADING
from shoplens.personalize.evaluate import evaluate, ratio_table, temporal_split
from shoplens.personalize.items import item_space
from shoplens.personalize.simulate import preset_config, simulate
from shoplens.personalize.types import Interactions, ItemSpace, Recommender

HOLDOUT = 5
MODELS = (
    "popularity",
    "item-knn-covisit",
    "item-knn-image",
    "als",
    "customer-embedding",
    "sequential",
    "fused",
)


def make_recommenders(seed: int = 0, fast: bool = False) -> dict[str, Recommender]:
    """Fresh instances of every model evaluated (``fast``: tiny settings for tests)."""
    from shoplens.personalize.baselines import ALS, CoVisitation, ImageKNN, Popularity
    from shoplens.personalize.customer import ContentRecommender
    from shoplens.personalize.ranker import FusedRanker
    from shoplens.personalize.sequential import SequentialRecommender

    seq: dict[str, Any] = {"seed": seed}
    if fast:
        seq.update(d_model=16, layers=1, heads=1, max_len=20, epochs=2)
    return {
        "popularity": Popularity(),
        "item-knn-covisit": CoVisitation(),
        "item-knn-image": ImageKNN(),
        "als": ALS(seed=seed),
        "customer-embedding": ContentRecommender(),
        "sequential": SequentialRecommender(**seq),
        "fused": FusedRanker(seed=seed, retriever_params={"sequential": seq}),
    }


def evaluate_setting(
    items: ItemSpace,
    preset: str,
    *,
    n_customers: int,
    seed: int = 0,
    fast: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Simulate one preset, split it, evaluate every model. JSON-able result."""
    cfg = preset_config(preset, n_customers=n_customers, seed=seed)
    t0 = time.perf_counter()
    sim = simulate(items, cfg)
    data = Interactions.from_events(sim.events, items)
    split = temporal_split(data, holdout=HOLDOUT, n_items=len(items))
    say(
        f"[{preset}] SIMULATED {len(data)} events of {len(data.customer_ids)} customers "
        f"({time.perf_counter() - t0:.0f}s); evaluating {len(split.customers)} customers ..."
    )
    models = make_recommenders(seed, fast=fast)
    results: dict[str, Any] = {}
    for name, model in models.items():
        results.update(evaluate({name: model}, split, items))
        r = results[name]
        say(
            f"[{preset}] {name}: ndcg@10 {r['ndcg@10']:.4f}, recall@20 {r['recall@20']:.4f}, "
            f"cold ndcg@10 {_f(r['cold_start_items']['ndcg@10'])} "
            f"(fit {r['fit_seconds']:.0f}s)"
        )
    fused = models["fused"]
    importance = fused.feature_importance() if hasattr(fused, "feature_importance") else {}
    return {
        "preset": preset,
        "simulated": True,
        "simulator": config_to_dict(cfg),
        "simulation": sim.meta,
        "split": {**split.summary(), "holdout_last_events": HOLDOUT},
        "results": results,
        "ratios_vs_als": ratio_table(results, baseline="als"),
        "fused_feature_importance": importance,
    }


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def run_recs_eval(
    catalog: Catalog,
    presets: Sequence[str],
    *,
    n_customers: int = 3000,
    seed: int = 0,
    results_md: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
    fast: bool = False,
) -> dict[str, Any]:
    """Evaluate every recommender under each preset; write JSON (+ RESULTS.md section)."""
    for p in presets:
        preset_config(p)  # unknown preset -> clear error before any work
    t0 = time.perf_counter()
    items = item_space(catalog)
    settings = [
        evaluate_setting(items, p, n_customers=n_customers, seed=seed, fast=fast, say=say)
        for p in presets
    ]
    meta: dict[str, Any] = {
        "catalog": catalog.name,
        "items": len(items),
        "encoder": items.encoder,
        "text_embeddings": items.text is not None,
        "customers": n_customers,
        "seed": seed,
        "simulated": True,
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "hardware": f"{platform.machine()}, {cpu_cores()} CPU cores",
        "total_s": round(time.perf_counter() - t0, 1),
    }
    out: dict[str, Any] = {"meta": meta, "settings": settings}
    folder = shoplens_home() / "evals"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"recs-{catalog.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with atomic_write(path) as f:
        f.write(json.dumps(out, indent=2, default=json_default).encode())
    meta["json"] = str(path)
    if results_md is not None:
        update_results_md(results_md, out)
        meta["results_md"] = str(results_md)
    return out


def summary_lines(out: dict[str, Any]) -> list[str]:
    """Human summary: per preset, each model's headline metrics and fused / ALS ratios."""
    m = out["meta"]
    lines = [
        f"SIMULATED customers ({m['customers']} per setting, seed {m['seed']}) over "
        f"{m['items']} products of {m['catalog']} ({m['encoder']})"
    ]
    for s in out["settings"]:
        lines.append(
            f"[{s['preset']}] taste_strength {s['simulator']['taste_strength']}: "
            f"{s['split']['customers']} customers evaluated"
        )
        for name, r in s["results"].items():
            c = r["cold_start_items"]
            lines.append(
                f"  {name:<20} ndcg@10 {_f(r['ndcg@10'])}  recall@20 {_f(r['recall@20'])}  "
                f"map@12 {_f(r['map@12'])}  cov@10 {_f(r['coverage@10'], 3)}  "
                f"cold ndcg@10 {_f(c['ndcg@10'])}"
            )
        ratio = s["ratios_vs_als"]["fused"]
        cold = ratio.get("cold_start_items/ndcg@10")
        lines.append(
            f"  fused / ALS: ndcg@10 {_x(ratio['ndcg@10'])}, cold-start ndcg@10 "
            + (_x(cold) if cold is not None else "n/a (ALS scores 0: it cannot rank new items)")
        )
    lines.append(f"report: {m['json']}" + (f" and {m['results_md']}" if "results_md" in m else ""))
    return lines


def markdown_section(out: dict[str, Any]) -> str:
    """The RESULTS.md section for one evaluation run (replaces the previous one)."""
    m = out["meta"]
    lines = [
        HEADING,
        "",
        "**All customer data here is simulated** by `shoplens simulate` (no real customer "
        "data exists offline): customers with a latent visual taste (a direction in the "
        "image-embedding space), a hidden collaborative taste that images do not show, "
        "Dirichlet category preferences, sessions with a view -> click -> cart -> purchase "
        "funnel, repeat purchases, outfits bought together (chosen by a hidden style that "
        "is a projection of the image embedding) and popularity bias; 10% of products "
        "launch in the last 14 days (the cold-start items). `taste_strength` sets how much "
        "choices follow the visual taste; `low-image-signal` is the setting where images "
        "say little, so the evaluation cannot be tuned to flatter the visual signal.",
        "",
        f"Measured {m['date']} on {m['hardware']}, commit {m['commit']}: catalogue "
        f"`{m['catalog']}` ({m['items']} products, image embeddings `{m['encoder']}`"
        + (", text embeddings MiniLM" if m["text_embeddings"] else "")
        + f"), {m['customers']} simulated customers per setting, seed {m['seed']}. "
        f"Split: each customer's last {HOLDOUT} events held out; relevance = held-out "
        "products new to the customer; models never return products already in the "
        "customer's history. Cold-start slice: customers with a held-out product that has "
        "no training events, relevance restricted to those products. Metrics are "
        "cross-checked against ranx in the tests. Reproduce: `shoplens recommend eval`.",
        "",
    ]
    cols = ["ndcg@10", "recall@20", "map@12", "coverage@10"]
    for s in out["settings"]:
        sim = s["simulator"]
        lines += [
            f"### `{s['preset']}` (taste_strength {sim['taste_strength']}): "
            f"{s['split']['customers']} customers evaluated, "
            f"{s['split']['customers_with_cold_relevant']} in the cold-start slice",
            "",
            "| model | NDCG@10 | Recall@20 | MAP@12 | coverage@10 | cold-start NDCG@10 "
            "| cold-start Recall@20 | NDCG@10 / ALS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in s["results"].items():
            c = r["cold_start_items"]
            ratio = s["ratios_vs_als"][name]["ndcg@10"]
            cells = [_f(r[k]) for k in cols] + [_f(c["ndcg@10"]), _f(c["recall@20"])]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_f(ratio, 2)}x |")
        ratio = s["ratios_vs_als"]["fused"]
        cold_ratio = ratio.get("cold_start_items/ndcg@10")
        als_cold = s["results"]["als"]["cold_start_items"]["ndcg@10"]
        lines += [
            "",
            f"Fused / ALS NDCG@10: overall {_x(ratio['ndcg@10'])} (target >= 1.2x); "
            "cold-start "
            + (
                _x(cold_ratio)
                if cold_ratio is not None
                else f"ALS {_f(als_cold)} (ALS cannot rank products without events), "
                f"fused {_f(s['results']['fused']['cold_start_items']['ndcg@10'])}"
            )
            + " (target >= 2x).",
            "",
        ]
    return "\n".join(lines)


def update_results_md(path: Path, out: dict[str, Any]) -> None:
    """Replace (or append) the recommendations section of ``path``, keeping the rest."""
    from shoplens.eval.results_md import split_section, write_atomic

    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    before, section, after = split_section(text, HEADING)
    body = markdown_section(out)
    if not section:
        new = text.rstrip("\n") + "\n\n" + body + "\n"
    else:
        new = before + body + ("\n" + after if after else "\n")
    write_atomic(path, new)
