"""JEPA loss, VICReg anti-collapse terms and collapse metrics (SPEC section 4).

Every function takes rows ``x`` ``Float[K, D]`` that are all real tokens, or a padded tensor
``[..., D]`` together with a ``mask`` ``Bool[...]`` that marks its real rows. Rows are *selected*
(never multiplied by the mask), so padding cannot enter a result, not even through NaN or
infinite values in padded rows. Computations run in float32 whatever the input precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

VICREG_EPS = 1e-4
"""Added to the variance before the square root in the VICReg variance hinge."""


def _rows(x: Tensor, mask: Tensor | None) -> Tensor:
    """The real rows of ``x`` as a float32 ``[K, D]`` tensor.

    Raises:
        ValueError: If ``x`` is not 2-D and no mask is given, or the mask does not fit ``x``.
    """
    if mask is None:
        if x.ndim != 2:
            raise ValueError(f"a [K, D] tensor or a mask is required, got shape {tuple(x.shape)}")
        return x.float()
    if mask.dtype != torch.bool or mask.shape != x.shape[:-1]:
        raise ValueError(f"mask must be bool of shape {tuple(x.shape[:-1])}, got {mask.shape}")
    return x[mask].float()


def jepa_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Smooth-L1 (beta 1) between predictions and targets, averaged over real target positions.

    The mean runs over the selected rows and their ``D`` features; the target is detached.
    Without rows the loss is a zero that keeps ``pred`` in the graph.

    Args:
        pred: ``Float[K, D]`` predictions, or ``[..., D]`` with ``mask``.
        target: Target embeddings, same shape as ``pred``.
        mask: ``Bool[...]``, the real target positions of padded inputs.

    Returns:
        The scalar loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    rows = _rows(pred, mask)
    if rows.shape[0] == 0:
        return rows.sum() * 0.0
    return F.smooth_l1_loss(rows, _rows(target.detach(), mask), beta=1.0)


def vicreg_terms(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """VICReg variance and covariance terms of a set of embeddings.

    ``variance = mean_d relu(1 - sqrt(var_d + 1e-4))`` and
    ``covariance = sum_{i != j} C_ij^2 / D`` with ``C`` the (unbiased) covariance matrix. Both
    are 0 with fewer than 2 rows.

    Args:
        x: ``Float[K, D]`` embeddings, or ``[..., D]`` with ``mask``.
        mask: ``Bool[...]``, the real rows of padded inputs.

    Returns:
        ``(variance_loss, covariance_loss)``, scalars.
    """
    rows = _rows(x, mask)
    count, dim = rows.shape
    if count < 2:
        zero = rows.sum() * 0.0
        return zero, zero
    centred = rows - rows.mean(dim=0)
    std = torch.sqrt(centred.var(dim=0) + VICREG_EPS)
    variance = F.relu(1.0 - std).mean()
    cov = centred.T @ centred / (count - 1)
    covariance = (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / dim
    return variance, covariance


@torch.no_grad()
def collapse_metrics(x: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """Collapse indicators of a set of embeddings, for logging.

    Args:
        x: ``Float[K, D]`` embeddings, or ``[..., D]`` with ``mask``.
        mask: ``Bool[...]``, the real rows of padded inputs.

    Returns:
        ``"std"``: per-dimension standard deviation across the rows (population, i.e. without
        Bessel's correction), averaged over dimensions (0 when fully collapsed; NaN without
        rows). ``"cosine"``: mean cosine similarity over all pairs of distinct rows (1 when
        collapsed to one direction, near 0 for random rows; NaN with fewer than 2 rows),
        computed in ``O(K D)`` from the sum of the normalised rows.
    """
    rows = _rows(x, mask)
    count = rows.shape[0]
    if count == 0:
        return {"std": math.nan, "cosine": math.nan}
    std = float(rows.std(dim=0, correction=0).mean())
    if count < 2:
        return {"std": std, "cosine": math.nan}
    unit = F.normalize(rows, dim=1)
    pair_sum = unit.sum(dim=0).pow(2).sum() - unit.pow(2).sum()
    return {"std": std, "cosine": float(pair_sum / (count * (count - 1)))}
