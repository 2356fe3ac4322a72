"""Evaluation: metrics, the Fashion-MNIST foundation report and the trained-model harness.

``shoplens eval`` runs :func:`run_foundation_eval` (foundation encoders, whole report) or,
with ``--model``, :func:`run_model_eval` (one model, tasks of :mod:`shoplens.eval.tasks`,
a row appended to the "## Trained models" table).
"""

from __future__ import annotations

from shoplens.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    hit_rate_at_k,
    knn_accuracy,
    knn_predict,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    zero_shot_predict,
)

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "hit_rate_at_k",
    "knn_accuracy",
    "knn_predict",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "run_foundation_eval",
    "run_model_eval",
    "zero_shot_predict",
]


def __getattr__(name: str) -> object:
    # the runners pull in the catalogue, index and model modules; load them only when asked
    if name == "run_foundation_eval":
        from shoplens.eval.foundation import run_foundation_eval

        return run_foundation_eval
    if name == "run_model_eval":
        from shoplens.eval.runner import run_model_eval

        return run_model_eval
    raise AttributeError(name)
