"""Linear probe: multinomial logistic regression on frozen embeddings (CLIP's protocol).

The objective is scikit-learn's ``LogisticRegression(C=C)`` (mean cross-entropy plus
``||W||² / (2 C N)``), minimised full-batch with torch's L-BFGS, so a probe needs no
extra dependency and agrees with scikit-learn on the same data.
"""

from __future__ import annotations

import numpy as np

from shoplens.errors import InvalidInputError


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    *,
    c: float = 1.0,
    max_iter: int = 200,
) -> np.ndarray:
    """Fit on (N, D) ``train_x`` with labels 0..n_classes-1, predict (M,) for (M, D) ``test_x``."""
    import torch

    x = np.asarray(train_x, dtype=np.float32)
    y = np.asarray(train_y, dtype=np.int64)
    t = np.asarray(test_x, dtype=np.float32)
    if x.ndim != 2 or t.ndim != 2 or x.shape[1] != t.shape[1] or len(x) != len(y) or not len(x):
        raise InvalidInputError(
            f"linear probe needs (N, D) training rows with N labels and (M, D) test rows; "
            f"got {x.shape}, {y.shape}, {t.shape}"
        )
    if c <= 0:
        raise InvalidInputError(f"linear probe: C must be > 0, got {c}")
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)  # (D, C)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)  # (C,)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )
    l2 = 1.0 / (2.0 * c * len(x))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = torch.from_numpy(t).double() @ w + b  # (M, C)
    return logits.argmax(dim=1).numpy()
