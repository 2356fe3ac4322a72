"""A tiny end-to-end training job, on one process or many: the DDP smoke test.

One process::

    python -m shoplens.training.distributed_demo --out /tmp/demo train.epochs=3

Several (CPU processes use Gloo, GPUs NCCL; same command on a GPU machine)::

    torchrun --standalone --nproc_per_node=2 -m shoplens.training.distributed_demo \\
        --out /tmp/demo train.batch_size=8

Each rank writes ``weights_rank{R}.pt`` and ``result_rank{R}.json`` into ``--out``, so you
can check that every rank ends with the same weights; rank 0 also writes ``--out/run``
(config, checkpoint, metrics, final weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from shoplens.config import load_config
from shoplens.errors import ShoplensError
from shoplens.training import distributed
from shoplens.training.config import TrainConfig
from shoplens.training.loop import EvalFn, TrainResult, fit


@dataclass
class DemoData:
    """Synthetic regression data: ``y = sin(x @ w) + noise``."""

    samples: int = 256  # training samples; a quarter as many more are held out
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.0
    noise: float = 0.1
    seed: int = 0  # data and model initialisation


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=16, lr=1e-2, weight_decay=0.0, log_every=4)


@dataclass
class DemoConfig:
    """The demo's whole config: ``data.*`` and ``train.*`` keys."""

    data: DemoData = field(default_factory=DemoData)
    train: TrainConfig = field(default_factory=_default_train)


class TinyRegressor(nn.Module):
    """A two-layer MLP regressor following the ``training_step`` contract."""

    def __init__(self, dim: int = 8, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)  # (B, D) -> (B,)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch  # (B, D), (B,)
        pred = self(x)  # (B,)
        return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean()}


def make_datasets(cfg: DemoData) -> tuple[TensorDataset, TensorDataset]:
    """(train, held-out) synthetic datasets, a function of ``cfg`` only."""
    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.samples + cfg.samples // 4
    x = torch.randn(n, cfg.dim, generator=g)  # (N, D)
    w = torch.randn(cfg.dim, generator=g) / cfg.dim**0.5  # (D,)
    y = torch.sin(x @ w) + cfg.noise * torch.randn(n, generator=g)  # (N,)
    cut = cfg.samples
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def mse_eval(data: TensorDataset) -> EvalFn:
    """An ``eval_fn`` computing the mean squared error on ``data``."""
    x, y = data.tensors

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        pred = model(x.to(device))  # (N,)
        return {"mse": float(F.mse_loss(pred, y.to(device)))}

    return evaluate


def build_model(cfg: DemoData) -> TinyRegressor:
    """The demo model, initialised from ``cfg.seed`` (identical on every rank)."""
    torch.manual_seed(cfg.seed)
    return TinyRegressor(cfg.dim, cfg.hidden, cfg.dropout)


def run_demo(cfg: DemoConfig, out: Path, **fit_kwargs: Any) -> TrainResult:
    """Train the demo model; write this rank's weights and result into ``out``."""
    train, held_out = make_datasets(cfg.data)
    model = build_model(cfg.data)
    result = fit(
        model,
        train,
        cfg.train,
        run_dir=out / "run",
        eval_fn=mse_eval(held_out),
        run_config=cfg,
        **fit_kwargs,
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / f"weights_rank{rank}.pt")
    summary = {
        "steps": result.steps,
        "metrics": result.metrics,
        "samples_per_s": result.samples_per_s,
    }
    (out / f"result_rank{rank}.json").write_text(json.dumps(summary, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="YAML file with data: and train: sections")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-3")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(DemoConfig, args.config, args.overrides)
        args.out.mkdir(parents=True, exist_ok=True)
        with distributed.session(cfg.train.device):
            run_demo(cfg, args.out)
    except ShoplensError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
