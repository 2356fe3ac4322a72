"""Losses against naive reference implementations written with Python loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shoplens.errors import InvalidInputError
from shoplens.losses import (
    InfoNCELoss,
    SigLIPLoss,
    accuracy,
    classification_loss,
    groups_from_texts,
    info_nce,
    multilabel_loss,
    positive_mask,
    siglip_loss,
)


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1)


def naive_info_nce(logits: torch.Tensor, pos: torch.Tensor) -> float:
    """Mean over rows of -(1/|P_i|) sum_{j in P_i} log softmax(logits_i)_j."""
    total = 0.0
    for i in range(logits.shape[0]):
        denom = sum(math.exp(float(v)) for v in logits[i])
        positives = [j for j in range(logits.shape[1]) if pos[i, j]]
        total += -sum(math.log(math.exp(float(logits[i, j])) / denom) for j in positives) / len(
            positives
        )
    return total / logits.shape[0]


def naive_siglip(logits: torch.Tensor, pos: torch.Tensor) -> float:
    total = 0.0
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            z = 1.0 if pos[i, j] else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-z * float(logits[i, j]))))
    return total / logits.shape[0]


def test_info_nce_matches_naive_single_and_multi_positive() -> None:
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 3
    diag = torch.eye(5, dtype=torch.bool)
    assert float(info_nce(logits, diag)) == pytest.approx(naive_info_nce(logits, diag), rel=1e-5)
    assert float(info_nce(logits, diag)) == pytest.approx(
        float(F.cross_entropy(logits, torch.arange(5))), rel=1e-6
    )
    groups = torch.tensor([0, 0, 1, 2, 2])
    multi = positive_mask(groups)
    assert float(info_nce(logits, multi)) == pytest.approx(naive_info_nce(logits, multi), rel=1e-5)


def test_symmetric_info_nce_module_matches_naive_both_directions() -> None:
    a, b = unit(6, 8, 1), unit(6, 8, 2)
    loss_fn = InfoNCELoss(init_temperature=0.1)
    pos = positive_mask(torch.tensor([0, 1, 1, 2, 3, 3]))
    logits = 10.0 * a @ b.T
    want = (naive_info_nce(logits, pos) + naive_info_nce(logits.T, pos.T)) / 2
    assert float(loss_fn(a, b, pos).detach()) == pytest.approx(want, rel=1e-5)
    assert float(loss_fn.scale.detach()) == pytest.approx(10.0, rel=1e-5)


def test_logit_scale_is_learnable_and_clamped() -> None:
    loss_fn = InfoNCELoss(init_temperature=0.07, max_scale=100.0)
    loss_fn(unit(4, 8, 3), unit(4, 8, 4)).backward()
    assert loss_fn.log_scale.grad is not None and float(loss_fn.log_scale.grad) != 0.0
    with torch.no_grad():
        loss_fn.log_scale.fill_(10.0)  # exp(10) > 100
    assert float(loss_fn.scale.detach()) == pytest.approx(100.0, rel=1e-5)


def test_siglip_matches_naive_and_has_learnable_bias() -> None:
    a, b = unit(5, 8, 5), unit(5, 8, 6)
    pos = positive_mask(torch.tensor([0, 0, 1, 2, 3]))
    loss_fn = SigLIPLoss(init_scale=10.0, init_bias=-10.0)
    logits = 10.0 * a @ b.T - 10.0
    assert float(siglip_loss(logits, pos)) == pytest.approx(naive_siglip(logits, pos), rel=1e-5)
    loss = loss_fn(a, b, pos)
    assert float(loss.detach()) == pytest.approx(naive_siglip(logits, pos), rel=1e-5)
    loss.backward()
    assert loss_fn.bias.grad is not None and float(loss_fn.bias.grad) != 0.0


@pytest.mark.parametrize("loss", [info_nce, siglip_loss])
def test_same_group_pairs_are_pulled_together_not_pushed_apart(loss: object) -> None:
    """Rows 0 and 1 share a text/label: with the mask the loss pulls image 0 towards
    text 1 (negative gradient on their logit); the diagonal-only loss pushes it away."""
    groups = groups_from_texts(["boot", "boot", "bag", "dress"])
    assert groups.tolist() == [0, 0, 1, 2]
    base = torch.tensor(
        [[5.0, 1.0, 0.0, 0.0], [1.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 5.0]]
    )
    grads = {}
    for name, pos in (("masked", positive_mask(groups)), ("diagonal", torch.eye(4).bool())):
        logits = base.clone().requires_grad_(True)
        loss(logits, pos).backward()  # type: ignore[operator]
        grads[name] = float(logits.grad[0, 1])  # type: ignore[index]
    assert grads["masked"] < 0 < grads["diagonal"]


def test_contrastive_shape_errors_are_clear() -> None:
    with pytest.raises(InvalidInputError, match="positives must be"):
        InfoNCELoss()(unit(3, 4, 0), unit(3, 4, 1), torch.eye(2, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match=r"\(B, D\) and \(M, D\)"):
        SigLIPLoss()(unit(3, 4, 0), unit(3, 5, 1))
    with pytest.raises(InvalidInputError, match="at least one positive"):
        info_nce(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))


def test_classification_loss_with_label_smoothing_matches_manual() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    eps, c = 0.1, 3
    logp = F.log_softmax(logits, dim=1)
    manual = -(((1 - eps) * logp[torch.arange(2), labels] + eps / c * logp.sum(dim=1)).mean())
    assert float(classification_loss(logits, labels, eps)) == pytest.approx(float(manual), rel=1e-6)


def test_classification_ignores_unlabelled_rows_and_rejects_bad_labels() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    labels = torch.tensor([0, -1, 1])
    assert float(accuracy(logits, labels)) == pytest.approx(0.5)
    want = float(F.cross_entropy(logits[[0, 2]], labels[[0, 2]]))
    assert float(classification_loss(logits, labels)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(InvalidInputError, match="label 7 is out of range for 2 classes"):
        classification_loss(logits, torch.tensor([0, 7, 1]))
    with pytest.raises(InvalidInputError, match="label_smoothing"):
        classification_loss(logits, labels, 1.5)


def test_multilabel_loss_masks_unknown_attributes() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 4.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    total, n = 0.0, 0
    for i in range(2):
        for j in range(2):
            if mask[i, j]:
                p = 1 / (1 + math.exp(-float(logits[i, j])))
                t = float(targets[i, j])
                total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
                n += 1
    assert float(multilabel_loss(logits, targets, mask)) == pytest.approx(total / n, rel=1e-5)
    with pytest.raises(InvalidInputError, match="shapes must match"):
        multilabel_loss(logits, targets[:1])
