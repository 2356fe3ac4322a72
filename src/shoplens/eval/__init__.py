"""Evaluation: retrieval metrics and the Fashion-MNIST foundation report (``shoplens eval``)."""

from __future__ import annotations

from shoplens.eval.metrics import (
    hit_rate_at_k,
    knn_accuracy,
    knn_predict,
    precision_at_k,
    recall_at_k,
)

__all__ = [
    "hit_rate_at_k",
    "knn_accuracy",
    "knn_predict",
    "precision_at_k",
    "recall_at_k",
    "run_foundation_eval",
]


def __getattr__(name: str) -> object:
    # foundation pulls in the catalogue and index modules; load it only when asked for
    if name == "run_foundation_eval":
        from shoplens.eval.foundation import run_foundation_eval

        return run_foundation_eval
    raise AttributeError(name)
