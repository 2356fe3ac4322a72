"""The training loop: schedules, accumulation, EMA, exact resume, NaN handling, contracts."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from shoplens.config import load_config
from shoplens.errors import InvalidInputError
from shoplens.training import TrainConfig, TrainingError, fit, load_model_weights, loop
from shoplens.training.checkpoint import load_checkpoint
from shoplens.training.distributed_demo import (
    DemoData,
    TinyRegressor,
    build_model,
    make_datasets,
    mse_eval,
)
from shoplens.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups

torch.set_num_threads(1)

DATA = DemoData(samples=64, dim=4, hidden=8)


def quick(**kw: Any) -> TrainConfig:
    """A test config: no weight decay or clipping, a high lr, metrics every step."""
    return TrainConfig(**{"weight_decay": 0.0, "grad_clip": None, "log_every": 1, "lr": 0.05, **kw})


class Linear(nn.Module):
    """y = x @ w + b with an MSE training step."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(dim, 1)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch  # (B, D), (B,)
        return {"loss": F.mse_loss(self.fc(x).squeeze(-1), y)}


class NoisyDataset(Dataset[tuple[Tensor, Tensor]]):
    """Adds noise drawn from numpy, random and torch: resume must restore all three."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[i]
        jitter = float(np.random.normal(0, 0.05)) + random.uniform(-0.05, 0.05)
        return x + 0.05 * torch.randn_like(x) + jitter, y


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- schedules and optimizer ------------------------------------------------------------


def lrs(cfg: TrainConfig, total: int) -> list[float]:
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_warms_up_then_decays_to_min() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, schedule="cosine")
    got = lrs(cfg, 20)
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[4] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(got[4:]))  # strictly decreasing
    assert got[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 15 / 16)))
    assert lr_factor(20, total=20, warmup=4, min_ratio=0.1, schedule="cosine") == pytest.approx(0.1)


def test_constant_and_onecycle_shapes() -> None:
    const = lrs(TrainConfig(lr=2.0, warmup_steps=2, schedule="constant"), 10)
    assert const == pytest.approx([1.0, 2.0] + [2.0] * 8)
    cycle = lrs(TrainConfig(lr=1.0, warmup_steps=5, min_lr_ratio=0.01, schedule="onecycle"), 20)
    peak = int(np.argmax(cycle))
    assert peak in (4, 5) and cycle[peak] == pytest.approx(1.0, rel=1e-3)
    assert cycle[0] == pytest.approx(1.0 / 25)  # torch's div_factor
    assert cycle[-1] < 0.02 and cycle[-1] == pytest.approx(min(cycle))


def test_no_weight_decay_on_biases_norms_and_listed_names() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.norm = nn.LayerNorm(3)
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

    net = Net()
    decay, no_decay = param_groups(net, 0.1)
    assert [id(p) for p in decay["params"]] == [id(net.fc.weight)]  # type: ignore[attr-defined]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 4  # type: ignore[arg-type]


# -- the loop ---------------------------------------------------------------------------


def test_accumulation_matches_a_larger_batch(tmp_path: Path) -> None:
    data, _ = make_datasets(DATA)

    def train(batch_size: int, accum: int, name: str) -> dict[str, Tensor]:
        model = Linear()
        cfg = quick(epochs=2, batch_size=batch_size, accum_steps=accum)
        fit(model, data, cfg, run_dir=tmp_path / name)
        return weights(model)

    big = train(8, 1, "big")
    accumulated = train(4, 2, "accum")
    small = train(4, 1, "small")
    for k in big:
        torch.testing.assert_close(accumulated[k], big[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(small["fc.weight"], big["fc.weight"], atol=1e-3)


def test_ema_weights_follow_the_formula_and_feed_eval(tmp_path: Path) -> None:
    data, _ = make_datasets(DATA)
    model = Linear()
    decay = 0.6
    raw: list[dict[str, Tensor]] = []
    seen_by_eval: list[dict[str, Tensor]] = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        seen_by_eval.append(weights(m))
        return {"n": float(len(seen_by_eval))}

    cfg = quick(epochs=1, batch_size=16, ema_decay=decay)
    result = fit(
        model,
        data,
        cfg,
        run_dir=tmp_path,
        eval_fn=evaluate,
        on_step=lambda step, m: raw.append(weights(model)),
    )
    expected = dict(raw[0])  # the first update copies the weights
    for w in raw[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in w}
    for k in expected:
        torch.testing.assert_close(seen_by_eval[-1][k], expected[k])
    final = load_model_weights(Linear(), result.model_dir / "weights.pt")
    for k, v in final.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    assert not torch.allclose(expected["fc.weight"], raw[-1]["fc.weight"])
    assert result.metrics["eval/n"] == 1.0


def resume_config(**kw: Any) -> TrainConfig:
    base = {
        "epochs": 3,
        "batch_size": 8,
        "accum_steps": 2,
        "warmup_steps": 2,
        "ema_decay": 0.9,
        "checkpoint_every_steps": 3,
        "lr": 0.02,
        "log_every": 2,
    }
    return TrainConfig(**{**base, **kw})


class Crash(RuntimeError):
    pass


def test_killed_run_resumes_to_identical_weights_and_metrics(tmp_path: Path) -> None:
    data = DemoData(samples=64, dim=4, hidden=8, dropout=0.2)  # dropout: uses the torch RNG
    train, held_out = make_datasets(data)
    noisy = NoisyDataset(train)
    cfg = resume_config()

    full_model = build_model(data)
    full = fit(full_model, noisy, cfg, run_dir=tmp_path / "full", eval_fn=mse_eval(held_out))

    def kill(step: int, metrics: dict[str, float]) -> None:
        if step == 7:  # mid-epoch 2; the last checkpoint is from step 6
            raise Crash

    evaluate = mse_eval(held_out)
    with pytest.raises(Crash):
        fit(build_model(data), noisy, cfg, run_dir=tmp_path / "cut", eval_fn=evaluate, on_step=kill)
    position = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["position"]
    assert (position["step"], position["epoch"], position["batch"]) == (6, 1, 4)

    resumed_model = build_model(data)
    resumed = fit(resumed_model, noisy, cfg, run_dir=tmp_path / "cut", eval_fn=evaluate)
    assert_equal_weights(weights(resumed_model), weights(full_model))
    full_ema = torch.load(full.model_dir / "weights.pt")
    assert_equal_weights(torch.load(resumed.model_dir / "weights.pt"), full_ema)
    assert resumed.history == full.history
    assert resumed.steps == full.steps == 12 and resumed.epochs == 3
    assert len(resumed.history) == 3 and "eval/mse" in resumed.metrics


def test_resume_refuses_another_architecture_or_data_order(tmp_path: Path) -> None:
    data, _ = make_datasets(DATA)
    cfg = quick(epochs=1, batch_size=16)
    fit(TinyRegressor(4, 8), data, cfg, run_dir=tmp_path)
    with pytest.raises(InvalidInputError) as err:
        fit(TinyRegressor(4, 12), data, cfg, run_dir=tmp_path)
    message = str(err.value)
    assert "architecture" in message and "net.0.weight [8, 4] vs [12, 4]" in message
    with pytest.raises(InvalidInputError, match=r"batch_size=16 \(now 32\)"):
        fit(TinyRegressor(4, 8), data, TrainConfig(epochs=1, batch_size=32), run_dir=tmp_path)
    fresh = fit(TinyRegressor(4, 12), data, cfg, run_dir=tmp_path, resume=False)
    assert fresh.steps == 4


class NanAfter(Linear):
    """Its loss turns NaN at optimizer step ``bad_step`` (one micro-batch per step)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.bad_step, self.calls = bad_step, 0

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        self.calls += 1
        out = super().training_step(batch)
        if self.calls >= self.bad_step:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    data, _ = make_datasets(DATA)
    model = NanAfter(bad_step=6)
    cfg = quick(epochs=3, batch_size=16, checkpoint_every_steps=2)
    saved: dict[int, str] = {}
    ckpt = tmp_path / "checkpoints" / "last.pt"

    def remember(step: int, metrics: dict[str, float]) -> None:
        saved[step] = sha256(ckpt) if ckpt.exists() else ""

    with pytest.raises(TrainingError) as err:
        fit(model, data, cfg, run_dir=tmp_path, on_step=remember)
    assert "loss=nan at step 6" in str(err.value) and str(ckpt) in str(err.value)
    assert sha256(ckpt) == saved[5]  # untouched since the last good step (epoch end, 4)
    state = load_checkpoint(ckpt)
    assert state["position"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN update


def test_max_steps_bf16_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "bf16_native", lambda device: True)  # the bf16 path, anywhere
    data, held_out = make_datasets(DATA)
    cfg = quick(epochs=5, max_steps=3, batch_size=16, precision="bf16")
    result = fit(build_model(DATA), data, cfg, run_dir=tmp_path, eval_fn=mse_eval(held_out))
    assert result.steps == 3 and result.epochs == 0  # stopped inside the first epoch
    assert result.history[-1]["step"] == 3 and np.isfinite(result.metrics["eval/mse"])
    assert result.samples_per_s > 0 and result.run_id is None and result.precision == "bf16"
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["history"] == result.history


class AutocastProbe(Linear):
    """Records whether each training step ran under CPU bf16 autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return super().training_step(batch)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_only_where_the_cpu_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool
) -> None:
    """A bf16 recipe on a CPU without native bfloat16 trains in fp32 (emulated bf16 is
    ~100x slower), says so, and records what it ran in."""
    monkeypatch.setattr(loop, "bf16_native", lambda device: native)
    data, _ = make_datasets(DATA)
    model = AutocastProbe()
    with caplog.at_level("WARNING", logger="shoplens.training.loop"):
        result = fit(
            model, data, quick(max_steps=2, batch_size=16, precision="bf16"), run_dir=tmp_path
        )
    assert result.precision == ("bf16" if native else "fp32")
    assert model.seen == [native, native]
    assert ("no native bfloat16" in caplog.text) is not native
    fp32 = fit(AutocastProbe(), data, quick(max_steps=1, batch_size=16), run_dir=tmp_path / "fp32")
    assert fp32.precision == "fp32"


def test_bf16_native_reads_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoplens.models import hardware

    cpu = torch.device("cpu")
    for avx512, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
        assert hardware.bf16_native(cpu) is (avx512 or amx)
    assert loop.effective_precision("fp32", cpu) == "fp32"
    assert loop.effective_precision("bf16", cpu) == "bf16"  # AMX, from the last round


def test_accepts_a_dataloader_and_checks_the_step_contract(tmp_path: Path) -> None:
    data, _ = make_datasets(DATA)
    loader = DataLoader(data, batch_size=32)
    result = fit(Linear(), loader, quick(epochs=2), run_dir=tmp_path / "ok")
    assert result.steps == 4 and result.metrics["train/loss"] > 0

    class NoLoss(Linear):
        def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
            return {"mse": super().training_step(batch)["loss"]}

    with pytest.raises(InvalidInputError, match=r"'loss'.*mse"):
        fit(NoLoss(), data, TrainConfig(epochs=1), run_dir=tmp_path / "noloss")
    with pytest.raises(InvalidInputError, match="training_step"):
        fit(nn.Linear(4, 1), data, TrainConfig(epochs=1), run_dir=tmp_path / "plain")
    with pytest.raises(InvalidInputError, match="no full batch"):
        cfg = TrainConfig(epochs=1, batch_size=128, drop_last=True)
        fit(Linear(), data, cfg, run_dir=tmp_path / "tiny")


def test_channels_last_trains_the_same_model(tmp_path: Path) -> None:
    from shoplens.registry import create_model

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (32,), generator=gen)
    data = [{"image": images[i], "label": int(labels[i])} for i in range(32)]
    trained = []
    for cl in (False, True):
        torch.manual_seed(0)
        # widths of 8: no channels-last hazard on any CPU (see the test below)
        model = create_model(
            "resnet-test-tiny", attribute_names=[], **{"image_tower.widths": [8, 8]}
        )
        fit(
            model, data, quick(epochs=2, batch_size=8, channels_last=cl), run_dir=tmp_path / str(cl)
        )
        trained.append(model.cpu())
    plain, nhwc = (dict(m.state_dict()) for m in trained)
    assert nhwc["image_tower.stem.0.weight"].is_contiguous(memory_format=torch.channels_last)
    for key, value in plain.items():
        assert torch.allclose(value.float(), nhwc[key].float(), atol=1e-4), key


def test_channels_last_is_skipped_where_its_backward_corrupts_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On an AVX2-only CPU, oneDNN's channels-last backward of a 1x1 stride-2 convolution
    from 4 channels (resnet-test-tiny's shortcut) aborted training; such models stay NCHW
    there, and train.channels_last is ignored with a warning."""
    from shoplens.models import hardware
    from shoplens.registry import create_model

    monkeypatch.setattr(hardware, "cpu_has_avx512", lambda: False)
    torch.manual_seed(0)
    model = create_model("resnet-test-tiny", attribute_names=[])  # widths 4, 8
    assert hardware.channels_last_hazards(model) == ["image_tower.stages.1.0.downsample.0"]
    assert model.image_tower.channels_last is False
    wide = create_model("resnet-test-tiny", attribute_names=[], **{"image_tower.widths": [8, 8]})
    assert hardware.channels_last_hazards(wide) == [] and wide.image_tower.channels_last
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 16, 16, generator=gen)
    data = [{"image": images[i], "label": i % 4} for i in range(16)]
    with caplog.at_level("WARNING", logger="shoplens.training.loop"):
        result = fit(
            model, data, quick(epochs=1, batch_size=8, channels_last=True), run_dir=tmp_path
        )
    assert result.steps == 2 and "train.channels_last ignored" in caplog.text
    stem = model.image_tower.stem[0].weight
    assert stem.is_contiguous() and not stem.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(hardware, "cpu_has_avx512", lambda: True)  # other kernels there
    assert hardware.channels_last_hazards(model) == []


def test_max_minutes_stops_cleanly_and_saves(tmp_path: Path) -> None:
    data, held_out = make_datasets(DATA)
    cfg = quick(epochs=50, batch_size=16, max_minutes=1e-9)  # over after the first step
    result = fit(build_model(DATA), data, cfg, run_dir=tmp_path, eval_fn=mse_eval(held_out))
    assert result.steps == 1 and result.epochs == 0 and len(result.history) == 1
    assert np.isfinite(result.metrics["eval/mse"])  # evaluated like a finished run
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert any((tmp_path / "model").iterdir()) and (tmp_path / "metrics.json").is_file()
    again = fit(build_model(DATA), data, cfg, run_dir=tmp_path)  # resumes, with a new budget
    assert again.steps == 2
    with pytest.raises(InvalidInputError, match="max_minutes"):
        TrainConfig(max_minutes=0)


def test_warm_start_loads_a_trained_model_and_refuses_another_architecture(
    tmp_path: Path,
) -> None:
    from shoplens.errors import NotFoundError
    from shoplens.models.io import save_model
    from shoplens.registry import create_model
    from shoplens.training.experiment import warm_start

    torch.manual_seed(0)
    source = create_model("diffusion-test-tiny")
    folder = save_model(source, tmp_path / "eps")
    torch.manual_seed(1)  # other initial weights, another prediction type: same shapes
    target = create_model("diffusion-test-tiny", prediction_type="v_prediction")
    assert not all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    assert warm_start(target, str(folder)) == folder
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    with pytest.raises(InvalidInputError, match="does not fit"):
        warm_start(create_model("resnet-test-tiny"), f"trained:{folder}")
    with pytest.raises(NotFoundError, match="init_from"):
        warm_start(target, str(tmp_path / "nothing"))


def test_lit_from_a_trained_classifier_tower_copies_and_locks_it(tmp_path: Path) -> None:
    from shoplens.errors import NotFoundError
    from shoplens.models.io import save_model
    from shoplens.registry import create_model
    from shoplens.training.experiment import warm_start_image_tower

    torch.manual_seed(0)
    classifier = create_model("resnet-test-tiny", attribute_names=[])
    folder = save_model(classifier, tmp_path / "cls")
    tower = {"type": "cnn", "image_size": 16, "widths": [4, 8], "depths": [1, 1], "out_dim": 8}
    torch.manual_seed(1)
    lit = create_model("clip-test-tiny", image_tower=tower, lock_image=True)
    assert warm_start_image_tower(lit, f"trained:{folder}") == folder
    for key, value in classifier.image_tower.state_dict().items():
        assert torch.equal(value, lit.image_tower.state_dict()[key]), key
    assert not any(p.requires_grad for p in lit.image_tower.parameters())  # still locked
    lit.train()
    assert not lit.image_tower.training  # a locked tower stays in eval mode
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(lit.image_features(x), classifier.eval().image_tower(x))
    other = create_model("clip-test-tiny")  # widths 8-16: another tower shape
    with pytest.raises(InvalidInputError, match="does not fit"):
        warm_start_image_tower(other, str(folder))
    diffusion = save_model(create_model("diffusion-test-tiny"), tmp_path / "diff")
    with pytest.raises(InvalidInputError, match="image tower"):
        warm_start_image_tower(lit, str(diffusion))
    with pytest.raises(NotFoundError, match="init_image_tower_from"):
        warm_start_image_tower(lit, str(tmp_path / "nothing"))


def test_classifier_flip_tta_averages_the_mirror_in_eval_only() -> None:
    from shoplens.registry import create_model

    torch.manual_seed(0)
    plain = create_model("resnet-test-tiny").eval()
    torch.manual_seed(0)
    tta = create_model("resnet-test-tiny", tta_flip=True).eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        a, b, m = plain(x), tta(x), plain(x.flip(-1))
    assert torch.allclose(b["logits"], (a["logits"] + m["logits"]) / 2, atol=1e-6)
    mean_attr = (a["attribute_logits"] + m["attribute_logits"]) / 2
    assert torch.allclose(b["attribute_logits"], mean_attr, atol=1e-6)
    assert torch.equal(b["features"], a["features"])  # the retrieval embedding is unchanged
    assert not torch.allclose(a["logits"], b["logits"])  # the mirror changed something
    tta.train()
    with torch.no_grad():
        assert torch.allclose(tta(x)["logits"], plain.train()(x)["logits"])  # training: no TTA
