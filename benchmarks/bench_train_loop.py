"""Training-loop overhead: ``shoplens.training.fit`` vs a bare PyTorch loop.

Both train the same small CNN with the same AdamW on the same batches (same sampler,
same order), tracking off, no EMA, no clipping. The repeats alternate between the two
loops so that load from other processes hits both alike; medians are reported::

    python benchmarks/bench_train_loop.py                   # prints, updates docs/BENCHMARKS.md
    python benchmarks/bench_train_loop.py --no-write --repeats 3

``fit`` is timed end to end: building its DataLoader and optimizer, the checkpoint at
every epoch end (atomic write + fsync), config.yaml, metrics.json and the final weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from shoplens.training import TrainConfig, fit
from shoplens.training.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/common.py, next to this script

HEADING = "## Training loop overhead"
TARGET = 0.9
DOC = common.DOC


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for 3x32x32 images, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))  # (B, 3, 32, 32) -> (B, 10)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch  # (B, 3, 32, 32), (B,)
        return {"loss": F.cross_entropy(self(x), y)}


def make_data(samples: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, 32, 32, generator=g)  # (N, 3, 32, 32)
    y = torch.randint(0, 10, (samples,), generator=g)  # (N,)
    return TensorDataset(x, y)


def new_model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def _clock() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing) -> Timing:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def bare_loop(data: TensorDataset, cfg: TrainConfig) -> Timing:
    """Time of a hand-written loop over the batches ``fit`` would see."""
    model = new_model()
    optimizer = build_optimizer(model, cfg)
    sampler: DistributedSampler[Any] = DistributedSampler(
        data, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed
    )
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler)
    start = _clock()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return _since(start)


def fit_loop(data: TensorDataset, cfg: TrainConfig) -> Timing:
    """Time of ``fit``, measured around the whole call."""
    model = new_model()
    with tempfile.TemporaryDirectory() as run_dir:
        start = _clock()
        result = fit(model, data, cfg, run_dir=run_dir, resume=False)
        elapsed = _since(start)
    assert result.steps == cfg.epochs * len(data) // cfg.batch_size
    return elapsed


def measure(samples: int, repeats: int, cfg: TrainConfig) -> dict[str, list[Timing]]:
    """Interleaved repeats of both loops (after one warm-up each)."""
    data = make_data(samples)
    bare_loop(data, cfg)  # warm-up, not counted
    fit_loop(data, cfg)
    runs: dict[str, list[Timing]] = {"bare": [], "fit": []}
    for r in range(repeats):
        order = ("bare", "fit") if r % 2 == 0 else ("fit", "bare")
        for name in order:
            runs[name].append((bare_loop if name == "bare" else fit_loop)(data, cfg))
    return runs


def render(
    runs: dict[str, list[Timing]], samples: int, cfg: TrainConfig, threads: int, load: float
) -> str:
    """The markdown section: machine, setup, per-loop throughput and the ratios."""
    m = common.machine()
    n = samples * cfg.epochs
    params = sum(p.numel() for p in new_model().parameters())
    wall = {k: [n / t[0] for t in v] for k, v in runs.items()}  # samples/s per repeat
    cpu = {k: [n / t[1] for t in v] for k, v in runs.items()}  # samples per CPU-second
    # Load from other processes changes between repeats: the ratio within each
    # back-to-back pair cancels most of it, and its median drops the disturbed pairs.
    paired = statistics.median(f / b for f, b in zip(wall["fit"], wall["bare"], strict=True))
    best = max(wall["fit"]) / max(wall["bare"])
    cpu_best = max(cpu["fit"]) / max(cpu["bare"])

    def row(label: str, key: str) -> str:
        each = ", ".join(f"{v:.0f}" for v in wall[key])
        return (
            f"| {label} | {max(wall[key]):.0f} | {statistics.median(wall[key]):.0f} "
            f"| {max(cpu[key]):.0f} | {each} |"
        )

    verdict = "meets" if paired >= TARGET else "misses"
    return "\n".join(
        [
            HEADING,
            "",
            common.measured_line(
                "bench_train_loop.py", f"{threads} torch thread(s)", f"torch {m['torch']}", load, m
            ),
            "",
            f"A small CNN ({params:,} parameters) trained on {samples} random 3x32x32 images, "
            f"batch {cfg.batch_size}, {cfg.epochs} epochs, by a bare PyTorch loop and by "
            "`shoplens.training.fit` with the same AdamW and the same batches (tracking off, "
            f"no EMA, no clipping); {len(runs['fit'])} interleaved repeats after a warm-up.",
            "`fit` is timed around the whole call: it also builds its loader and optimizer, "
            "writes a checkpoint at every epoch end (atomic, fsynced), the config, the "
            "metrics and the final weights.",
            "",
            "| loop | samples/s, best | samples/s, median | samples per CPU-second, best "
            "| samples/s, each repeat |",
            "|---|---:|---:|---:|---|",
            row("bare PyTorch loop", "bare"),
            row("shoplens `fit`", "fit"),
            "",
            f"fit / bare throughput: **{paired:.2f}x**, the median ratio of back-to-back "
            f"pairs ({verdict} the {TARGET}x target); {best:.2f}x best against best, "
            f"{cpu_best:.2f}x in CPU time. On a shared machine single repeats vary by tens "
            "of percent either way; read the paired figure.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        grad_clip=None,
        schedule="constant",
        device="cpu",
        log_every=10**9,
    )
    runs = measure(args.samples, args.repeats, cfg)
    section = render(runs, args.samples, cfg, args.threads, common.load_average())
    print(section)
    if not args.no_write:
        common.write_section(DOC, section)


if __name__ == "__main__":
    main()
