"""Save and load registered shoplens models: a folder with ``model.json`` + weights.

``model.json``: ``{"name", "config" (with "family"), "shoplens_version", "weights",
"weights_sha256", "num_parameters"}``; weights in ``model.safetensors`` (``model.pt``
state dicts are read too). Every file is written atomically; ``model.json`` goes last
and pins the weights by sha256, so a reader never pairs a config with other weights.
Loading rebuilds the architecture from the config and checks every key and shape.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shoplens import __version__
from shoplens.adapters.timm_adapter import load_state_dict_file
from shoplens.config import atomic_write
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.registry import build_model

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "model.pt"
_SHOWN = 5  # keys listed per kind of mismatch


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` then ``model.json`` into ``directory``; returns it."""
    from safetensors.torch import save

    name = getattr(model, "model_name", None)
    config = getattr(model, "model_config", None)
    if not isinstance(name, str) or not isinstance(config, dict) or "family" not in config:
        raise InvalidInputError(
            f"{type(model).__name__} is not a registered shoplens model (no model_name / "
            "model_config); build it with shoplens.registry.create_model"
        )
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": "pt"})
    out = Path(directory)
    with atomic_write(out / WEIGHTS) as f:
        f.write(data)
    meta = {
        "name": name,
        "config": config,
        "shoplens_version": __version__,
        "weights": WEIGHTS,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    with atomic_write(out / MODEL_JSON) as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))
    return out


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    """The validated ``model.json`` of a saved model folder."""
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise NotFoundError(f"no saved model in {Path(directory)} ({MODEL_JSON} missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read {path}: {e}") from e
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("family"), str):
        raise InvalidInputError(f"{path} needs a 'config' object with a 'family' key")
    return meta


def _weights_file(directory: Path, meta: dict[str, Any]) -> Path:
    for name in (meta.get("weights") or WEIGHTS, LEGACY_WEIGHTS):
        path = directory / str(name)
        if path.is_file():
            return path
    raise NotFoundError(f"no weights ({WEIGHTS} or {LEGACY_WEIGHTS}) in {directory}")


def _verify_sha(path: Path, meta: dict[str, Any]) -> None:
    want = meta.get("weights_sha256")
    if want and path.name == meta.get("weights"):
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise InvalidInputError(
                f"{path} does not match {MODEL_JSON} (sha256 {got[:12]}..., expected "
                f"{want[:12]}...): the folder mixes two saves"
            )


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def check_state_dict(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """Raise ``InvalidInputError`` naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {list(_shape(state[k]))} vs {list(_shape(expected[k]))}"
        for k in state
        if k in expected and _shape(state[k]) != _shape(expected[k])
    ]
    problems = [
        f"{len(keys)} {kind} (e.g. {', '.join(keys[:_SHOWN])})"
        for kind, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape-mismatched (checkpoint vs model)", mismatched),
        )
        if keys
    ]
    if problems:
        raise InvalidInputError(
            f"{what} does not fit the architecture {getattr(model, 'model_name', '?')!r}: "
            + "; ".join(problems)
        )


def load_state(model: nn.Module, state: dict[str, Any], what: str = "checkpoint") -> nn.Module:
    """Load a state dict after checking every key and shape (see :func:`check_state_dict`)."""
    check_state_dict(model, state, what)
    model.load_state_dict(state, strict=True)
    return model


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model from ``model.json`` and load its weights (eval mode)."""
    folder = Path(directory).expanduser()
    meta = read_model_meta(folder)
    config = dict(meta["config"])
    family = config.pop("family")
    model = build_model(str(meta.get("name") or family), family, config)
    path = _weights_file(folder, meta)
    _verify_sha(path, meta)
    load_state(model, load_state_dict_file(path), f"checkpoint {path}")
    return model.to(map_location).eval()
