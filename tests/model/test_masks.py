"""Property tests of the JEPA masks (SPEC section 4) and of the token-gathering helpers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geojepa.model.masks import (
    MaskConfig,
    Masks,
    draw_strategy,
    gather_target_tokens,
    gather_tokens,
    resolve_probs,
    sample_area_masks,
    sample_masks,
    sample_modality_masks,
    sample_random_masks,
    select_tokens,
)

PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch: per-tile valid counts from 0 to N (prefix or scattered), boxes that are
    points, axis-aligned or rotated rectangles (some centroids outside the tile), one or two
    modalities, and adversarial padding (boxes at the tile centre, odd modality values)."""
    num_tiles = draw(st.integers(1, 4))
    num_tokens = draw(st.integers(1, 40))
    counts = draw(st.lists(st.integers(0, num_tokens), min_size=num_tiles, max_size=num_tiles))
    scattered = draw(st.booleans())
    shape = draw(st.sampled_from(["points", "rects", "rotated"]))
    two_modalities = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    valid = torch.arange(num_tokens)[None] < torch.tensor(counts)[:, None]
    if scattered:
        perm = torch.rand(num_tiles, num_tokens, generator=g).argsort(dim=1)
        valid = torch.gather(valid, 1, perm)
    centre = torch.rand(num_tiles, num_tokens, 1, 2, generator=g) * 1.4 - 0.2
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if shape == "points":
        half = torch.full((num_tiles, num_tokens, 1, 2), 0.002)
    else:
        half = torch.rand(num_tiles, num_tokens, 1, 2, generator=g) * 0.2
    offsets = corners * half
    if shape == "rotated":
        angle = torch.rand(num_tiles, num_tokens, 1, generator=g) * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        offsets = torch.stack(
            [
                cos * offsets[..., 0] - sin * offsets[..., 1],
                sin * offsets[..., 0] + cos * offsets[..., 1],
            ],
            dim=-1,
        )
    boxes = (centre + offsets).reshape(num_tiles, num_tokens, 8)
    boxes[~valid] = 0.5
    if two_modalities:
        modality = torch.randint(0, 2, (num_tiles, num_tokens), generator=g)
    else:
        modality = torch.zeros(num_tiles, num_tokens, dtype=torch.long)
    modality[~valid] = 7
    return boxes, modality, valid


def _need(count: torch.Tensor, fraction: float) -> torch.Tensor:
    """The minimum context size, as documented in the masks module."""
    need = torch.ceil(count.double() * fraction - 1e-9).long().clamp(min=1)
    return torch.where(count >= 2, torch.minimum(need, count - 1), count)


def _inside(boxes: torch.Tensor, valid: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """Reference: valid tokens whose box centroid lies in the closed target box, [B, T, N]."""
    centroid = boxes.reshape(*boxes.shape[:2], 4, 2).mean(dim=2)
    x, y = centroid[:, None, :, 0], centroid[:, None, :, 1]
    b = target_boxes[..., None]
    return valid[:, None] & (x >= b[:, :, 0]) & (x <= b[:, :, 2]) & (y >= b[:, :, 1]) & (
        y <= b[:, :, 3]
    )


def _reachable(boxes: torch.Tensor, valid: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Bool[B]: tiles with a valid token whose centroid lies in the area extent."""
    centroid = boxes.reshape(*boxes.shape[:2], 4, 2).mean(dim=2)
    lo, hi = cfg.area_extent
    return (valid & ((centroid >= lo) & (centroid <= hi)).all(dim=2)).any(dim=1)


def _check_invariants(
    masks: Masks, valid: torch.Tensor, num_targets: int, targetable: torch.Tensor | None = None
) -> None:
    """Padding is never chosen, context and targets are disjoint, non-trivial tiles have both
    (a target only where ``targetable``, for area masks of tokens outside the extent)."""
    num_tiles, num_tokens = valid.shape
    assert masks.context.shape == (num_tiles, num_tokens)
    assert masks.targets.shape == (num_tiles, num_targets, num_tokens)
    assert masks.target_boxes.shape == (num_tiles, num_targets, 4)
    assert masks.context.dtype == torch.bool and masks.targets.dtype == torch.bool
    assert not (masks.context & ~valid).any()
    assert not (masks.targets & ~valid[:, None]).any()
    assert not (masks.context[:, None] & masks.targets).any()
    count = valid.sum(dim=1)
    has_context = masks.context.any(dim=1)
    has_target = masks.targets.any(dim=(1, 2))
    assert (has_context[count >= 2]).all()
    if targetable is None:
        targetable = torch.ones_like(has_target)
    assert (has_target[(count >= 2) & targetable]).all()
    single = count == 1
    assert torch.equal(masks.context[single], valid[single])
    assert not has_target[count <= 1].any()


def _check_area(
    masks: Masks, boxes: torch.Tensor, valid: torch.Tensor, cfg: MaskConfig, tiles: torch.Tensor
) -> None:
    """Area rules on the given tiles: box geometry, exact centroid membership, minimum context."""
    tb = masks.target_boxes[tiles]
    assert torch.isfinite(tb).all()
    width, height = tb[..., 2] - tb[..., 0], tb[..., 3] - tb[..., 1]
    torch.testing.assert_close(width * height, torch.full_like(width, cfg.area_scale))
    ratio = width / height
    assert (ratio >= cfg.aspect[0] - 1e-5).all() and (ratio <= cfg.aspect[1] + 1e-5).all()
    lo, hi = cfg.area_extent
    assert (tb >= lo - 1e-6).all() and (tb <= hi + 1e-6).all()

    inside = _inside(boxes[tiles], valid[tiles], tb)
    context, targets, tile_valid = masks.context[tiles], masks.targets[tiles], valid[tiles]
    # Exactly the centroid rule, except tokens moved back to the context.
    assert torch.equal(targets, inside & ~context[:, None])
    raw_context = tile_valid & ~inside.any(dim=1)
    assert not (raw_context & ~context).any()
    need = _need(tile_valid.sum(dim=1), cfg.min_context_area)
    expected = torch.maximum(raw_context.sum(dim=1), need)
    assert torch.equal(context.sum(dim=1), expected)
    # Blocks are empty only when no valid centroid lies in the extent or tokens had to move.
    reachable = _reachable(boxes[tiles], tile_valid, cfg)
    assert inside.any(dim=2)[reachable].all()
    no_moves = reachable & (raw_context.sum(dim=1) >= need)
    assert targets.any(dim=2)[no_moves].all()


@PROPERTY
@given(batch=batches(), seed=st.integers(0, 2**31 - 1))
def test_area_masks(batch: tuple[torch.Tensor, ...], seed: int) -> None:
    boxes, _, valid = batch
    cfg = MaskConfig()
    masks = sample_area_masks(boxes, valid, cfg, torch.Generator().manual_seed(seed))
    assert masks.strategy == "area"
    _check_invariants(masks, valid, cfg.num_targets, _reachable(boxes, valid, cfg))
    _check_area(masks, boxes, valid, cfg, torch.arange(valid.shape[0]))


@PROPERTY
@given(
    batch=batches(),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.05, 0.6),
    min_context=st.floats(0.0, 0.9),
    num_targets=st.integers(1, 6),
)
def test_area_masks_custom(
    batch: tuple[torch.Tensor, ...], seed: int, scale: float, min_context: float, num_targets: int
) -> None:
    boxes, _, valid = batch
    cfg = MaskConfig(area_scale=scale, min_context_area=min_context, num_targets=num_targets)
    masks = sample_area_masks(boxes, valid, cfg, torch.Generator().manual_seed(seed))
    _check_invariants(masks, valid, num_targets, _reachable(boxes, valid, cfg))
    _check_area(masks, boxes, valid, cfg, torch.arange(valid.shape[0]))


@PROPERTY
@given(batch=batches(), seed=st.integers(0, 2**31 - 1), block=st.floats(0.05, 1.0))
def test_random_masks(batch: tuple[torch.Tensor, ...], seed: int, block: float) -> None:
    _, _, valid = batch
    cfg = MaskConfig(random_block=block)
    masks = sample_random_masks(valid, cfg, torch.Generator().manual_seed(seed))
    assert masks.strategy == "random"
    _check_invariants(masks, valid, cfg.num_targets)
    assert torch.isnan(masks.target_boxes).all()
    count = valid.sum(dim=1)
    size = torch.where(count > 0, torch.floor(count * block + 0.5).long().clamp(min=1), 0)
    context = masks.context.sum(dim=1)
    need = _need(count, cfg.min_context_random)
    assert (context >= need).all()
    block_sizes = masks.targets.sum(dim=2)
    assert (block_sizes <= size[:, None]).all()
    # Tokens are only ever moved *to* the context, until it reaches the minimum exactly; so a
    # tile whose context exceeds the minimum kept its blocks whole.
    whole = context > need
    assert torch.equal(block_sizes[whole], size[whole, None].expand(-1, cfg.num_targets))


@PROPERTY
@given(batch=batches(), seed=st.integers(0, 2**31 - 1))
def test_modality_masks(batch: tuple[torch.Tensor, ...], seed: int) -> None:
    boxes, modality, valid = batch
    cfg = MaskConfig()
    masks = sample_modality_masks(boxes, modality, valid, cfg, torch.Generator().manual_seed(seed))
    assert masks.strategy == "modality"
    kinds = [set(modality[b][valid[b]].tolist()) for b in range(valid.shape[0])]
    paired = torch.tensor([len(k) >= 2 for k in kinds])
    _check_invariants(masks, valid, cfg.num_targets, paired | _reachable(boxes, valid, cfg))
    for b in torch.nonzero(paired)[:, 0].tolist():
        context_kinds = set(modality[b][masks.context[b]].tolist())
        target_kinds = set(modality[b][masks.targets[b, 0]].tolist())
        assert len(context_kinds) == 1 and len(target_kinds) == 1
        assert context_kinds != target_kinds
        # All valid tokens of each chosen modality.
        assert torch.equal(masks.context[b], valid[b] & (modality[b] == context_kinds.pop()))
        assert torch.equal(masks.targets[b, 0], valid[b] & (modality[b] == target_kinds.pop()))
        assert not masks.targets[b, 1:].any()
        assert torch.isnan(masks.target_boxes[b]).all()
    fallback = torch.nonzero(~paired & valid.any(dim=1))[:, 0]
    _check_area(masks, boxes, valid, cfg, fallback)
    empty = ~valid.any(dim=1)
    assert torch.isnan(masks.target_boxes[empty]).all()


@PROPERTY
@given(batch=batches(), seed=st.integers(0, 2**31 - 1))
def test_sample_masks_invariants_and_determinism(
    batch: tuple[torch.Tensor, ...], seed: int
) -> None:
    boxes, modality, valid = batch
    cfg = MaskConfig()
    first = sample_masks(boxes, modality, valid, cfg, torch.Generator().manual_seed(seed))
    paired = torch.tensor([len(set(m[v].tolist())) >= 2 for m, v in zip(modality, valid)])
    targetable = {
        "area": _reachable(boxes, valid, cfg),
        "random": torch.ones_like(paired),
        "modality": paired | _reachable(boxes, valid, cfg),
    }[first.strategy]
    _check_invariants(first, valid, cfg.num_targets, targetable)
    if first.strategy == "area":
        _check_area(first, boxes, valid, cfg, torch.arange(valid.shape[0]))
    # Same seed, same masks; padding content has no influence.
    boxes2, modality2 = boxes.clone(), modality.clone()
    boxes2[~valid] = float("nan")
    modality2[~valid] = 0
    second = sample_masks(boxes2, modality2, valid, cfg, torch.Generator().manual_seed(seed))
    assert first.strategy == second.strategy
    assert torch.equal(first.context, second.context)
    assert torch.equal(first.targets, second.targets)
    assert torch.equal(first.target_boxes.isnan(), second.target_boxes.isnan())
    finite = ~first.target_boxes.isnan()
    assert torch.equal(first.target_boxes[finite], second.target_boxes[finite])


def test_different_seeds_differ() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(4, 50, 2, generator=g).repeat(1, 1, 4)
    valid = torch.ones(4, 50, dtype=torch.bool)
    cfg = MaskConfig()
    a = sample_area_masks(boxes, valid, cfg, torch.Generator().manual_seed(1))
    b = sample_area_masks(boxes, valid, cfg, torch.Generator().manual_seed(2))
    assert not torch.equal(a.targets, b.targets)


def test_area_blocks_never_empty_needlessly() -> None:
    """Boxes that miss every token are redrawn (finally around a token), and moving tokens back
    to the context spares one token per block, even for a cluster in a tile corner."""
    num_tiles = 200
    for corner, resamples in ((0.5, 10), (0.01, 10), (0.01, 0), (0.99, 3)):
        centre = torch.tensor([corner, corner]) + torch.linspace(-0.005, 0.005, 10)[:, None]
        boxes = centre.repeat(num_tiles, 1, 4)
        valid = torch.ones(num_tiles, 10, dtype=torch.bool)
        cfg = MaskConfig(min_context_area=0.5, max_resamples=resamples)
        masks = sample_area_masks(boxes, valid, cfg, torch.Generator().manual_seed(0))
        assert masks.targets.any(dim=2).all()
        assert (masks.context.sum(dim=1) == 5).all()
        _check_area(masks, boxes, valid, cfg, torch.arange(num_tiles))


def _frequencies(
    cfg: MaskConfig, modalities: int, draws: int, seed: int
) -> tuple[dict[str, int], dict[str, float]]:
    """Strategy counts of ``draws`` calls to sample_masks on a small batch."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(2, 6, 2, generator=g).repeat(1, 1, 4)
    modality = (torch.arange(6) % modalities).expand(2, 6).contiguous()
    valid = torch.ones(2, 6, dtype=torch.bool)
    counts = {"area": 0, "random": 0, "modality": 0}
    for _ in range(draws):
        counts[sample_masks(boxes, modality, valid, cfg, g).strategy] += 1
    return counts, resolve_probs(cfg, modalities)


@pytest.mark.parametrize(
    ("cfg", "modalities", "expected"),
    [
        (MaskConfig(), 2, {"area": 0.6, "random": 0.2, "modality": 0.2}),
        (MaskConfig(), 1, {"area": 0.75, "random": 0.25, "modality": 0.0}),
        (
            MaskConfig(area_prob=0.1, random_prob=0.3, modality_prob=0.6),
            2,
            {"area": 0.1, "random": 0.3, "modality": 0.6},
        ),
    ],
)
def test_strategy_frequencies(cfg: MaskConfig, modalities: int, expected: dict[str, float]) -> None:
    draws = 4000
    counts, probs = _frequencies(cfg, modalities, draws, seed=modalities)
    for name, p in expected.items():
        assert probs[name] == pytest.approx(p)
        sigma = math.sqrt(draws * p * (1 - p))
        assert abs(counts[name] - draws * p) <= 3 * sigma, (name, counts)
        if p == 0.0:
            assert counts[name] == 0


def test_resolve_probs() -> None:
    assert resolve_probs(MaskConfig(), 2) == pytest.approx(
        {"area": 0.6, "random": 0.2, "modality": 0.2}
    )
    assert resolve_probs(MaskConfig(), 1) == pytest.approx(
        {"area": 0.75, "random": 0.25, "modality": 0.0}
    )
    # Unset chances share the rest in proportion to their defaults.
    assert resolve_probs(MaskConfig(area_prob=0.5), 2) == pytest.approx(
        {"area": 0.5, "random": 0.25, "modality": 0.25}
    )
    assert resolve_probs(MaskConfig(area_prob=0.5, random_prob=0.5), 2) == pytest.approx(
        {"area": 0.5, "random": 0.5, "modality": 0.0}
    )
    # With one modality the modality share is dropped and the rest rescaled.
    assert resolve_probs(MaskConfig(area_prob=0.2, random_prob=0.2), 1) == pytest.approx(
        {"area": 0.5, "random": 0.5, "modality": 0.0}
    )
    assert resolve_probs(MaskConfig(modality_prob=1.0), 1) == {
        "area": 1.0,
        "random": 0.0,
        "modality": 0.0,
    }


def test_draw_strategy_never_draws_zero_chance() -> None:
    g = torch.Generator().manual_seed(0)
    drawn = {draw_strategy({"area": 0.0, "random": 1.0, "modality": 0.0}, g) for _ in range(200)}
    assert drawn == {"random"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"area_prob": 0.7, "random_prob": 0.7},
        {"area_prob": 0.5, "random_prob": 0.2, "modality_prob": 0.2},
        {"area_prob": -0.1},
        {"num_targets": 0},
        {"area_scale": 0.0},
        {"aspect": (2.0, 0.5)},
        {"area_scale": 1.0, "aspect": (0.25, 4.0)},
        {"min_context_area": 1.0},
        {"random_block": 0.0},
        {"max_resamples": -1},
    ],
)
def test_config_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MaskConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_inputs_rejected() -> None:
    valid = torch.ones(2, 3, dtype=torch.bool)
    modality = torch.zeros(2, 3, dtype=torch.long)
    g = torch.Generator()
    with pytest.raises(ValueError):
        sample_masks(torch.zeros(2, 3, 4), modality, valid, MaskConfig(), g)
    with pytest.raises(ValueError):
        sample_masks(torch.zeros(2, 3, 8), modality.float(), valid, MaskConfig(), g)
    with pytest.raises(ValueError):
        sample_masks(torch.zeros(2, 3, 8), modality - 1, valid, MaskConfig(), g)


@PROPERTY
@given(
    rows=st.integers(0, 5),
    tokens=st.integers(0, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_gather_tokens(rows: int, tokens: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, tokens, generator=g) < 0.4
    index, valid = gather_tokens(mask)
    width = int(mask.sum(dim=1).max()) if mask.numel() else 0
    assert index.shape == valid.shape == (rows, width)
    for r in range(rows):
        expected = torch.nonzero(mask[r])[:, 0]
        assert torch.equal(index[r][valid[r]], expected)
        assert (index[r][~valid[r]] == 0).all()
        assert torch.equal(valid[r], torch.arange(width) < expected.numel())


def test_gather_target_tokens_and_select() -> None:
    targets = torch.zeros(2, 3, 5, dtype=torch.bool)
    targets[0, 0, [1, 3]] = True
    targets[0, 2, [4]] = True
    targets[1, 1, [0, 2, 4]] = True
    index, valid, tile = gather_target_tokens(targets)
    assert torch.equal(tile, torch.tensor([0, 0, 1]))
    assert torch.equal(index, torch.tensor([[1, 3, 0], [4, 0, 0], [0, 2, 4]]))
    assert torch.equal(valid, torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool())
    index_all, valid_all, tile_all = gather_target_tokens(targets, drop_empty=False)
    assert torch.equal(tile_all, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert index_all.shape == (6, 3) and not valid_all[[1, 3, 5]].any()

    x = torch.arange(2 * 5 * 2).reshape(2, 5, 2)
    picked = select_tokens(x, index, tile)
    assert picked.shape == (3, 3, 2)
    assert torch.equal(picked[2, 1], x[1, 2])
    assert torch.equal(picked[0, 1], x[0, 3])
    context_index, _ = gather_tokens(torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]]).bool())
    assert torch.equal(select_tokens(x, context_index)[1, 1], x[1, 4])
