"""Fidelity metrics on synthetic features: hand-computed cases, closed forms, torchmetrics'
FID and brute-force neighbour searches as independent references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import InvalidInputError
from shoplens.generate.fidelity import (
    conditional_accuracy,
    frechet_distance,
    frechet_distance_from_stats,
    in_manifold,
    knn_radii,
    memorisation_threshold,
    memorised_share,
    nearest_distances,
    paired_comparison,
    precision_recall,
)
from shoplens.generate.fidelity_report import speed_ratio, speed_summary


def test_frechet_distance_closed_form_for_diagonal_gaussians() -> None:
    # FID of N(mu1, diag(v1)) and N(mu2, diag(v2)) = |mu1 - mu2|^2 + sum (sqrt v1 - sqrt v2)^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-9)  # 7.25 + 4 + 1 = 12.25
    assert got == pytest.approx(12.25)
    assert frechet_distance_from_stats(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0)


def test_frechet_distance_of_samples_matches_torchmetrics() -> None:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance  # dev extra

    class Passthrough(torch.nn.Module):
        """Custom 'feature extractor': the inputs already are (B, 8) features."""

        num_features = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.7
    fid = FrechetInceptionDistance(feature=Passthrough(), normalize=True)
    fid.set_dtype(torch.float64)
    fid.update(torch.from_numpy(a), real=True)
    fid.update(torch.from_numpy(b), real=False)
    reference = float(fid.compute())
    ours = frechet_distance(a, b)
    assert ours > 1.0  # the sets differ
    assert ours == pytest.approx(reference, rel=1e-5)
    # same distribution, more samples -> small; FID grows with a shift of the mean
    c = rng.normal(size=(400, 8))
    assert frechet_distance(a, c) < 0.2 * ours
    d = a.mean(0) - c.mean(0)
    shifted = frechet_distance(a, c) + np.sum((d - 2.0) ** 2) - np.sum(d**2)  # covariances equal
    assert frechet_distance(a, c + 2.0) == pytest.approx(shifted, rel=1e-6)


def test_frechet_distance_singular_covariances_and_bad_input() -> None:
    rng = np.random.default_rng(1)
    few = rng.normal(size=(5, 32))  # N < D: singular covariances, sqrtm residue handled
    other = rng.normal(size=(6, 32)) + 0.5
    value = frechet_distance(few, other)
    assert np.isfinite(value) and value > 0
    with pytest.raises(InvalidInputError):
        frechet_distance(few[:1], other)
    with pytest.raises(InvalidInputError):
        frechet_distance(few, other[:, :8])
    with pytest.raises(InvalidInputError):
        frechet_distance(np.full((4, 3), np.nan), other[:, :3])


def test_knn_radii_and_in_manifold_hand_computed() -> None:
    manifold = np.array([[0.0], [1.0], [2.0], [10.0]])
    radii = knn_radii(manifold, k=1)
    assert radii == pytest.approx([1.0, 1.0, 1.0, 8.0])
    assert knn_radii(manifold, k=2) == pytest.approx([2.0, 1.0, 2.0, 9.0])
    queries = np.array([[0.5], [3.5], [-1.5], [2.9], [19.0]])
    # 3.5 is 1.5 from "2" (radius 1) but inside the outlier's ball (10 +- 8)
    assert in_manifold(queries, manifold, radii).tolist() == [True, True, False, True, False]


def test_in_manifold_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    manifold, queries = rng.normal(size=(300, 6)), rng.normal(size=(500, 6)) * 1.3
    radii = knn_radii(manifold, k=3)
    d = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)  # (M, M)
    assert radii == pytest.approx(np.sort(d, axis=1)[:, 3], rel=1e-4)
    dq = np.linalg.norm(queries[:, None] - manifold[None], axis=-1)  # (Q, M)
    brute = (dq <= radii[None]).any(axis=1)
    got = in_manifold(queries, manifold, radii)
    assert 0.2 < brute.mean() < 0.95  # a non-trivial case
    assert (got == brute).mean() >= 0.998  # at most a float32 tie at a ball's edge


def test_precision_recall_identical_disjoint_and_mode_dropping() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 4))
    same = precision_recall(real, real.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    fresh = precision_recall(real, rng.normal(size=(400, 4)))
    assert fresh["precision"] > 0.8 and fresh["recall"] > 0.8
    far = precision_recall(real, rng.normal(size=(400, 4)) + 50.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # half the samples are off the manifold: precision ~0.5, recall stays high
    half = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 50.0])
    pr = precision_recall(real, half)
    assert 0.4 < pr["precision"] < 0.6 and pr["recall"] > 0.6
    # mode dropping: samples cover one corner of the real distribution -> low recall
    corner = real[real[:, 0] > 1.0]
    dropped = precision_recall(real, corner + 0.01 * rng.normal(size=corner.shape))
    assert dropped["precision"] > 0.9 and dropped["recall"] < 0.4
    assert (pr["k"], pr["real"], pr["fake"]) == (3, 400, 400)
    with pytest.raises(InvalidInputError):
        precision_recall(real[:3], real)  # fewer than k + 1 rows


def test_memorisation_threshold_and_share() -> None:
    train = np.array([[0.0], [10.0]])
    test = np.array([[1.0], [2.0], [3.0], [9.0], [14.0]])
    assert nearest_distances(test, train) == pytest.approx([1, 2, 3, 1, 4])
    # quantile 0.5 of [1, 2, 3, 1, 4] = 2
    assert memorisation_threshold(test, train, quantile=0.5) == pytest.approx(2.0)
    samples = np.array([[0.5], [1.9], [2.0], [5.0]])
    assert memorised_share(samples, train, 2.0) == pytest.approx(0.5)  # strictly closer

    rng = np.random.default_rng(4)
    train = rng.normal(size=(2000, 8))
    thr = memorisation_threshold(rng.normal(size=(1000, 8)), train)
    copies = train[:100] + 0.001 * rng.normal(size=(100, 8))
    assert memorised_share(copies, train, thr) == 1.0
    assert memorised_share(rng.normal(size=(1000, 8)), train, thr) < 0.04
    with pytest.raises(InvalidInputError):
        memorisation_threshold(test, train, quantile=0.0)


def test_conditional_accuracy() -> None:
    req = ["Bag", "Bag", "Coat", "Coat", "Coat", "Dress"]
    pred = ["Bag", "Coat", "Coat", "Coat", "Bag", "Bag"]
    out = conditional_accuracy(pred, req, classes=["Dress", "Coat", "Bag", "Sandal"])
    assert out["overall"] == pytest.approx(3 / 6)
    assert out["per_class"] == pytest.approx({"Dress": 0.0, "Coat": 2 / 3, "Bag": 0.5})
    assert list(out["per_class"]) == ["Dress", "Coat", "Bag"]  # classes order, unused dropped
    assert conditional_accuracy(req, req)["overall"] == 1.0
    with pytest.raises(InvalidInputError):
        conditional_accuracy(pred[:2], req)


def test_paired_comparison() -> None:
    rng = np.random.default_rng(5)
    base = rng.uniform(0, 0.5, size=40)
    better = paired_comparison(base + rng.uniform(0.05, 0.2, size=40), base)
    assert better["share_conditioned_higher"] == 1.0
    assert better["wilcoxon_p_value"] < 1e-6
    assert better["mean_difference"] == pytest.approx(better["mean_conditioned"] - base.mean())
    worse = paired_comparison(base - 0.1, base)
    assert worse["share_conditioned_higher"] == 0.0 and worse["wilcoxon_p_value"] > 0.5
    noise = paired_comparison(base + rng.normal(0, 0.1, size=40), base)
    assert noise["wilcoxon_p_value"] > 0.01
    tie = paired_comparison(base, base.copy())
    assert tie["wilcoxon_p_value"] is None and tie["share_conditioned_higher"] == 0.0
    with pytest.raises(InvalidInputError):
        paired_comparison(base, base[:3])


def test_speed_summary_reads_the_generation_benchmark(tmp_path: Path) -> None:
    path = tmp_path / "generate.json"
    assert speed_summary(path) == {"bench": None, "ratio": None, "setup": None}
    setup = {"model": "diffusion-test-tiny", "n": 16, "steps": 25}
    bench = {"setup": setup, "ratio_each": [1.1, 0.9], "target_ratio": 1.1, "ratio_median": 1.02}
    path.write_text(json.dumps(bench))
    assert speed_summary(path) == {"bench": str(path), "ratio": 1.02, "setup": setup}
    assert speed_ratio({"other": {"time_ratio": 0.97}}) == 0.97
    path.write_text("{not json")
    assert speed_summary(path)["ratio"] is None


def test_training_provenance_reads_the_run_folder_and_mlflow(home: Path) -> None:
    import yaml

    from shoplens.generate.fidelity_report import training_provenance, training_text
    from shoplens.training.tracking import MlflowTracker

    run = home / "runs" / "fm-diffusion-x"
    (run / "model").mkdir(parents=True)
    cfg = {
        "run_name": "fm-diffusion-x",
        "init_from": None,
        "train": {"batch_size": 64, "precision": "bf16", "max_minutes": 53.0},
        "tracking": {"experiment": "gen-test"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.json").write_text(json.dumps({"steps": 5100, "metrics": {}}))
    t = training_provenance(run / "model")
    assert t is not None
    assert (t["steps"], t["batch_size"], t["max_minutes"]) == (5100, 64, 53.0)
    assert t["minutes"] is None  # no MLflow run of that name
    assert "one run from scratch" in training_text(t) and "5100 steps" in training_text(t)
    assert "time not recorded" in training_text(t)

    tracker = MlflowTracker("gen-test", run_name="fm-diffusion-x")
    tracker.start({})
    tracker.end("FINISHED")
    t = training_provenance(run / "model")
    assert t is not None and t["minutes"] is not None and 0 <= t["minutes"] < 1
    cfg["init_from"] = "/runs/eps/model"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "warm-started (`init_from`) from `/runs/eps/model`" in training_text(
        training_provenance(run / "model")
    )
    assert training_provenance(home / "elsewhere" / "model") is None  # not a run folder
    assert training_text(None) == ""


def test_share_interval_is_wilsons() -> None:
    from shoplens.generate.fidelity_report import share_interval

    # Wilson 95% for 6 of 500: centre (6 + 1.96^2 / 2) / (500 + 1.96^2), by hand
    z = 1.959963984540054
    p, n = 6 / 500, 500
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (
        share_interval(6, 500) == f"95% CI {100 * (centre - half):.1f}-{100 * (centre + half):.1f}%"
    )
    assert share_interval(0, 500).startswith("95% CI 0.0-")
    assert share_interval(0, 0) == ""
