"""DDP: two CPU processes under torchrun end with identical weights, equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from shoplens.config import load_config
from shoplens.training.distributed_demo import DemoConfig, run_demo

OVERRIDES = ["train.epochs=2", "train.batch_size=8", "train.seed=3", "data.samples=128"]


def test_two_processes_match_each_other_and_a_single_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "shoplens.training.distributed_demo",
        "--out",
        str(out),
        *OVERRIDES,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(out / "weights_rank0.pt")
    rank1 = torch.load(out / "weights_rank1.pt")
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k

    # One process with the same global batch (2 x 8) sees the same batches in the same order.
    cfg = load_config(DemoConfig, overrides=OVERRIDES)
    cfg = replace(cfg, train=replace(cfg.train, batch_size=16))
    single = run_demo(cfg, tmp_path / "single")
    reference = torch.load(tmp_path / "single" / "weights_rank0.pt")
    for k in reference:
        torch.testing.assert_close(rank0[k], reference[k], rtol=1e-4, atol=1e-5)

    result0 = json.loads((out / "result_rank0.json").read_text())
    assert result0["steps"] == single.steps == 16  # 128 samples / 16 per step x 2 epochs
    assert abs(result0["metrics"]["eval/mse"] - single.metrics["eval/mse"]) < 1e-4
    assert (out / "run" / "checkpoints" / "last.pt").is_file()  # written by rank 0 only
