"""Training: one loop (``fit``) for every shoplens model, with exact resume, DDP and MLflow.

Typical use::

    from shoplens.config import load_config
    from shoplens.training import MlflowTracker, TrainConfig, fit

    cfg = load_config(TrainConfig, "train.yaml", ["lr=3e-4", "schedule=onecycle"])
    result = fit(model, dataset, cfg, run_dir="runs/clip-1", tracker=MlflowTracker("clip"))

Names are imported on first use, so ``import shoplens.training`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoplens.training.checkpoint import load_model_weights, seed_everything
    from shoplens.training.config import TrainConfig
    from shoplens.training.loop import TrainingError, TrainResult, fit
    from shoplens.training.tracking import MlflowTracker, NullTracker, Tracker

_EXPORTS = {
    "TrainConfig": "shoplens.training.config",
    "TrainResult": "shoplens.training.loop",
    "TrainingError": "shoplens.training.loop",
    "fit": "shoplens.training.loop",
    "load_model_weights": "shoplens.training.checkpoint",
    "seed_everything": "shoplens.training.checkpoint",
    "MlflowTracker": "shoplens.training.tracking",
    "NullTracker": "shoplens.training.tracking",
    "Tracker": "shoplens.training.tracking",
}
__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "fit",
    "load_model_weights",
    "seed_everything",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shoplens.training' has no attribute {name!r}")
