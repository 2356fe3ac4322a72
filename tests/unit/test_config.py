"""Typed configs: defaults <- YAML <- overrides, type checks, clear errors, round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from shoplens.config import config_to_dict, load_config, save_config
from shoplens.errors import InvalidInputError
from shoplens.training.config import TrainConfig


@dataclass
class DataSection:
    held_out: list[str] = field(default_factory=list)
    image_size: int = 32
    root: Path | None = None
    mode: Literal["folder", "manifest"] = "folder"
    class_weights: dict[str, float] = field(default_factory=dict)


def _small_train() -> TrainConfig:
    return TrainConfig(epochs=3, batch_size=16)


@dataclass
class AppConfig:
    name: str = "default"
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=_small_train)
    tags: list[str] = field(default_factory=list)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    yml = write(
        tmp_path / "c.yaml",
        "name: from-yaml\ntrain:\n  lr: 0.5\n  epochs: 7\ndata:\n  image_size: 64\n",
    )
    cfg = load_config(AppConfig, yml, ["train.epochs=9", "data.held_out=[Sandal,Bag]"])
    assert cfg.name == "from-yaml"  # YAML over default
    assert cfg.train.lr == 0.5  # YAML
    assert cfg.train.epochs == 9  # override over YAML
    assert cfg.train.batch_size == 16  # the section's own default instance is kept
    assert cfg.data.image_size == 64
    assert cfg.data.held_out == ["Sandal", "Bag"]
    assert cfg.data.mode == "folder"  # default


def test_values_are_coerced_to_field_types() -> None:
    cfg = load_config(
        AppConfig,
        overrides=[
            "train.lr=3e-4",  # YAML 1.1 reads this as a string
            "train.betas=[0.9, 0.95]",
            "train.grad_clip=null",
            "train.schedule=onecycle",
            "data.root=/data/shop",
            "data.class_weights={Bag: 2, Sandal: 0.5}",
            "name=2024",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.9, 0.95)
    assert cfg.train.grad_clip is None
    assert cfg.train.schedule == "onecycle"
    assert cfg.data.root == Path("/data/shop")
    assert cfg.data.class_weights == {"Bag": 2.0, "Sandal": 0.5}
    assert cfg.name == "2024"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=1", ["train.lrr", "did you mean 'lr'", "batch_size"]),
        ("trian.lr=1", ["trian", "did you mean 'train'"]),
        ("train.epochs=abc", ["train.epochs", "expected int", "'abc'"]),
        ("train.epochs=2.5", ["train.epochs", "expected int"]),
        ("train.deterministic=3", ["train.deterministic", "expected bool"]),
        ("data.image_size=true", ["data.image_size", "expected int", "True"]),
        ("train.schedule=cosin", ["train.schedule", "'cosine'", "'onecycle'", "'constant'"]),
        ("train.betas=[0.9]", ["train.betas", "expected 2 items"]),
        ("data.held_out=Bag", ["data.held_out", "expected a list"]),
        ("train.lr=-1", ["train.lr", "out of range"]),
        ("train.lr", ["section.key=value"]),
        ("train=5", ["train", "expected a mapping"]),
    ],
)
def test_bad_overrides_name_the_key_and_the_problem(override: str, expected: list[str]) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_config(AppConfig, overrides=[override])
    for fragment in expected:
        assert fragment in str(err.value)


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        load_config(AppConfig, tmp_path / "missing.yaml")
    with pytest.raises(InvalidInputError, match="expected a mapping"):
        load_config(AppConfig, write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_config(AppConfig, write(tmp_path / "broken.yaml", "train: [1, 2\n"))
    with pytest.raises(InvalidInputError, match=r"unknown config key 'data\.sizes'"):
        load_config(AppConfig, write(tmp_path / "typo.yaml", "data:\n  sizes: 3\n"))
    assert load_config(AppConfig, write(tmp_path / "empty.yaml", "")) == AppConfig()


def test_required_fields_are_reported() -> None:
    @dataclass
    class Needs:
        path: str
        size: int = 1

    with pytest.raises(InvalidInputError, match=r"missing required key.*path"):
        load_config(Needs)
    assert load_config(Needs, overrides=["path=x"]).path == "x"


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = load_config(AppConfig, overrides=["train.betas=[0.8,0.9]", "data.root=/x", "tags=[a,b]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(AppConfig, path) == cfg
    assert config_to_dict(cfg)["train"]["betas"] == [0.8, 0.9]
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_config_to_dict_rejects_non_dataclasses() -> None:
    with pytest.raises(InvalidInputError, match="dataclass"):
        config_to_dict({"a": 1})


def test_train_config_checks_values_on_construction() -> None:
    with pytest.raises(InvalidInputError, match=r"train\.schedule"):
        TrainConfig(schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"train\.ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(InvalidInputError, match=r"train\.accum_steps"):
        TrainConfig(accum_steps=0)
    assert TrainConfig(warmup_ratio=0.1).warmup(100) == 10
    assert TrainConfig(warmup_steps=5, warmup_ratio=0.5).warmup(100) == 5


def test_train_help_names_every_built_in_recipe() -> None:
    from typer.testing import CliRunner

    from shoplens.cli import app
    from shoplens.training.experiment import list_recipes, resolve_config_path

    names = list_recipes()
    assert {"fmnist-resnet", "fmnist-lit", "fmnist-diffusion"} <= set(names)
    out = CliRunner().invoke(app, ["train", "--help"], terminal_width=400).output
    assert all(name in out for name in names), out
    assert all(resolve_config_path(n) is not None for n in names)


def test_override_replaces_a_recipes_dotted_model_override(tmp_path: Path) -> None:
    """A recipe writes ``model_overrides: {image_tower.widths: ...}``; the CLI override
    ``model_overrides.image_tower.widths=...`` replaces that key (one value, no second
    nested copy whose precedence would depend on key order)."""
    from shoplens.training.experiment import ExperimentConfig

    yml = write(
        tmp_path / "r.yaml",
        "model: resnet-small\nmodel_overrides:\n  image_tower.widths: [24, 64, 160]\n"
        "  tta_flip: true\n",
    )
    cfg = load_config(
        ExperimentConfig,
        yml,
        [
            "model_overrides.image_tower.widths=[24,64,128]",
            "model_overrides.image_tower.depths=[1,1]",
        ],
    )
    assert cfg.model_overrides == {
        "image_tower.widths": [24, 64, 128],
        "tta_flip": True,
        "image_tower": {"depths": [1, 1]},  # no dotted key to replace: nested as before
    }
