"""Schedules, parameter groups and the EMA update against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from geojepa.model.schedules import (
    apply_schedules,
    cosine_increase,
    ema_update,
    linear,
    param_groups,
    warmup_cosine,
)


def test_warmup_cosine_hand_values() -> None:
    base, final = 1e-3, 1e-6
    # 100 steps, 10 of warm-up.
    assert warmup_cosine(0, 100) == pytest.approx(final)
    assert warmup_cosine(5, 100) == pytest.approx(final + (base - final) / 2)
    assert warmup_cosine(10, 100) == pytest.approx(base)
    assert warmup_cosine(55, 100) == pytest.approx(final + (base - final) / 2)
    assert warmup_cosine(100, 100) == pytest.approx(final)
    assert warmup_cosine(250, 100) == pytest.approx(final)
    # A quarter into the decay: final + (base - final) * (1 + cos(pi / 4)) / 2.
    expected = final + (base - final) * (1 + math.cos(math.pi / 4)) / 2
    assert warmup_cosine(32.5, 100) == pytest.approx(expected)  # type: ignore[arg-type]
    assert warmup_cosine(0, 100, warmup_frac=0.0) == pytest.approx(base)
    assert warmup_cosine(3, 8, warmup_frac=0.5, base=2.0, final=0.0) == pytest.approx(1.5)


def test_warmup_cosine_is_monotone_in_each_phase() -> None:
    values = [warmup_cosine(step, 1000) for step in range(1001)]
    assert all(a <= b for a, b in zip(values[:100], values[1:101], strict=True))
    assert all(a >= b for a, b in zip(values[100:-1], values[101:], strict=True))


def test_cosine_increase_and_linear_hand_values() -> None:
    assert cosine_increase(0, 10) == pytest.approx(0.04)
    assert cosine_increase(5, 10) == pytest.approx(0.22)
    assert cosine_increase(10, 10) == pytest.approx(0.4)
    assert cosine_increase(20, 10) == pytest.approx(0.4)
    assert linear(0, 10) == pytest.approx(0.997)
    assert linear(5, 10) == pytest.approx((0.997 + 0.99999) / 2)
    assert linear(10, 10) == pytest.approx(0.99999)
    assert linear(11, 10) == pytest.approx(0.99999)
    assert linear(1, 4, start=0.0, end=1.0) == pytest.approx(0.25)


def test_schedules_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        warmup_cosine(0, 0)
    with pytest.raises(ValueError):
        warmup_cosine(0, 10, warmup_frac=1.0)
    with pytest.raises(ValueError):
        linear(0, -1)


class _Net(nn.Module):
    """A module with every kind of parameter that param_groups distinguishes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.conv = nn.Conv2d(3, 4, 2)
        self.norm = nn.LayerNorm(4)
        self.batch_norm = nn.BatchNorm1d(4)
        self.embed = nn.Embedding(5, 4)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_split() -> None:
    net = _Net()
    groups = param_groups(net, weight_decay=0.05)
    decay, no_decay = groups
    assert decay["apply_weight_decay"] and decay["weight_decay"] == 0.05
    assert not no_decay["apply_weight_decay"] and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]) == ids([net.linear.weight, net.conv.weight])
    assert ids(no_decay["params"]) == ids(
        [
            net.linear.bias,
            net.conv.bias,
            net.norm.weight,
            net.norm.bias,
            net.batch_norm.weight,
            net.batch_norm.bias,
            net.embed.weight,
            net.mask_token,
        ]
    )
    # Shared parameters appear once.
    shared = nn.Sequential(net.linear, net.linear)
    assert sum(len(g["params"]) for g in param_groups(shared, 0.1)) == 2


def test_apply_schedules_and_adamw_leave_no_decay_params_alone() -> None:
    net = _Net()
    optimizer = torch.optim.AdamW(param_groups(net, 0.04), lr=1e-3, betas=(0.9, 0.95))
    optimizer.add_param_group({"params": [nn.Parameter(torch.ones(2, 2))], "weight_decay": 0.0})
    apply_schedules(optimizer, lr=0.5, wd=0.2)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5, 0.5]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0, 0.2]
    # With zero gradients only decoupled weight decay moves the weights.
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(net.linear.weight, before["linear.weight"] * (1 - 0.5 * 0.2))
    torch.testing.assert_close(net.linear.bias, before["linear.bias"])
    torch.testing.assert_close(net.norm.weight, before["norm.weight"])
    torch.testing.assert_close(net.mask_token, before["mask_token"])


def test_ema_update_hand_values() -> None:
    target, online = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        target.weight.fill_(1.0)
        target.bias.fill_(2.0)
        online.weight.fill_(3.0)
        online.bias.fill_(-1.0)
    ema_update(target, online, 0.9)
    assert target.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)  # 1.2
    assert target.bias.item() == pytest.approx(0.9 * 2.0 + 0.1 * -1.0)  # 1.7
    assert online.weight.item() == 3.0 and online.bias.item() == -1.0
    assert target.weight.grad_fn is None
    ema_update(target, online, 1.0)
    assert target.weight.item() == pytest.approx(1.2)
    ema_update(target, online, 0.0)
    assert target.weight.item() == 3.0 and target.bias.item() == -1.0


def test_ema_update_copies_buffers_and_checks_modules() -> None:
    target, online = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    online.train()
    online(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    ema_update(target, online, 0.5)
    torch.testing.assert_close(target.running_mean, online.running_mean)
    torch.testing.assert_close(target.running_var, online.running_var)
    assert target.num_batches_tracked.item() == 1
    with pytest.raises(ValueError):
        ema_update(nn.Linear(1, 1), nn.Linear(1, 2), 0.9)
    with pytest.raises(ValueError):
        ema_update(nn.Linear(1, 1), nn.Linear(1, 1, bias=False), 0.9)
    with pytest.raises(ValueError):
        ema_update(nn.Linear(1, 1), nn.Linear(1, 1), 1.5)
