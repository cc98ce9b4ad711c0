"""Tests of the GeoJEPA model: encoders, EMA target, training loss and embeddings (SPEC 4-5)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from model.test_tokenizer import random_batch

from geojepa.errors import GeoJepaError
from geojepa.model import text
from geojepa.model.batch import ENTITY, TileBatch
from geojepa.model.encoder import SetEncoder
from geojepa.model.jepa import (
    PREDICTED_GRID,
    PRESETS,
    GeoJEPA,
    GeoJEPAConfig,
    TilePool,
    config_from_preset,
    gather,
)
from geojepa.model.masks import MaskConfig, gather_tokens, sample_masks, select_tokens
from geojepa.model.tokenizer import patch_boxes

VOCAB = 30
IMAGE_SIZE = 32


def make_model(modalities: str = "GT", **overrides: object) -> GeoJEPA:
    """A tiny GeoJEPA with a random frozen tag table."""
    settings: dict[str, object] = {
        "vocab_size": VOCAB,
        "modalities": modalities,
        "d": 32,
        "depth": 2,
        "heads": 4,
        "predictor_d": 16,
        "predictor_depth": 1,
        "predictor_heads": 2,
        "geometry_dim": 16,
        "geometry_depth": 1,
        "geometry_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch": 8,
    }
    settings.update(overrides)
    config = config_from_preset("small", **settings)
    torch.manual_seed(0)
    table = torch.randn(VOCAB + 1, 384, generator=torch.Generator().manual_seed(1))
    return GeoJEPA(config, table)


def image_batch(**kwargs: object) -> TileBatch:
    """A random batch with imagery (one tile without)."""
    return random_batch(image_size=IMAGE_SIZE, has_image=(True, False, True), **kwargs)  # type: ignore[arg-type]


def pad(batch: TileBatch, entities: int, vertices: int, tags: int) -> TileBatch:
    """The same tiles with extra padding entities, vertices and tag slots, full of garbage."""
    num_tiles, num_entities, num_vertices = batch.geom_part.shape
    g = torch.Generator().manual_seed(7)
    n, v, k = num_entities + entities, num_vertices + vertices, batch.tag_ids.shape[2] + tags
    tag_ids = torch.randint(1, VOCAB + 1, (num_tiles, n, k), generator=g)
    tag_ids[:, :num_entities] = 0
    tag_ids[:, :num_entities, : batch.tag_ids.shape[2]] = batch.tag_ids
    geom = torch.rand(num_tiles, n, v, 2, generator=g)
    geom[:, :num_entities, :num_vertices] = batch.geom
    part = torch.randint(0, 3, (num_tiles, n, v), generator=g)
    part[:, :num_entities] = -1
    part[:, :num_entities, :num_vertices] = batch.geom_part
    kind = torch.randint(0, 4, (num_tiles, n), generator=g)
    kind[:, :num_entities] = batch.kind
    boxes = torch.rand(num_tiles, n, 8, generator=g)
    boxes[:, :num_entities] = batch.boxes
    valid = torch.zeros(num_tiles, n, dtype=torch.bool)
    valid[:, :num_entities] = batch.valid
    return replace(
        batch, tag_ids=tag_ids, geom=geom, geom_part=part, kind=kind, boxes=boxes, valid=valid
    )


def stack(first: TileBatch, second: TileBatch) -> TileBatch:
    """Two batches of the same padded sizes as one."""
    return TileBatch(
        **{
            name: None
            if getattr(first, name) is None
            else torch.cat([getattr(first, name), getattr(second, name)])
            for name in first.__dataclass_fields__
        }
    )


@pytest.mark.parametrize(("modalities", "pool"), [("GT", "tokens"), ("GTI", "tokens"),
                                                  ("GTI", "modality"), ("GT", "predicted"),
                                                  ("GTI", "predicted"), ("GT", "kind"),
                                                  ("GTI", "kind")])
def test_tile_embedding_ignores_batch_mates_and_padding(modalities: str, pool: TilePool) -> None:
    model = make_model(modalities).train()  # embed must not depend on the mode either
    batch = image_batch() if "I" in modalities else random_batch()
    tokens, valid, tiles = model.embed(batch, pool=pool)
    kinds = 2 if pool != "tokens" and "I" in modalities else 1
    if pool == "kind":
        kinds = 4 + ("I" in modalities)
    predicted = int(pool == "predicted")
    assert tiles.shape == (3, (kinds + predicted) * 2 * 32) and torch.isfinite(tiles).all()
    for tile in range(3):
        alone = batch.select(slice(tile, tile + 1))
        padded = pad(alone, entities=6, vertices=4, tags=3)
        images = {"image_size": IMAGE_SIZE, "has_image": (True, True)}
        others = random_batch(counts=(10, 1), seed=5, **(images if "I" in modalities else {}))
        mixed = stack(padded, pad(others, entities=6, vertices=4, tags=3))
        for variant in (alone, padded, mixed):
            t, v, e = model.embed(variant, pool=pool)
            assert torch.allclose(e[0], tiles[tile], rtol=1e-5, atol=1e-5)
            mine = t[0][v[0]]
            assert torch.allclose(mine, tokens[tile][valid[tile]], rtol=1e-5, atol=1e-5)


def test_embedding_pools_real_tokens_only() -> None:
    model = make_model("GT")
    batch = random_batch(counts=(4, 0, 10))
    tokens, valid, tiles = model.embed(batch)
    assert (tiles[1] == 0).all()
    real = tokens[0][valid[0]]
    assert torch.allclose(tiles[0], torch.cat([real.amax(dim=0), real.mean(dim=0)]), atol=1e-6)
    assert (tokens[~valid] == 0).all()


def test_multi_layer_embedding_pools_each_of_the_last_blocks() -> None:
    model = make_model("GT", depth=3)
    batch = random_batch(counts=(4, 0, 10))
    tokens, valid, tiles = model.embed(batch)
    deep_tokens, deep_valid, deep = model.embed(batch, layers=3)
    assert deep.shape == (3, 2 * 3 * 32)
    assert torch.equal(deep_valid, valid) and torch.allclose(deep_tokens, tokens, atol=1e-6)
    top, mean = deep.view(3, 2, 3, 32).unbind(dim=1)  # [max | mean], each earliest block first
    assert torch.allclose(top[:, -1], tiles[:, :32], atol=1e-6)
    assert torch.allclose(mean[:, -1], tiles[:, 32:], atol=1e-6)
    assert (deep[1] == 0).all()
    layered, _, same = model.embed(batch, layers=3, layered_tokens=True)
    assert layered.shape == (*tokens.shape[:2], 3 * 32) and torch.equal(same, deep)
    assert torch.allclose(layered[..., -32:], tokens, atol=1e-6)  # the last block last
    real = layered[valid]
    assert torch.allclose(deep[:, :3 * 32][0], real[:4].amax(dim=0), atol=1e-6)  # tile 0's 4 tokens
    assert (layered[~valid] == 0).all()
    # the first block's pooled output is the pooled tokens of a one-block encoder
    blocks = model.target.encoder.transformer.blocks
    model.target.encoder.transformer.blocks = blocks[:1]
    shallow = model.embed(batch)[2]
    assert torch.allclose(top[:, 0], shallow[:, :32], atol=1e-5)
    assert not torch.allclose(top[:, 0], top[:, -1], atol=1e-2)
    model.target.encoder.transformer.blocks = blocks
    for bad in (0, 4):
        with pytest.raises(ValueError, match="layers must be between 1 and the depth 3"):
            model.embed(batch, layers=bad)


def test_modality_pooling_keeps_entities_and_patches_apart() -> None:
    model = make_model("GTI")
    batch = image_batch(counts=(4, 0, 10))  # tile 1: no entities; tile 1 has no image either
    tokens, valid, tiles = model.embed(batch)
    same_tokens, same_valid, apart = model.embed(batch, pool="modality")
    assert apart.shape == (3, 4 * 32)
    assert torch.equal(same_valid, valid) and torch.allclose(same_tokens, tokens, atol=1e-6)
    n = batch.valid.shape[1]  # entity tokens come first, then the image patches
    for tile in range(3):
        parts = []
        for kind in (slice(0, n), slice(n, None)):
            real = tokens[tile, kind][valid[tile, kind]]
            parts += [real.amax(dim=0), real.mean(dim=0)] if len(real) else [torch.zeros(64)]
        assert torch.allclose(apart[tile], torch.cat(parts), atol=1e-6)
    assert (apart[1] == 0).all()  # neither entities nor an image
    assert (apart[2, :64] != 0).any() and (apart[2, 64:] != 0).any()
    # pooled apart, neither kind is a weighted share of one mean any more
    assert not torch.allclose(apart[2, 96:], tiles[2, 32:], atol=1e-3)
    # a model of one kind of token pools the same either way
    plain = make_model("GT")
    gt_batch = random_batch(counts=(4, 0, 10))
    assert torch.equal(plain.embed(gt_batch, pool="modality")[2], plain.embed(gt_batch)[2])
    deep = make_model("GTI", depth=3).embed(batch, layers=2, pool="modality")[2]
    assert deep.shape == (3, 2 * 2 * 2 * 32)
    with pytest.raises(ValueError, match="pool must be one of tokens, modality, kind, predicted, got"):
        model.embed(batch, pool="entities")  # type: ignore[arg-type]


def test_kind_pooling_keeps_each_entity_kind_and_the_patches_apart() -> None:
    model = make_model("GTI")
    batch = image_batch(counts=(4, 0, 10))  # tile 1: no entities and no image
    tokens, valid, _ = model.embed(batch)
    _, _, apart = model.embed(batch, pool="kind")
    assert apart.shape == (3, 5 * 64)
    n = batch.valid.shape[1]
    for tile in range(3):
        parts = []
        for kind in range(4):
            real = tokens[tile, :n][valid[tile, :n] & (batch.kind[tile] == kind)]
            parts += [real.amax(dim=0), real.mean(dim=0)] if len(real) else [torch.zeros(64)]
        patches = tokens[tile, n:][valid[tile, n:]]
        parts += [patches.amax(dim=0), patches.mean(dim=0)] if len(patches) else [torch.zeros(64)]
        assert torch.allclose(apart[tile], torch.cat(parts), atol=1e-6)
    assert (apart[1] == 0).all()
    present = {int(k) for k in batch.kind[2][batch.valid[2]]}
    assert len(present) > 1  # the test pools several kinds
    for kind in range(4):  # a kind the tile lacks is zeros, one it has is not
        assert bool((apart[2, kind * 64:(kind + 1) * 64] != 0).any()) == (kind in present)
    # the entity kinds of a model without images, and an image-only model pools as one set
    gt_batch = random_batch(counts=(4, 0, 10))
    assert make_model("GT").embed(gt_batch, pool="kind")[2].shape == (3, 4 * 64)
    only = make_model("I")
    assert torch.equal(only.embed(batch, pool="kind")[2], only.embed(batch)[2])


def test_predicted_pool_adds_the_predictors_answers_on_a_grid_over_the_tile() -> None:
    model = make_model("GT")
    batch = random_batch(counts=(4, 0, 10))
    _, _, plain = model.embed(batch, pool="modality")
    _, _, tiles = model.embed(batch, pool="predicted")
    assert torch.equal(tiles[:, :64], plain)
    grid = model.predict_grid(batch)
    assert grid.shape == (3, PREDICTED_GRID**2, 32)
    pooled = torch.cat([grid.amax(dim=1), grid.mean(dim=1)], dim=-1)
    assert torch.allclose(tiles[:, 64:], pooled, atol=1e-4)
    # the answers are the predictor's, given every token as context and a query per cell
    model.eval()
    tokens = model.tokenizer(batch)
    context = model.encoder(tokens.x, tokens.valid)
    queries = model.tokenizer.query_prior(patch_boxes(PREDICTED_GRID), ENTITY)
    queries = queries.expand(3, -1, -1)
    by_hand = model.predictor(context, tokens.pos_mod, tokens.valid, queries,
                              torch.ones(queries.shape[:2], dtype=torch.bool), torch.arange(3))
    by_hand = torch.nn.functional.layer_norm(by_hand, (32,))
    assert torch.allclose(grid, by_hand, atol=1e-5)
    # each cell gets its own answer, and they depend on the tile's tokens
    assert not torch.allclose(grid[0, 0], grid[0, -1], atol=1e-4)
    assert not torch.allclose(grid[0], grid[2], atol=1e-4)
    # the answers do not depend on the model's mode (no box noise on the queries, no dropout)
    noisy = make_model("GT", box_noise=0.5).train()
    assert torch.equal(noisy.predict_grid(batch), noisy.eval().predict_grid(batch))
    # a tile without tokens still gets answers (from the queries alone), all finite
    assert torch.isfinite(grid[1]).all() and (tiles[1, :64] == 0).all()


def test_target_gets_no_gradients_and_ema_moves_it() -> None:
    model = make_model("GT").train()
    loss, _ = model.forward_loss(random_batch(), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert model.encoder.register_tokens.grad is not None
    online = {
        **dict(model.tokenizer.named_parameters()),
        **{f"encoder.{n}": p for n, p in model.encoder.named_parameters()},
    }
    target = {
        **dict(model.target.tokenizer.named_parameters()),
        **{f"encoder.{n}": p for n, p in model.target.encoder.named_parameters()},
    }
    with torch.no_grad():
        for p in model.online_modules().parameters():
            p.add_(torch.randn_like(p))
    before = {name: p.detach().clone() for name, p in target.items()}
    model.ema_step(0.9)
    for name, p in target.items():
        expected = 0.9 * before[name] + 0.1 * online[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name
    model.ema_step(0.0)
    for name, p in target.items():
        assert torch.allclose(p, online[name], atol=1e-6), name
    with pytest.raises(ValueError):
        model.ema_step(1.5)


def test_frozen_geometry_stays_frozen_and_is_shared_with_the_target() -> None:
    model = make_model("GT", freeze_geometry=True).train()
    geometry = model.tokenizer.geometry
    assert geometry is not None and model.target.tokenizer.geometry is geometry
    assert not geometry.training and model.tokenizer.training
    assert not any(p.requires_grad for p in geometry.parameters())
    trained = {id(p) for p in model.online_modules().parameters() if p.requires_grad}
    assert not trained & {id(p) for p in geometry.parameters()}
    before = [p.clone() for p in geometry.parameters()]
    loss, _ = model.forward_loss(random_batch(), torch.Generator().manual_seed(0))
    loss.backward()
    model.ema_step(0.5)
    assert all(p.grad is None for p in geometry.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, geometry.parameters(), strict=True))


def test_target_has_no_dropout_or_noise_in_training_mode() -> None:
    model = make_model("GT", dropout=0.5).train()
    assert not any(m.training for m in model.target.modules())
    batch = random_batch()
    _, first = model.encode_targets(batch)
    _, second = model.encode_targets(batch)
    assert torch.equal(first, second)
    assert torch.equal(model.embed(batch)[2], model.embed(batch)[2])
    x, valid = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    assert not torch.equal(model.encoder(x, valid), model.encoder(x, valid))  # online drops out


@pytest.mark.parametrize("modalities", ["T", "GT", "GTI"])
def test_forward_backward_of_the_loss(modalities: str) -> None:
    model = make_model(modalities).train()
    batch = image_batch() if "I" in modalities else random_batch()
    loss, logs = model.forward_loss(batch, torch.Generator().manual_seed(3))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in (
        "loss",
        "loss_jepa",
        "var_pred",
        "cov_pred",
        "var_context",
        "cov_context",
        "context_fraction",
        "target_fraction",
        "target_std",
        "target_cosine",
    ):
        assert name in logs and isinstance(logs[name], float)
    assert sum(logs[f"mask_{s}"] for s in ("area", "random", "modality")) == 1.0
    assert math.isclose(logs["loss"], loss.item(), rel_tol=1e-6)
    assert 0 < logs["context_fraction"] < 1 and 0 < logs["target_fraction"] <= 1
    grads = [p.grad for p in model.predictor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(
        p.grad is not None for p in model.tokenizer.pos.parameters()
    )  # the prior is trained through the predictor's queries and the context


def test_every_mask_strategy_trains() -> None:
    model = make_model("GTI").train()
    for strategy in ("area", "random", "modality"):
        probs = {f"{s}_prob": float(s == strategy) for s in ("area", "random", "modality")}
        model.config.mask = MaskConfig(**probs)  # type: ignore[arg-type]
        loss, logs = model.forward_loss(image_batch(), torch.Generator().manual_seed(0))
        loss.backward()
        assert logs[f"mask_{strategy}"] == 1.0 and torch.isfinite(loss)


def test_context_encoder_never_sees_target_tokens() -> None:
    model = make_model("GT").eval()
    batch = random_batch(counts=(10, 9, 10))
    tokens = model.tokenizer(batch)
    generator = torch.Generator().manual_seed(0)
    masks = sample_masks(tokens.boxes, tokens.modality, tokens.valid, MaskConfig(), generator)
    index, valid = gather_tokens(masks.context)
    before = model.encode_context(tokens.x, index, valid)
    hidden = masks.targets.any(dim=1) & ~masks.context
    changed = random_batch(counts=(10, 9, 10))
    changed.tag_ids[hidden] = (changed.tag_ids[hidden] % VOCAB) + 1  # new tags for targets
    changed.boxes[hidden] += 0.3
    changed.geom[hidden] = 1 - changed.geom[hidden]
    after = model.encode_context(model.tokenizer(changed).x, index, valid)
    assert torch.equal(before, after)
    shown = masks.context.clone()
    changed.tag_ids[shown] = (changed.tag_ids[shown] % VOCAB) + 1  # sanity: context matters
    assert not torch.allclose(
        before, model.encode_context(model.tokenizer(changed).x, index, valid)
    )


def test_loss_falls_on_a_repeated_batch() -> None:
    torch.manual_seed(0)
    config = config_from_preset(
        "small", vocab_size=VOCAB, modalities="GT", tag_encoder="learned", tag_dim=32
    )
    model = GeoJEPA(config).train()
    batch = random_batch(counts=(16, 12, 16, 14), num_entities=16)
    optimizer = torch.optim.AdamW(model.online_modules().parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss, logs = model.forward_loss(batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.ema_step(0.99)
        losses.append(logs["loss_jepa"])
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_images_requested_without_imagery_raise() -> None:
    with pytest.raises(GeoJepaError, match="imagery"):
        make_model("TI").embed(random_batch())


def test_set_encoder_padding_gets_no_attention_and_no_nan() -> None:
    torch.manual_seed(0)
    encoder = SetEncoder(16, depth=2, heads=2, dropout=0.0, registers=0).eval()
    x = torch.randn(3, 6, 16)
    valid = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    out = encoder(x, valid)
    assert torch.isfinite(out).all() and (out[~valid] == 0).all()
    garbage = x.clone()
    garbage[~valid] = 1e6
    assert torch.allclose(encoder(garbage, valid), out, atol=1e-6)
    assert torch.allclose(encoder(x[:1, :3], valid[:1, :3])[0], out[0, :3], atol=1e-5)


def test_gather_matches_select_tokens() -> None:
    x = torch.randn(3, 7, 5)
    index = torch.randint(0, 7, (4, 6))
    tile = torch.tensor([0, 2, 2, 1])
    assert torch.equal(gather(x, index, tile), select_tokens(x, index, tile))
    assert torch.equal(gather(x, index[:3]), select_tokens(x, index[:3]))


def test_configs_and_presets() -> None:
    assert set(PRESETS) >= {"base", "small"}
    base = config_from_preset("base")
    paper = (384, 12, 8, 192, 4)
    assert (base.d, base.depth, base.heads, base.predictor_d, base.predictor_depth) == paper
    assert base.activation_checkpointing and not config_from_preset("small").activation_checkpointing
    small = config_from_preset("small", modalities="tg", mask=MaskConfig(num_targets=2))
    assert small.modalities == "GT" and small.d < base.d and small.mask.num_targets == 2
    text = yaml.safe_dump(small.to_dict())
    assert GeoJEPAConfig.from_dict(yaml.safe_load(text)) == small
    assert config_from_preset("small", modalities="GTI").uses_images
    hmlp = config_from_preset("small", modalities="GTI", image_stem="hmlp")
    assert GeoJEPAConfig.from_dict(yaml.safe_load(yaml.safe_dump(hmlp.to_dict()))) == hmlp
    assert GeoJEPAConfig.from_dict({}).image_stem == "patch"  # checkpoints from before the option
    for bad in ({"modalities": "X"}, {"tag_encoder": "frozen", "tag_dim": 32}, {"d": 30},
                {"image_stem": "vit"}, {"image_stem": "hmlp", "patch": 14}):
        with pytest.raises(ValueError):
            config_from_preset("small", **bad)
    with pytest.raises(ValueError, match="preset"):
        config_from_preset("huge")
    with pytest.raises(ValueError, match="unknown"):
        config_from_preset("small", depht=3)
    with pytest.raises(ValueError, match="tag table"):
        GeoJEPA(config_from_preset("small", vocab_size=3))


def test_with_dataset_sets_the_vocabulary_and_the_frozen_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeTextModel:
        def get_sentence_embedding_dimension(self) -> int:
            return 384

        def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
            return np.full((len(sentences), 384), 0.5, dtype=np.float32)

    monkeypatch.setattr(text, "_load_model", lambda path: FakeTextModel())
    vocab = ["building=yes", "highway=residential", "amenity=cafe"]
    config = config_from_preset("small", modalities="GT").with_dataset(tmp_path, vocab)
    assert config.vocab_size == 3 and config.tag_table == text.cache_path(tmp_path, vocab)
    model = GeoJEPA(GeoJEPAConfig.from_dict(config.to_dict()))  # e.g. from a checkpoint
    assert model.tokenizer.tags is not None
    assert torch.equal(model.tokenizer.tags.table[1:], torch.full((3, 384), 0.5))
    assert "tokenizer.tags.table" not in model.state_dict()
    learned = config_from_preset("small", tag_encoder="learned").with_dataset(tmp_path, vocab)
    assert learned.vocab_size == 3 and learned.tag_table is None


def test_bf16_autocast_training_step() -> None:
    model = make_model("GTI").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.forward_loss(image_batch(), torch.Generator().manual_seed(0))
        tiles = model.embed(image_batch())[2]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(tiles).all()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_base_preset_size() -> None:
    model = GeoJEPA(config_from_preset("base", vocab_size=VOCAB), torch.zeros(VOCAB + 1, 384))
    trained = sum(p.numel() for p in model.online_modules().parameters() if p.requires_grad)
    assert 20e6 < trained < 35e6
