"""JEPA masking of padded, multimodal token sets (SPEC section 4).

A batch reaches the model as one padded token set per tile: ``boxes`` ``Float[B, N, 8]`` (the
4 corners of each token's minimum rotated box in the tile frame, where the tile spans
``[0, 1]^2``), ``modality`` ``Long[B, N]`` (0 = OSM entity, 1 = image patch, ...) and ``valid``
``Bool[B, N]`` (``False`` = padding). Every training step draws ONE strategy with exactly the
configured chances (:func:`resolve_probs`, :func:`draw_strategy`) and builds, per tile, a context
set and ``T`` target blocks:

* ``area``: ``T`` boxes of area ``area_scale`` with aspect ratio ``w / h`` drawn log-uniformly
  from ``aspect`` (so ``r`` and ``1 / r`` are equally likely), placed uniformly so that each box
  lies inside ``area_extent^2``. A target block holds the valid tokens, of any modality, whose box
  centroid (the mean of its 4 corners) lies in the closed target box. A box that catches no valid
  token is redrawn up to ``max_resamples`` times; if it still catches none, it is redrawn around
  a random valid token whose centroid lies in the extent (then shifted into the extent), so a
  block is empty only when no valid centroid lies in the extent at all.
* ``random``: ``T`` blocks, each a uniformly random subset of ``round(random_block * n)`` of the
  tile's ``n`` valid tokens (at least one).
* ``modality``: per tile, a random ordered pair of distinct modalities present in the tile;
  context = the valid tokens of the first, target block 0 = the valid tokens of the second, the
  other blocks are empty. A tile with fewer than two modalities falls back to area masking.

For ``area`` and ``random`` the context is every valid token in no target block. When it holds
fewer than ``ceil(min_context * n)`` tokens (and at least one), random target tokens move back to
the context (leaving every target block), sparing one random token per block where possible so
that blocks stay non-empty. Invariants, for every strategy: padding is never context or target,
context and targets never overlap, and a tile with ``n >= 2`` valid tokens has at least one context
and one target token (for area masks: provided a valid centroid lies in the extent, as it does for
every token inside the tile). A tile with a single valid token gets it as context and no target (the
encoder then never sees an empty context row). Everything is a deterministic function of the
inputs and the :class:`torch.Generator`; random numbers are drawn on the generator's device and
moved to the tokens' device, so a CPU generator works with tokens on any device.

:func:`gather_tokens` and :func:`gather_target_tokens` turn the masks into compact padded
indices, so the context encoder runs on context tokens only and the predictor handles all target
blocks of a batch in one batched pass; :func:`select_tokens` applies such an index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

STRATEGIES: tuple[str, ...] = ("area", "random", "modality")
"""The masking strategies, in the order in which :func:`draw_strategy` lays out their chances."""

DEFAULT_PROBS: dict[str, float] = {"area": 0.6, "random": 0.2, "modality": 0.2}
"""Default chances with two or more modalities; with one, modality's share goes to the others."""


@dataclass(frozen=True)
class MaskConfig:
    """Masking settings (SPEC section 4).

    Attributes:
        area_prob: Chance of the area strategy. ``None`` -> 0.6 with two or more modalities,
            0.75 with one.
        random_prob: Chance of the random strategy. ``None`` -> 0.2, or 0.25 with one modality.
        modality_prob: Chance of the modality strategy, used only when the batch holds two or
            more modalities. ``None`` -> 0.2, or 0 with one modality.
        num_targets: Target blocks per tile, ``T``.
        area_scale: Area of each target box, as a fraction of the tile's area.
        aspect: Range of the box aspect ratio ``width / height`` (drawn log-uniformly).
        area_extent: Interval ``[lo, hi]``; target boxes lie inside ``[lo, hi]^2``.
        min_context_area: Minimum context fraction of a tile's valid tokens for area masks.
        random_block: Fraction of a tile's valid tokens in each random target block.
        min_context_random: Minimum context fraction of a tile's valid tokens for random masks.
        max_resamples: How many times an area box that catches no valid token is redrawn
            uniformly before it is placed around a random token.

    Chances left as ``None`` share what the explicit ones leave, in proportion to their defaults
    (all ``None`` gives exactly the defaults); explicit chances must not sum to more than 1, and
    when all three are explicit they must sum to 1. With a single modality the modality chance is
    dropped and area and random are rescaled to sum to 1 (see :func:`resolve_probs`).
    """

    area_prob: float | None = None
    random_prob: float | None = None
    modality_prob: float | None = None
    num_targets: int = 4
    area_scale: float = 0.35
    aspect: tuple[float, float] = (0.5, 2.0)
    area_extent: tuple[float, float] = (-0.1, 1.1)
    min_context_area: float = 0.15
    random_block: float = 0.45
    min_context_random: float = 0.10
    max_resamples: int = 10

    def __post_init__(self) -> None:
        """Reject settings that cannot produce valid masks.

        Raises:
            ValueError: If a setting is out of range or the chances are inconsistent.
        """
        given = [p for p in (self.area_prob, self.random_prob, self.modality_prob) if p is not None]
        if any(not 0.0 <= p <= 1.0 for p in given):
            raise ValueError(f"mask chances must lie in [0, 1], got {given}")
        if sum(given) > 1.0 + 1e-6 or (len(given) == 3 and abs(sum(given) - 1.0) > 1e-6):
            raise ValueError(f"mask chances must sum to 1, got {given}")
        if self.num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {self.num_targets}")
        if not 0.0 < self.area_scale <= 1.0:
            raise ValueError(f"area_scale must lie in (0, 1], got {self.area_scale}")
        lo, hi = self.aspect
        if not 0.0 < lo <= hi:
            raise ValueError(f"aspect must satisfy 0 < lo <= hi, got {self.aspect}")
        extent = self.area_extent[1] - self.area_extent[0]
        longest = math.sqrt(self.area_scale * max(hi, 1.0 / lo))
        if longest > extent:
            raise ValueError(
                f"a target box side of {longest:.3f} does not fit area_extent {self.area_extent}"
            )
        for name in ("min_context_area", "min_context_random"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.random_block <= 1.0:
            raise ValueError(f"random_block must lie in (0, 1], got {self.random_block}")
        if self.max_resamples < 0:
            raise ValueError(f"max_resamples must be >= 0, got {self.max_resamples}")


@dataclass
class Masks:
    """The masks of one batch.

    Attributes:
        strategy: The strategy drawn for the step: ``"area"``, ``"random"`` or ``"modality"``.
        context: ``Bool[B, N]``, the context tokens.
        targets: ``Bool[B, T, N]``, the target blocks (``T = num_targets``; modality masks use
            block 0 only, the others are empty).
        target_boxes: ``Float[B, T, 4]``, the area target boxes as ``xmin, ymin, xmax, ymax`` in
            the tile frame; NaN for tiles that were not area-masked.
    """

    strategy: str
    context: Tensor
    targets: Tensor
    target_boxes: Tensor


def resolve_probs(cfg: MaskConfig, num_modalities: int) -> dict[str, float]:
    """The chance of each strategy for a batch with ``num_modalities`` modalities.

    Unset chances share what the set ones leave, in proportion to :data:`DEFAULT_PROBS`. With
    fewer than two modalities the modality chance is 0 and area and random are rescaled to sum to
    1 (defaults: 0.75 / 0.25); if both are 0 there, area gets chance 1.

    Args:
        cfg: The masking settings.
        num_modalities: Number of distinct modalities among the batch's valid tokens.

    Returns:
        The chances, keyed by strategy name, summing to 1.
    """
    given = {"area": cfg.area_prob, "random": cfg.random_prob, "modality": cfg.modality_prob}
    explicit = sum(p for p in given.values() if p is not None)
    missing = [name for name, p in given.items() if p is None]
    weight = sum(DEFAULT_PROBS[name] for name in missing)
    probs = {
        name: (max(0.0, 1.0 - explicit) * DEFAULT_PROBS[name] / weight if p is None else p)
        for name, p in given.items()
    }
    if num_modalities >= 2:
        return probs
    single = probs["area"] + probs["random"]
    if single <= 0.0:
        return {"area": 1.0, "random": 0.0, "modality": 0.0}
    return {"area": probs["area"] / single, "random": probs["random"] / single, "modality": 0.0}


def draw_strategy(probs: dict[str, float], generator: torch.Generator) -> str:
    """Draw one strategy with exactly the given chances.

    Args:
        probs: Chance per strategy, as returned by :func:`resolve_probs`.
        generator: Source of randomness (one uniform number is drawn).

    Returns:
        The name of the drawn strategy; a strategy with chance 0 is never drawn.
    """
    u = float(torch.rand((), generator=generator, device=generator.device))
    allowed = [name for name in STRATEGIES if probs.get(name, 0.0) > 0.0]
    cumulative = 0.0
    for name in allowed:
        cumulative += probs[name]
        if u < cumulative:
            return name
    return allowed[-1]  # u fell in the rounding gap below 1


def sample_masks(
    boxes: Tensor, modality: Tensor, valid: Tensor, cfg: MaskConfig, generator: torch.Generator
) -> Masks:
    """Draw a strategy for the step and build its masks.

    Args:
        boxes: ``Float[B, N, 8]`` token boxes (4 corners, tile frame).
        modality: ``Long[B, N]`` token modality (any value on padding).
        valid: ``Bool[B, N]``, ``False`` on padding.
        cfg: Masking settings.
        generator: Source of randomness.

    Returns:
        The masks; see the module docstring for the rules.

    Raises:
        ValueError: If the tensors do not describe one padded batch.
    """
    _check_inputs(boxes, modality, valid)
    num_modalities = int(torch.unique(modality[valid]).numel())
    strategy = draw_strategy(resolve_probs(cfg, num_modalities), generator)
    if strategy == "area":
        return sample_area_masks(boxes, valid, cfg, generator)
    if strategy == "random":
        return sample_random_masks(valid, cfg, generator)
    return sample_modality_masks(boxes, modality, valid, cfg, generator)


def sample_area_masks(
    boxes: Tensor, valid: Tensor, cfg: MaskConfig, generator: torch.Generator
) -> Masks:
    """Area masks: target blocks are the tokens whose box centroid lies in a random target box.

    Args:
        boxes: ``Float[B, N, 8]`` token boxes (4 corners, tile frame).
        valid: ``Bool[B, N]``, ``False`` on padding.
        cfg: Masking settings (``num_targets``, ``area_scale``, ``aspect``, ``area_extent``,
            ``min_context_area``, ``max_resamples``).
        generator: Source of randomness.

    Returns:
        Masks with strategy ``"area"`` and the target boxes.

    Raises:
        ValueError: If ``boxes`` does not have shape ``[B, N, 8]``.
    """
    num_tiles, num_tokens = valid.shape
    if boxes.shape != (num_tiles, num_tokens, 8):
        raise ValueError(f"boxes must have shape {(num_tiles, num_tokens, 8)}, got {boxes.shape}")
    centroids = boxes.detach().float().reshape(num_tiles, num_tokens, 4, 2).mean(dim=2)
    target_boxes = _sample_boxes((num_tiles, cfg.num_targets), cfg, generator, valid.device)
    targets = _inside(centroids, valid, target_boxes)
    occupied = valid.any(dim=1, keepdim=True)
    for _ in range(cfg.max_resamples):
        redo = occupied & ~targets.any(dim=2)
        if not bool(redo.any()):
            break
        tile = redo.nonzero()[:, 0]
        fresh = _sample_boxes((tile.numel(),), cfg, generator, valid.device)
        target_boxes[redo] = fresh
        targets[redo] = _inside(centroids[tile], valid[tile], fresh[:, None])[:, 0]
    _anchor_empty_boxes(target_boxes, targets, centroids, valid, cfg, generator)
    context, targets = _ensure_context(targets, valid, cfg.min_context_area, generator)
    return Masks("area", context, targets, target_boxes)


def sample_random_masks(valid: Tensor, cfg: MaskConfig, generator: torch.Generator) -> Masks:
    """Random masks: each target block is a random ``random_block`` fraction of the valid tokens.

    Args:
        valid: ``Bool[B, N]``, ``False`` on padding.
        cfg: Masking settings (``num_targets``, ``random_block``, ``min_context_random``).
        generator: Source of randomness.

    Returns:
        Masks with strategy ``"random"``.
    """
    num_tiles, num_tokens = valid.shape
    count = valid.sum(dim=1)
    size = torch.floor(count.double() * cfg.random_block + 0.5).long()
    size = torch.where(count > 0, size.clamp(min=1), size)
    scores = _uniform((num_tiles, cfg.num_targets, num_tokens), generator, valid.device)
    scores = scores.masked_fill(~valid[:, None], 2.0)
    targets = valid[:, None] & (_ranks(scores) < size[:, None, None])
    context, targets = _ensure_context(targets, valid, cfg.min_context_random, generator)
    return Masks("random", context, targets, _no_boxes(num_tiles, cfg.num_targets, valid.device))


def sample_modality_masks(
    boxes: Tensor, modality: Tensor, valid: Tensor, cfg: MaskConfig, generator: torch.Generator
) -> Masks:
    """Modality masks: context = one modality of the tile, target block 0 = another.

    The ordered pair is drawn uniformly per tile among the modalities present in it. A tile
    with fewer than two modalities (but some valid token) is area-masked instead; its target
    boxes are then set in the result.

    Args:
        boxes: ``Float[B, N, 8]`` token boxes, used by the area fallback.
        modality: ``Long[B, N]`` token modality (any value on padding).
        valid: ``Bool[B, N]``, ``False`` on padding.
        cfg: Masking settings (``num_targets`` and the area settings for the fallback).
        generator: Source of randomness.

    Returns:
        Masks with strategy ``"modality"``.

    Raises:
        ValueError: If the tensors do not describe one padded batch.
    """
    _check_inputs(boxes, modality, valid)
    num_tiles, num_tokens = valid.shape
    num_kinds = int(modality[valid].max()) + 1 if bool(valid.any()) else 1
    kind = torch.where(valid, modality, 0)
    present = torch.zeros(num_tiles, num_kinds, dtype=torch.long, device=valid.device)
    present = present.scatter_reduce(1, kind, valid.long(), reduce="amax") > 0
    scores = _uniform((num_tiles, num_kinds), generator, valid.device).masked_fill(~present, -1.0)
    first = scores.argmax(dim=1)
    second = scores.scatter(1, first[:, None], -1.0).argmax(dim=1)
    paired = present.sum(dim=1) >= 2
    context = valid & paired[:, None] & (kind == first[:, None])
    targets = torch.zeros(
        num_tiles, cfg.num_targets, num_tokens, dtype=torch.bool, device=valid.device
    )
    targets[:, 0] = valid & paired[:, None] & (kind == second[:, None])
    target_boxes = _no_boxes(num_tiles, cfg.num_targets, valid.device)
    fallback = (~paired & valid.any(dim=1)).nonzero()[:, 0]
    if fallback.numel():
        area = sample_area_masks(boxes[fallback], valid[fallback], cfg, generator)
        context[fallback] = area.context
        targets[fallback] = area.targets
        target_boxes[fallback] = area.target_boxes
    return Masks("modality", context, targets, target_boxes)


def gather_tokens(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Compact the selected tokens of each row into a padded index.

    Args:
        mask: ``Bool[R, N]``, the tokens to keep in each row.

    Returns:
        ``index`` ``Long[R, M]`` and ``valid`` ``Bool[R, M]`` with ``M`` the largest count in a
        row: row ``r`` lists its selected positions in increasing order, then padding entries
        (``valid`` False, ``index`` 0, always safe to gather).
    """
    count = mask.sum(dim=1)
    width = int(count.max()) if mask.numel() else 0
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    keep = torch.arange(width, device=mask.device)[None] < count[:, None]
    return order.masked_fill(~keep, 0), keep


def gather_target_tokens(
    targets: Tensor, drop_empty: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten the target blocks of a batch into one padded index for a single predictor pass.

    Args:
        targets: ``Bool[B, T, N]`` target blocks.
        drop_empty: Leave out blocks without tokens (e.g. modality masks' blocks 1..T-1). If
            False, there is one row per block, row ``b * T + t``.

    Returns:
        ``index`` ``Long[R, M]``, ``valid`` ``Bool[R, M]`` (as in :func:`gather_tokens`) and
        ``tile`` ``Long[R]``, the tile of each row (to fetch its context and token features).
    """
    num_tiles, num_blocks, num_tokens = targets.shape
    flat = targets.reshape(num_tiles * num_blocks, num_tokens)
    tile = torch.arange(num_tiles, device=targets.device).repeat_interleave(num_blocks)
    if drop_empty:
        keep = flat.any(dim=1)
        flat, tile = flat[keep], tile[keep]
    index, valid = gather_tokens(flat)
    return index, valid, tile


def select_tokens(x: Tensor, index: Tensor, tile: Tensor | None = None) -> Tensor:
    """Gather per-token features with an index from :func:`gather_tokens` or its target form.

    Args:
        x: ``[B, N, ...]`` per-token features.
        index: ``Long[R, M]`` token positions.
        tile: ``Long[R]``, the tile of each row; ``None`` means row ``r`` is tile ``r``.

    Returns:
        ``[R, M, ...]`` features (padding entries hold token 0 of the row's tile).
    """
    rows = torch.arange(index.shape[0], device=index.device) if tile is None else tile
    return x[rows[:, None], index]


def _check_inputs(boxes: Tensor, modality: Tensor, valid: Tensor) -> None:
    """Check shapes and dtypes of a batch.

    Raises:
        ValueError: If the tensors do not describe one padded batch.
    """
    if valid.dtype != torch.bool or valid.ndim != 2:
        raise ValueError(f"valid must be a 2-D bool tensor, got {valid.dtype} {tuple(valid.shape)}")
    if boxes.shape != (*valid.shape, 8):
        raise ValueError(f"boxes must have shape {(*valid.shape, 8)}, got {tuple(boxes.shape)}")
    if modality.shape != valid.shape or modality.dtype != torch.long:
        raise ValueError(f"modality must be a long tensor of shape {tuple(valid.shape)}")
    if bool((modality[valid] < 0).any()):
        raise ValueError("modality must be >= 0 on valid tokens")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform ``[0, 1)`` numbers drawn on the generator's device, moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _ranks(scores: Tensor) -> Tensor:
    """The rank (0 = smallest) of each entry along the last dimension."""
    order = scores.argsort(dim=-1)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def _no_boxes(num_tiles: int, num_blocks: int, device: torch.device) -> Tensor:
    """NaN target boxes for tiles that were not area-masked."""
    return torch.full((num_tiles, num_blocks, 4), float("nan"), device=device)


def _sample_boxes(
    shape: tuple[int, ...], cfg: MaskConfig, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Random target boxes ``xmin, ymin, xmax, ymax`` of area ``area_scale`` inside the extent."""
    u = _uniform((*shape, 3), generator, device).double()
    lo, hi = math.log(cfg.aspect[0]), math.log(cfg.aspect[1])
    ratio = torch.exp(lo + u[..., 0] * (hi - lo))
    width = torch.sqrt(cfg.area_scale * ratio)
    height = cfg.area_scale / width
    start, stop = cfg.area_extent
    xmin = start + u[..., 1] * (stop - start - width)
    ymin = start + u[..., 2] * (stop - start - height)
    return torch.stack([xmin, ymin, xmin + width, ymin + height], dim=-1).float()


def _anchor_empty_boxes(
    target_boxes: Tensor,
    targets: Tensor,
    centroids: Tensor,
    valid: Tensor,
    cfg: MaskConfig,
    generator: torch.Generator,
) -> None:
    """Redraw each still empty target box around a random valid token inside the extent.

    The box keeps a freshly drawn size and a random offset of the anchor token within it, and is
    then shifted into the extent (which keeps the anchor inside). Blocks of tiles without such
    a token stay empty. Updates ``target_boxes`` and ``targets`` in place.
    """
    redo = valid.any(dim=1, keepdim=True) & ~targets.any(dim=2)
    if not bool(redo.any()):
        return
    tile = redo.nonzero()[:, 0]
    start, stop = cfg.area_extent
    reachable = valid[tile] & ((centroids[tile] >= start) & (centroids[tile] <= stop)).all(dim=2)
    scores = _uniform(tuple(reachable.shape), generator, valid.device).masked_fill(~reachable, -1)
    anchor = centroids[tile, scores.argmax(dim=1)].double()
    fresh = _sample_boxes((tile.numel(),), cfg, generator, valid.device).double()
    size = fresh[:, 2:] - fresh[:, :2]
    offset = 0.01 + 0.98 * _uniform((tile.numel(), 2), generator, valid.device).double()
    low = torch.minimum((anchor - offset * size).clamp(min=start), stop - size)
    anchored = torch.cat([low, low + size], dim=1).float()
    boxes = torch.where(reachable.any(dim=1, keepdim=True), anchored, target_boxes[redo])
    target_boxes[redo] = boxes
    targets[redo] = _inside(centroids[tile], valid[tile], boxes[:, None])[:, 0]


def _inside(centroids: Tensor, valid: Tensor, target_boxes: Tensor) -> Tensor:
    """``Bool[B, T, N]``: valid tokens whose centroid lies in the closed target box."""
    x, y = centroids[:, None, :, 0], centroids[:, None, :, 1]
    xmin, ymin, xmax, ymax = target_boxes[..., None].unbind(dim=2)
    return valid[:, None] & (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)


def _ensure_context(
    targets: Tensor, valid: Tensor, min_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Context = valid tokens in no block, topped up from random target tokens to the minimum.

    The minimum is ``max(1, ceil(min_fraction * n))`` tokens, capped at ``n - 1`` so that a
    target remains (a tile with one valid token keeps it as context). Moved tokens leave every
    block. One random token per non-empty block is moved only when the others do not suffice.

    Returns:
        ``(context Bool[B, N], targets Bool[B, T, N])``.
    """
    union = targets.any(dim=1)
    context = valid & ~union
    count = valid.sum(dim=1)
    need = torch.ceil(count.double() * min_fraction - 1e-9).long().clamp(min=1)
    need = torch.where(count >= 2, torch.minimum(need, count - 1), count)
    deficit = (need - context.sum(dim=1)).clamp(min=0)
    if not bool(deficit.any()):
        return context, targets
    num_tiles, num_blocks, num_tokens = targets.shape
    picks = _uniform((num_tiles, num_blocks, num_tokens), generator, valid.device)
    spare = picks.masked_fill(~targets, -1.0).argmax(dim=2)
    protected = torch.zeros(num_tiles, num_tokens, dtype=torch.long, device=valid.device)
    protected.scatter_add_(1, spare, targets.any(dim=2).long())
    scores = _uniform((num_tiles, num_tokens), generator, valid.device) + (protected > 0).float()
    scores = scores.masked_fill(~union, math.inf)
    moved = union & (_ranks(scores) < deficit[:, None])
    return context | moved, targets & ~moved[:, None]
