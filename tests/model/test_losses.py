"""JEPA loss, VICReg terms and collapse metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from geojepa.model.losses import collapse_metrics, jepa_loss, vicreg_terms


def test_jepa_loss_hand_values() -> None:
    pred = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    target = torch.tensor([[0.5, 2.0], [1.0, 2.0]])
    # Elements: 0.5 * 0.5^2 = 0.125, |2| - 0.5 = 1.5, 0, |3| - 0.5 = 2.5; mean = 4.125 / 4.
    assert jepa_loss(pred, target).item() == pytest.approx(4.125 / 4)
    assert jepa_loss(target, target).item() == 0.0


def test_jepa_loss_mask_keeps_padding_out() -> None:
    pred = torch.full((2, 3, 2), float("nan"))
    target = torch.full((2, 3, 2), float("inf"))
    mask = torch.tensor([[True, False, False], [False, True, False]])
    pred[0, 0], target[0, 0] = torch.tensor([0.0, 0.0]), torch.tensor([0.5, 2.0])
    pred[1, 1], target[1, 1] = torch.tensor([1.0, -1.0]), torch.tensor([1.0, 2.0])
    pred.requires_grad_(True)
    target.requires_grad_(True)
    loss = jepa_loss(pred, target, mask)
    assert loss.item() == pytest.approx(4.125 / 4)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()
    assert target.grad is None  # the target is detached


def test_jepa_loss_empty_and_errors() -> None:
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = jepa_loss(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    padded = torch.full((1, 2, 4), float("nan"), requires_grad=True)
    assert jepa_loss(padded, padded.detach(), torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError):
        jepa_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        jepa_loss(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        jepa_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


def test_vicreg_hand_values() -> None:
    # Orthogonal +-1 design: unbiased variance 4/3 per dimension, zero covariance.
    spread = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    variance, covariance = vicreg_terms(spread)
    assert variance.item() == 0.0
    assert covariance.item() == pytest.approx(0.0, abs=1e-7)
    # Perfectly correlated: covariance matrix [[2, 2], [2, 2]]; off-diagonal 2 * 4 / D = 4.
    variance, covariance = vicreg_terms(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    assert variance.item() == 0.0  # std sqrt(2 + 1e-4) >= 1
    assert covariance.item() == pytest.approx(4.0)
    # Small spread: std sqrt(0.02 + 1e-4) per dimension.
    small = torch.tensor([[0.1, 0.1], [-0.1, -0.1]])
    variance, _ = vicreg_terms(small)
    assert variance.item() == pytest.approx(1.0 - math.sqrt(0.02 + 1e-4))


def test_vicreg_collapsed_and_wide() -> None:
    collapsed = torch.ones(16, 8) * 3.0
    variance, covariance = vicreg_terms(collapsed)
    assert variance.item() == pytest.approx(1.0 - math.sqrt(1e-4))
    assert covariance.item() == 0.0
    wide = torch.randn(256, 8, generator=torch.Generator().manual_seed(0)) * 3.0
    variance, covariance = vicreg_terms(wide)
    assert variance.item() == 0.0
    assert covariance.item() > 0.0
    collapsed.requires_grad_(True)
    variance, _ = vicreg_terms(collapsed + torch.randn(16, 8) * 0.01)
    variance.backward()
    assert collapsed.grad is not None


def test_vicreg_mask_and_few_rows() -> None:
    x = torch.full((2, 3, 2), float("nan"))
    x[0, 0] = torch.tensor([1.0, 1.0])
    x[1, 2] = torch.tensor([-1.0, -1.0])
    mask = torch.isfinite(x).all(dim=-1)
    variance, covariance = vicreg_terms(x, mask)
    assert torch.isfinite(variance) and covariance.item() == pytest.approx(4.0)
    variance, covariance = vicreg_terms(torch.ones(1, 4))
    assert variance.item() == 0.0 and covariance.item() == 0.0


def test_collapse_metrics() -> None:
    same = torch.tensor([[1.0, 2.0, 3.0]]).repeat(10, 1)
    metrics = collapse_metrics(same)
    assert metrics["std"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["cosine"] == pytest.approx(1.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(512, 384, generator=g)
    metrics = collapse_metrics(rows)
    assert abs(metrics["cosine"]) < 0.01
    assert metrics["std"] == pytest.approx(1.0, abs=0.05)
    # Against the explicit pairwise matrix.
    few = torch.randn(7, 5, generator=g)
    unit = few / few.norm(dim=1, keepdim=True)
    sims = unit @ unit.T
    expected = (sims.sum() - sims.diagonal().sum()) / (7 * 6)
    assert collapse_metrics(few)["cosine"] == pytest.approx(expected.item(), abs=1e-6)
    std = few.std(dim=0, correction=0).mean().item()
    assert collapse_metrics(few)["std"] == pytest.approx(std, rel=1e-6)
    # Padding does not count; too few rows give NaN.
    padded = torch.cat([few, torch.full((3, 5), float("nan"))])[None]
    mask = torch.arange(10)[None] < 7
    assert collapse_metrics(padded, mask)["cosine"] == pytest.approx(expected.item(), abs=1e-6)
    one = collapse_metrics(torch.ones(1, 5))
    assert one["std"] == 0.0 and math.isnan(one["cosine"])
    assert math.isnan(collapse_metrics(torch.ones(0, 5))["std"])
