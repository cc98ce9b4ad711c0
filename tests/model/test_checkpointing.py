"""Tests of activation checkpointing: same loss and gradients, training with gradients only."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest
import torch
import yaml
from model.test_jepa import image_batch, make_model
from model.test_tokenizer import random_batch
from torch import Tensor

from geojepa.config import add_dataclass_flags, overrides_from_args
from geojepa.model import encoder as encoder_module
from geojepa.model.batch import TileBatch
from geojepa.model.jepa import GeoJEPA, GeoJEPAConfig, config_from_preset


def train_step(model: GeoJEPA, batch: TileBatch, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and gradients of one training step; ``seed`` seeds the masks and the dropout."""
    torch.manual_seed(seed)  # dropout draws from the global generator
    loss, _ = model.forward_loss(batch, torch.Generator().manual_seed(seed))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(("modalities", "precision"), [("GT", "32"), ("GTI", "32"), ("GT", "bf16")])
def test_checkpointing_gives_the_same_loss_and_gradients(modalities: str, precision: str) -> None:
    plain = make_model(modalities, dropout=0.3).train()
    recomputed = make_model(modalities, dropout=0.3, activation_checkpointing=True).train()
    assert recomputed.encoder.transformer.checkpointing
    assert recomputed.predictor.transformer.checkpointing
    assert not plain.encoder.transformer.checkpointing
    for name, value in plain.state_dict().items():
        assert torch.equal(value, recomputed.state_dict()[name]), name
    batch = image_batch() if "I" in modalities else random_batch()
    results = []
    for model in (plain, recomputed):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, grads = train_step(model, batch, seed=4)
        results.append((loss, grads, torch.get_rng_state()))
    (loss, grads, rng), (loss_ckpt, grads_ckpt, rng_ckpt) = results
    assert torch.equal(loss, loss_ckpt)
    assert torch.equal(rng, rng_ckpt)  # recomputation leaves the global generator alone
    assert grads.keys() == grads_ckpt.keys()
    assert {name.split(".")[0] for name in grads} == {"tokenizer", "encoder", "predictor"}
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[name], rtol=1e-5, atol=1e-7), name
    plain.zero_grad()
    other, _ = train_step(plain, batch, seed=5)
    assert not torch.equal(other, loss)  # sanity: the seed (masks, dropout) matters


def test_checkpointing_only_when_training_with_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Callable[..., Any]] = []
    real = encoder_module.checkpoint

    def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(function)
        return real(function, *args, **kwargs)

    monkeypatch.setattr(encoder_module, "checkpoint", counting)
    model = make_model("GT", activation_checkpointing=True).train()
    batch = random_batch()
    loss, _ = model.forward_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    online = [*model.encoder.transformer.blocks, *model.predictor.transformer.blocks]
    assert len(calls) == len(online) == model.config.depth + model.config.predictor_depth
    assert all(any(f is block for block in online) for f in calls)  # never the EMA target
    calls.clear()
    model.encode_targets(batch)
    model.embed(batch)
    with torch.no_grad():
        model.forward_loss(batch, torch.Generator().manual_seed(0))
    model.eval()
    model.forward_loss(batch, torch.Generator().manual_seed(0))[0].backward()
    assert not calls


@pytest.mark.parametrize("train", [True, False])
def test_checkpointing_leaves_embeddings_unchanged(train: bool) -> None:
    plain = make_model("GTI").train(train)
    recomputed = make_model("GTI", activation_checkpointing=True).train(train)
    batch = image_batch()
    for ours, theirs in zip(plain.embed(batch), recomputed.embed(batch), strict=True):
        assert torch.equal(ours, theirs)
    x, valid = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    plain.eval()
    recomputed.eval()
    assert torch.equal(plain.encoder(x, valid), recomputed.encoder(x, valid))


def test_checkpointing_setting_round_trips_and_has_a_flag() -> None:
    config = config_from_preset("small", activation_checkpointing=True)
    assert GeoJEPAConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    assert not GeoJEPAConfig.from_dict({}).activation_checkpointing  # older run configs
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, GeoJEPAConfig, prefix="model-", skip=("mask",))
    args = parser.parse_args(["--model-activation-checkpointing", "true"])
    overrides = overrides_from_args(args, GeoJEPAConfig, prefix="model-")
    assert overrides == {"activation_checkpointing": True}
