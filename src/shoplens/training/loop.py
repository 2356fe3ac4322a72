"""One training loop for every shoplens model.

``fit(model, data, cfg, run_dir=...)`` trains any ``nn.Module`` that has
``training_step(batch) -> {"loss": scalar tensor, ...}``; the other scalar entries are
logged as metrics. It writes::

    run_dir/config.yaml            the resolved config
    run_dir/checkpoints/last.pt    model, optimizer, scheduler, EMA, position, RNG states
    run_dir/metrics.json           per-epoch history and final metrics
    run_dir/model/                 final weights (the EMA weights when EMA is on): a
                                   registered model as model.json + model.safetensors
                                   (loadable as ``trained:DIR``), else weights.pt

A killed run started again with the same ``run_dir`` resumes from ``last.pt`` and ends
with the same weights, bit for bit, as an uninterrupted run (with ``num_workers=0``, or
with augmentations that draw their randomness from the sample index).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from shoplens import progress
from shoplens.config import atomic_write, config_to_dict, save_config
from shoplens.errors import InvalidInputError, TrainingError
from shoplens.models.hardware import bf16_native, channels_last_hazards
from shoplens.training import distributed
from shoplens.training.checkpoint import (
    all_finite,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from shoplens.training.config import TrainConfig
from shoplens.training.ema import build_ema
from shoplens.training.loader import batch_len, build_loader, epoch_batches, to_device
from shoplens.training.optim import build_optimizer, build_scheduler
from shoplens.training.tracking import NullTracker, Status, Tracker, flatten

logger = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], dict[str, float]]
StepCallback = Callable[[int, dict[str, float]], None]
# Settings that fix the order of the data: a checkpoint only resumes a run that shares them.
RESUME_KEYS = ("batch_size", "accum_steps", "seed", "drop_last")


@dataclass
class TrainResult:
    """What :func:`fit` returns; ``metrics`` is the last row of ``history``."""

    metrics: dict[str, float]
    history: list[dict[str, float]]  # one row per epoch: epoch, step, train/*, eval/*
    steps: int
    epochs: int
    wall_time_s: float  # of this call (a resumed run counts only its own part)
    samples_per_s: float  # training samples over all processes / wall time
    checkpoint: Path
    model_dir: Path
    run_id: str | None = None  # the tracker's run id, None when tracking is off
    precision: str = "fp32"  # what the steps ran in (see :func:`effective_precision`)


def effective_precision(requested: str, device: torch.device) -> str:
    """The precision training runs in: ``bf16`` only where the device has native bfloat16
    (:func:`bf16_native`), else ``fp32`` with a warning: a recipe written for a bf16
    machine still trains at full speed on one without."""
    if requested == "bf16" and not bf16_native(device):
        logger.warning(
            "precision bf16 asked for, but %s has no native bfloat16 (AVX512-BF16, AMX or "
            "Arm BF16): training in fp32 (emulated bf16 is far slower)",
            "this CPU" if device.type == "cpu" else device,
        )
        return "fp32"
    return requested


@dataclass
class _Position:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    batch: int = 0  # micro-batches done in the current epoch
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's step metrics
    count: int = 0  # steps summed in ``sums``
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1


def fit(
    model: nn.Module,
    train_data: Dataset[Any] | DataLoader[Any],
    cfg: TrainConfig,
    *,
    run_dir: str | Path,
    eval_fn: EvalFn | None = None,
    tracker: Tracker | None = None,
    resume: bool = True,
    on_step: StepCallback | None = None,
    run_config: Any = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with AdamW and ``cfg``'s schedule.

    Args:
        model: has ``training_step(batch) -> dict[str, Tensor]`` with a scalar ``"loss"``.
        train_data: a map-style Dataset (the loop builds a seeded, resumable DataLoader,
            sharded under DDP) or a ready DataLoader.
        cfg: the training settings.
        run_dir: folder for config, checkpoints, metrics and final weights.
        eval_fn: ``eval_fn(model) -> metrics``, run at epoch ends on rank 0 under
            ``torch.no_grad()`` in eval mode (on the EMA weights when EMA is on).
        tracker: e.g. :class:`~shoplens.training.tracking.MlflowTracker`; None = off.
        resume: continue from ``run_dir/checkpoints/last.pt`` when it exists.
        on_step: ``on_step(step, metrics)`` after every optimizer step (raising stops
            the run like a crash: the tracker marks it FAILED, the checkpoint stays).
        run_config: the full resolved config (a dataclass) to save as ``config.yaml``
            and log as params; defaults to ``cfg``.
        collate_fn: batches items for the DataLoader the loop builds (e.g. with batch
            augmentation); ignored when ``train_data`` is a DataLoader.
    """
    info = distributed.init_from_env(cfg.device)
    seed_everything(cfg.seed + info.rank)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS call
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    use_tracker = tracker if tracker is not None and info.is_main else NullTracker()
    trainer = _Trainer(
        model, train_data, cfg, Path(run_dir), info, eval_fn, use_tracker, on_step, collate_fn
    )
    if resume and trainer.ckpt_path.is_file():
        trainer.restore()
    return trainer.run(cfg if run_config is None else run_config)


class _Trainer:
    """The state of one :func:`fit` call and its steps (kept private: use ``fit``)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset[Any] | DataLoader[Any],
        cfg: TrainConfig,
        run_dir: Path,
        info: distributed.DistInfo,
        eval_fn: EvalFn | None,
        tracker: Tracker,
        on_step: StepCallback | None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if not callable(getattr(model, "training_step", None)):
            raise InvalidInputError(
                f"{type(model).__name__} has no training_step(batch) method returning "
                "{'loss': tensor, ...}"
            )
        self.cfg, self.run_dir, self.info = cfg, run_dir, info
        self.eval_fn, self.tracker, self.on_step = eval_fn, tracker, on_step
        self.model = model.to(info.device)
        self.precision = effective_precision(cfg.precision, info.device)
        self.memory_format = torch.channels_last if cfg.channels_last else None
        hazards = channels_last_hazards(model) if info.device.type == "cpu" else []
        if self.memory_format is not None and hazards:
            logger.warning(
                "train.channels_last ignored: on this CPU the channels-last backward of %s "
                "(1x1, stride 2, under 8 input channels) corrupts memory",
                ", ".join(hazards[:3]),
            )
            self.memory_format = None
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        self.loader = build_loader(train_data, cfg, info, collate_fn)
        self.batches_per_epoch = len(self.loader)
        if self.batches_per_epoch == 0:
            raise InvalidInputError(
                f"train_data gives no full batch of batch_size={cfg.batch_size} "
                f"(drop_last={cfg.drop_last}); use a smaller train.batch_size"
            )
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accum_steps)
        self.total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.ema = build_ema(model, cfg.ema_decay)
        self.step_fn = distributed.wrap_model(model, info)
        self.ckpt_path = run_dir / "checkpoints" / "last.pt"
        self.pos = _Position()
        self.rng_to_restore: dict[str, Any] | None = None
        self.samples = 0
        self.deadline: float | None = None  # perf_counter() at which cfg.max_minutes ends
        self.time_up = False

    # -- the loop ------------------------------------------------------------------------

    def run(self, run_config: Any) -> TrainResult:
        start = time.perf_counter()
        if self.cfg.max_minutes is not None:
            self.deadline = start + 60.0 * self.cfg.max_minutes
        if self.info.is_main:
            save_config(run_config, self.run_dir / "config.yaml")
        params = flatten(config_to_dict(run_config))
        params["train.precision_used"] = self.precision
        self.pos.run_id = self.tracker.start(params, run_id=self.pos.run_id)
        try:
            with progress.task("train", total=self.total_steps) as advance:
                advance(self.pos.step)
                while self.pos.step < self.total_steps and not self.time_up:
                    self._train_epoch(advance)
            model_dir = self._write_outputs()
        except BaseException as e:
            self._end_failed(e)
            raise
        self.tracker.end("FINISHED")
        wall = time.perf_counter() - start
        last = self.pos.history[-1] if self.pos.history else {}
        return TrainResult(
            metrics={k: v for k, v in last.items() if k not in ("epoch", "step")},
            history=self.pos.history,
            steps=self.pos.step,
            epochs=self.pos.epoch,
            wall_time_s=wall,
            samples_per_s=self.samples * self.info.world_size / max(wall, 1e-9),
            precision=self.precision,
            checkpoint=self.ckpt_path,
            model_dir=model_dir,
            run_id=self.pos.run_id,
        )

    def _end_failed(self, error: BaseException) -> None:
        """Mark the tracked run KILLED (Ctrl-C) or FAILED without masking ``error``."""
        status: Status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self.tracker.end(status)
        except Exception as e:  # the training error matters more than the tracker's
            logger.warning("could not mark the tracked run %s: %s", status, e)

    def _train_epoch(self, advance: Callable[[int], None]) -> None:
        cfg, pos = self.cfg, self.pos
        batches = epoch_batches(self.loader, pos.epoch, pos.batch, cfg.seed)
        if self.rng_to_restore is not None:  # resumed: continue the saved random streams
            restore_rng_state(self.rng_to_restore)
            self.rng_to_restore = None
        acc: dict[str, Tensor] = {}  # this step's metrics, averaged over micro-batches
        for batch in batches:
            if self._micro_step(batch, acc):
                self._optimizer_step(acc)
                acc = {}
                advance(1)
                if pos.step >= self.total_steps or self._out_of_time():
                    break
        if pos.step < self.total_steps and pos.batch < self.batches_per_epoch and not self.time_up:
            raise TrainingError(
                f"the DataLoader gave {pos.batch} batches in epoch {pos.epoch + 1}, "
                f"but its len() is {self.batches_per_epoch}"
            )
        self._end_epoch(complete=pos.batch >= self.batches_per_epoch)

    def _micro_step(self, batch: Any, acc: dict[str, Tensor]) -> bool:
        """Forward and backward one micro-batch; True when it ends an optimizer step."""
        i, accum, n = self.pos.batch, self.cfg.accum_steps, self.batches_per_epoch
        group = min(accum, n - (i - i % accum))  # micro-batches in this step
        last = (i + 1) % accum == 0 or i + 1 == n
        batch = to_device(batch, self.info.device, self.memory_format)
        bf16 = self.precision == "bf16"
        with distributed.sync_gradients(self.step_fn, sync=last):
            with torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = self.step_fn(batch)
            (_loss(out) / group).backward()
        for k, v in out.items():
            if isinstance(v, Tensor) and v.numel() == 1:
                value = v.detach().float().reshape(()) / group
                acc[k] = acc[k] + value if k in acc else value
        self.pos.batch += 1
        self.samples += batch_len(batch)
        return last

    def _optimizer_step(self, acc: dict[str, Tensor]) -> None:
        cfg = self.cfg
        if cfg.grad_clip is not None:
            acc["grad_norm"] = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        names = list(acc)
        stacked = torch.stack([acc[k].float() for k in names])  # (K,) on the device
        values = distributed.mean_over_ranks(stacked, self.info).tolist()  # one sync a step
        metrics = dict(zip(names, values, strict=True))
        if not all(math.isfinite(v) for v in metrics.values()):
            raise self._non_finite(metrics)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.pos.step += 1
        self.pos.add(metrics)
        step = self.pos.step
        if step % cfg.log_every == 0 or step == self.total_steps:
            self._log({f"train_step/{k}": v for k, v in metrics.items()})
        if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
            self._save()
        if self.on_step is not None:
            self.on_step(step, metrics)

    def _end_epoch(self, complete: bool) -> None:
        """Record the epoch's mean metrics (and eval), then checkpoint."""
        pos = self.pos
        row: dict[str, float] = {"epoch": pos.epoch + 1, "step": pos.step}
        row.update({f"train/{k}": v / max(1, pos.count) for k, v in pos.sums.items()})
        last = pos.step >= self.total_steps or self.time_up
        if last or (pos.epoch + 1) % self.cfg.eval_every_epochs == 0:
            row.update({f"eval/{k}": v for k, v in self._evaluate().items()})
        pos.history.append(row)
        self._log({k: v for k, v in row.items() if k != "step"})
        if complete:
            pos.epoch, pos.batch, pos.sums, pos.count = pos.epoch + 1, 0, {}, 0
        self._save()

    def _out_of_time(self) -> bool:
        """True (and from then on) once ``cfg.max_minutes`` of this call have passed; a
        late rank stops every rank at the same step."""
        if self.deadline is None or self.time_up:
            return self.time_up
        late = torch.tensor([float(time.perf_counter() >= self.deadline)], device=self.info.device)
        if float(distributed.mean_over_ranks(late, self.info)) > 0:
            self.time_up = True
            logger.info(
                "train.max_minutes=%s reached at step %d/%d: stopping",
                self.cfg.max_minutes, self.pos.step, self.total_steps,
            )  # fmt: skip
        return self.time_up

    def _evaluate(self) -> dict[str, float]:
        if self.eval_fn is None or not self.info.is_main:
            return {}
        target = self.ema.module if self.ema is not None else self.model
        was_training = target.training
        target.eval()
        with torch.no_grad():
            metrics = self.eval_fn(target)
        target.train(was_training)
        return {k: float(v) for k, v in metrics.items()}

    def _log(self, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, self.pos.step)
        if self.info.is_main:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            logger.info("step %d/%d %s", self.pos.step, self.total_steps, shown)

    def _non_finite(self, metrics: dict[str, float]) -> TrainingError:
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        kept = (
            f"the last good checkpoint is kept at {self.ckpt_path}"
            if self.ckpt_path.is_file()
            else "no checkpoint was written yet"
        )
        return TrainingError(
            f"{bad} at step {self.pos.step + 1} (epoch {self.pos.epoch + 1}); weights not "
            f"updated, {kept}. Lower train.lr, set train.grad_clip, or check the data."
        )

    # -- checkpoints ---------------------------------------------------------------------

    def _save(self) -> None:
        """Write ``last.pt`` on rank 0 (every rank joins: RNG states are gathered)."""
        if not all_finite(self.model):
            raise TrainingError(
                f"weights became non-finite by step {self.pos.step}; not saved, the last "
                f"good checkpoint is kept at {self.ckpt_path}. Lower train.lr or set "
                "train.grad_clip."
            )
        rng = distributed.gather_objects(capture_rng_state(), self.info)
        if not self.info.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "position": asdict(self.pos),
            "rng": rng,  # one entry per rank
            "train_config": config_to_dict(self.cfg),
            "world_size": self.info.world_size,
            "batches_per_epoch": self.batches_per_epoch,
            "total_steps": self.total_steps,
        }
        save_checkpoint(self.ckpt_path, state)

    def restore(self) -> None:
        """Load ``last.pt`` into the model, optimizer, scheduler, EMA and position."""
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.info.device)
        check_compatible(self.model, ckpt["model"], str(self.ckpt_path))
        self._check_same_run(ckpt)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.pos = _Position(**ckpt["position"])
        self.rng_to_restore = ckpt["rng"][self.info.rank]

    def _check_same_run(self, ckpt: dict[str, Any]) -> None:
        old = ckpt["train_config"]
        diffs = [
            f"{k}={old.get(k)!r} (now {getattr(self.cfg, k)!r})"
            for k in RESUME_KEYS
            if old.get(k) != getattr(self.cfg, k)
        ]
        if ckpt["world_size"] != self.info.world_size:
            diffs.append(f"{ckpt['world_size']} processes (now {self.info.world_size})")
        if ckpt["batches_per_epoch"] != self.batches_per_epoch and not diffs:
            diffs.append(
                f"{ckpt['batches_per_epoch']} batches per epoch (now {self.batches_per_epoch}:"
                " a different dataset?)"
            )
        if self.cfg.schedule == "onecycle" and ckpt["total_steps"] != self.total_steps:
            diffs.append(
                f"a onecycle schedule of {ckpt['total_steps']} steps (now {self.total_steps})"
            )
        if diffs:
            raise InvalidInputError(
                f"cannot resume from {self.ckpt_path}: it was written with "
                + ", ".join(diffs)
                + "; use a new run folder or resume=False"
            )

    def _write_outputs(self) -> Path:
        """Final weights, config and metrics on rank 0, logged as tracker artefacts."""
        model_dir = self.run_dir / "model"
        if not self.info.is_main:
            return model_dir
        final = self.ema.module if self.ema is not None else self.model
        if hasattr(final, "model_name") and hasattr(final, "model_config"):
            from shoplens.models.io import save_model

            save_model(final, model_dir)  # a registered model: loadable as trained:DIR
        else:
            save_checkpoint(model_dir / "weights.pt", final.state_dict())
        shutil.copyfile(self.run_dir / "config.yaml", model_dir / "config.yaml")
        last = self.pos.history[-1] if self.pos.history else {}
        summary = {"steps": self.pos.step, "metrics": last, "history": self.pos.history}
        with atomic_write(self.run_dir / "metrics.json") as f:
            f.write(json.dumps(summary, indent=2).encode("utf-8"))
        self.tracker.log_artifact(self.run_dir / "config.yaml")
        self.tracker.log_artifact(self.run_dir / "metrics.json")
        self.tracker.log_artifact(model_dir, "model")
        return model_dir


def _loss(out: Any) -> Tensor:
    """The scalar ``out["loss"]`` of a training step (InvalidInputError if absent)."""
    loss = out.get("loss") if isinstance(out, dict) else None
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise InvalidInputError(
            f"training_step must return a dict with a scalar tensor 'loss'; got {got}"
        )
    return loss.reshape(())
