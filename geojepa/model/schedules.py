"""Training schedules, optimiser parameter groups and the EMA update (SPEC section 4).

* Learning rate: linear warm-up over the first ``warmup_frac`` of the steps, then a half cosine
  down to ``final`` (:func:`warmup_cosine`).
* Weight decay: half-cosine rise from ``start`` to ``end`` (:func:`cosine_increase`).
* EMA momentum of the target encoder: linear rise (:func:`linear`).

Schedules are plain functions of ``(step, total)``; steps past ``total`` hold the final value.
:func:`param_groups` splits a module's trainable parameters into a decayed and a non-decayed
group, and :func:`apply_schedules` writes the current values into an optimiser.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

NO_DECAY_NAME_PARTS: tuple[str, ...] = ("token", "pos_embed")
"""Parameters whose own name contains one of these (learned mask/register/CLS tokens, position
tables) are not weight-decayed: shrinking learned vectors towards zero regularises nothing."""

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)


def _progress(step: int, total: int) -> float:
    """``step / total`` clamped to ``[0, 1]``.

    Raises:
        ValueError: If ``total`` is not positive.
    """
    if total <= 0:
        raise ValueError(f"total must be > 0, got {total}")
    return min(max(step / total, 0.0), 1.0)


def warmup_cosine(
    step: int, total: int, warmup_frac: float = 0.1, base: float = 1e-3, final: float = 1e-6
) -> float:
    """Learning rate: linear warm-up from ``final`` to ``base``, then cosine back to ``final``.

    Warm-up starts at ``final`` rather than 0 so that the first step already moves the weights.
    With ``W = warmup_frac * total``: ``lr = final + (base - final) * step / W`` for ``step < W``,
    then ``lr = final + (base - final) * (1 + cos(pi * (step - W) / (total - W))) / 2``.

    Args:
        step: Current optimiser step (0-based).
        total: Total number of optimiser steps.
        warmup_frac: Fraction of the steps spent warming up, in ``[0, 1)``.
        base: Peak learning rate.
        final: Learning rate at the start of warm-up and at the end.

    Returns:
        The learning rate at ``step``.
    """
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must lie in [0, 1), got {warmup_frac}")
    _progress(step, total)
    warmup = warmup_frac * total
    if step < warmup:
        return final + (base - final) * max(step, 0) / warmup
    fraction = min((step - warmup) / (total - warmup), 1.0)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def cosine_increase(step: int, total: int, start: float = 0.04, end: float = 0.4) -> float:
    """Weight decay rising along a half cosine from ``start`` (step 0) to ``end`` (step ``total``).

    Args:
        step: Current optimiser step.
        total: Total number of optimiser steps.
        start: Value at step 0.
        end: Value from step ``total`` on.

    Returns:
        ``end + (start - end) * (1 + cos(pi * step / total)) / 2``.
    """
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, total)))


def linear(step: int, total: int, start: float = 0.997, end: float = 0.99999) -> float:
    """A value moving linearly from ``start`` to ``end`` (the EMA momentum by default).

    Args:
        step: Current optimiser step.
        total: Total number of optimiser steps.
        start: Value at step 0.
        end: Value from step ``total`` on.

    Returns:
        ``start + (end - start) * step / total``.
    """
    return start + (end - start) * _progress(step, total)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split a module's trainable parameters into a decayed and a non-decayed group.

    Not decayed: every parameter with fewer than 2 dimensions (biases, norm scales), all
    parameters of normalisation layers, ``nn.Embedding`` tables, and parameters whose own name
    contains a part of :data:`NO_DECAY_NAME_PARTS`. Frozen parameters (``requires_grad`` False)
    are left out. Each group carries ``"apply_weight_decay"`` for :func:`apply_schedules`; an
    empty group is left out.

    Args:
        module: The module to optimise.
        weight_decay: Initial weight decay of the decayed group.

    Returns:
        Parameter groups for a ``torch.optim`` optimiser.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for owner in module.modules():
        for name, param in owner.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = (
                param.ndim < 2
                or isinstance(owner, (*_NORM_TYPES, nn.Embedding))
                or any(part in name for part in NO_DECAY_NAME_PARTS)
            )
            (no_decay if exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "apply_weight_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_weight_decay": False},
    ]
    return [group for group in groups if group["params"]]


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Set the learning rate of every group and the weight decay of the decayed groups.

    Groups marked ``"apply_weight_decay": False`` (see :func:`param_groups`) keep decay 0; groups
    without the mark count as decayed.

    Args:
        optimizer: The optimiser to update in place.
        lr: Learning rate for every group.
        wd: Weight decay for the decayed groups.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("apply_weight_decay", True) else 0.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Move the target towards the online module: ``target = m * target + (1 - m) * online``.

    Every parameter is averaged (frozen ones included); buffers (e.g. norm statistics) are
    copied from the online module.

    Args:
        target: The EMA module, updated in place.
        online: The trained module, with the same parameter and buffer names.
        momentum: ``m`` in ``[0, 1]``.

    Raises:
        ValueError: If ``momentum`` is out of range or the modules do not match.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    target_params = dict(target.named_parameters())
    online_params = dict(online.named_parameters())
    if target_params.keys() != online_params.keys():
        raise ValueError("target and online modules have different parameters")
    names = list(target_params)
    mine = [target_params[name] for name in names]
    theirs = [online_params[name].detach() for name in names]
    if any(a.shape != b.shape for a, b in zip(mine, theirs, strict=True)):
        raise ValueError("target and online parameters differ in shape")
    if mine:
        torch._foreach_mul_(mine, momentum)
        torch._foreach_add_(mine, theirs, alpha=1.0 - momentum)
    target_buffers = dict(target.named_buffers())
    online_buffers = dict(online.named_buffers())
    if target_buffers.keys() != online_buffers.keys():
        raise ValueError("target and online modules have different buffers")
    for name, buffer in target_buffers.items():
        buffer.copy_(online_buffers[name])
