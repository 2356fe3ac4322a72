"""Exponential moving average of model weights (``torch.optim.swa_utils.AveragedModel``)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An EMA copy of ``model`` (parameters and buffers), or None when ``decay`` is None.

    Call ``ema.update_parameters(model)`` after each optimizer step; the first call copies
    the weights, later ones do ``ema = decay * ema + (1 - decay) * weights``. The averaged
    network is ``ema.module``.
    """
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
