"""Checkpoint files: atomic writes, safe loads, architecture checks and RNG states.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True``
(no arbitrary code from a downloaded file), so it holds only tensors and plain Python
values: the RNG states are converted accordingly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoplens.config import atomic_write
from shoplens.errors import InvalidInputError, NotFoundError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    state = _read(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise InvalidInputError(f"{path} is not a shoplens training checkpoint (no 'model' entry)")
    return state


def _read(path: Path, map_location: str | torch.device) -> Any:
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt / foreign files
        raise InvalidInputError(f"cannot read checkpoint {path}: {e}") from None


def check_compatible(model: nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """Raise InvalidInputError naming the keys that differ between model and checkpoint."""
    from shoplens.models.io import check_state_dict

    check_state_dict(model, state_dict, f"checkpoint {source}")


def all_finite(model: nn.Module) -> bool:
    """True when every parameter and floating buffer of ``model`` is finite."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def load_model_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` from a training checkpoint or a bare state-dict file.

    A file written for another architecture raises InvalidInputError naming the keys.
    """
    path = Path(path)
    state = _read(path, "cpu")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict):
        raise InvalidInputError(f"{path} holds no state dict")
    check_compatible(model, state, str(path))
    model.load_state_dict(state)
    return model


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and ``random`` generator states, checkpoint-safe."""
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "random": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np_state = state["numpy"]
    keys = np_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    )
    random.setstate(state["random"])
