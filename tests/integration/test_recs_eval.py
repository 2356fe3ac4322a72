"""``shoplens recommend eval`` end to end on a tiny catalogue (simulated customers)."""

from __future__ import annotations

import json
from pathlib import Path

from shoplens.catalog.store import Catalog
from shoplens.personalize.report import MODELS, run_recs_eval, summary_lines


def test_recs_eval_writes_json_and_results_section(built_catalog: str, tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\n## Trained models\n\nkept row\n")
    with Catalog.open(built_catalog) as cat:
        out = run_recs_eval(cat, ["visual"], n_customers=60, fast=True, results_md=md)
    setting = out["settings"][0]
    assert out["meta"]["simulated"] and setting["simulated"] and setting["preset"] == "visual"
    assert set(setting["results"]) == set(MODELS)
    for r in setting["results"].values():
        assert 0.0 <= r["ndcg@10"] <= 1.0 and "cold_start_items" in r
    assert setting["ratios_vs_als"]["als"]["ndcg@10"] in (1.0, None)
    saved = json.loads(Path(out["meta"]["json"]).read_text())
    assert (
        saved["settings"][0]["results"]["fused"]["ndcg@10"]
        == setting["results"]["fused"]["ndcg@10"]
    )
    text = md.read_text()
    assert "kept row" in text and "## Recommendations (simulated customers)" in text
    assert "**All customer data here is simulated**" in text and "| fused |" in text
    assert any("fused / ALS" in line for line in summary_lines(out))
    with Catalog.open(built_catalog) as cat:  # a second run replaces the section
        run_recs_eval(cat, ["low-image-signal"], n_customers=60, fast=True, results_md=md)
    text = md.read_text()
    assert text.count("## Recommendations (simulated customers)") == 1
    assert "low-image-signal" in text and "`visual`" not in text
