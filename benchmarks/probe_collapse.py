"""Collapse study: does a pretraining variant keep its targets informative, and does it probe
better than its own random initialisation? (issue 4; results in ``collapse_results.md``)

Pretrains a tags-only small model on a prepared dataset (with ``geojepa tasks`` run), prints the
collapse metrics of the last logged steps, then fits the linear probe on the masked
building_count, max_speed and traffic_signals inputs over 5 spatial folds for the checkpoint and
its untrained twin. Variants are switched on by patching the model for this process only; none
of them is part of geojepa. Run by hand from the repository root, one process per core:

    python benchmarks/probe_collapse.py DATASET OUT [--epochs 20] [--gz 15] [--seed 0]
        [--ema-keep 0.01] [--ln-vicreg] [--model '{"vicreg_weight": 1.0, "dropout": 0.0}']
        [--token-vicreg 1.0] [--default-init] [--fourier 8] [--standardise-targets]
        [--targets tokens] [--prior-norm] [--freeze-content] [--balanced] [--box-features 4]
        [--tile-variance 1.0] [--predictor-warmup 150] [--tile-norm-targets]
        [--train '{"weight_decay_start": 0.0, "weight_decay_end": 0.0}']
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import geojepa.model.encoder as encoder
import geojepa.model.jepa as jepa
import geojepa.model.tokenizer as tokenizer
import geojepa.train as train_module
from geojepa.dataset.reader import TileDataset
from geojepa.embed import load_checkpoint
from geojepa.evaluate import EvalConfig, _folds
from geojepa.features import embedding_health, model_features, random_init
from geojepa.model.schedules import linear
from geojepa.probes import fit_linear
from geojepa.tasks import load_labels, masked_dataset, select_tasks
from geojepa.train import TrainConfig, pretrain


class Fourier(nn.Module):
    """sin/cos of the box coordinates at ``k`` octaves, in front of the position MLP."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("freq", (2.0 ** torch.arange(k)) * math.pi)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        z = (boxes[..., None] * self.freq).flatten(-2)
        return torch.cat([z.sin(), z.cos()], dim=-1)


class BoxFeatures(nn.Module):
    """Centred box descriptors (6 + 4k numbers): centroid - 0.5, log side lengths, doubled-angle
    orientation, and sin/cos of the centroid at ``k`` octaves."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("freq", (2.0 ** torch.arange(k)) * math.pi)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = boxes.unflatten(-1, (4, 2))
        centre = corners.mean(-2)
        side_a = corners[..., 1, :] - corners[..., 0, :]
        side_b = corners[..., 2, :] - corners[..., 1, :]
        sizes = torch.stack([side_a.norm(dim=-1), side_b.norm(dim=-1)], -1)
        angle = 2.0 * torch.atan2(side_a[..., 1], side_a[..., 0])
        z = (centre[..., None] * self.freq).flatten(-2)
        return torch.cat([centre - 0.5, torch.log(sizes + 1e-3) / 4.0, angle.sin()[..., None],
                          angle.cos()[..., None], z.sin(), z.cos()], dim=-1)


def prior_norm() -> None:
    """Layer-norm the priors the predictor sees, so that its queries differ by position.

    At the std-0.02 initialisation the prior is about 1e-4 of the mask token, so every query of a
    block is the same vector; see ``probe_collapse_diagnostics.py predictor``.
    """
    base_forward = encoder.Predictor.forward

    def forward(
        self: encoder.Predictor,
        context: torch.Tensor,
        context_prior: torch.Tensor,
        context_valid: torch.Tensor,
        query_prior: torch.Tensor,
        *rest: torch.Tensor,
    ) -> torch.Tensor:
        def norm(x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, (x.shape[-1],))

        return base_forward(
            self, context, norm(context_prior), context_valid, norm(query_prior), *rest
        )

    encoder.Predictor.forward = forward


def set_variance(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """VICReg's variance hinge within each set (tile or target block) instead of over the batch.

    Args:
        x: ``Float[N, L, d]`` embeddings of ``N`` sets.
        valid: ``Bool[N, L]``, the real entries.

    Returns:
        ``mean_d relu(1 - std_d)`` of the layer-normed rows of each set with at least 2 rows,
        averaged over those sets (0 without any).
    """
    x = F.layer_norm(x.float(), (x.shape[-1],))
    weight = valid[..., None].float()
    count = weight.sum(dim=1)
    mean = (x * weight).sum(dim=1) / count.clamp(min=1.0)
    var = ((x - mean[:, None]) ** 2 * weight).sum(dim=1) / (count - 1.0).clamp(min=1.0)
    hinge = F.relu(1.0 - torch.sqrt(var + 1e-4)).mean(dim=-1)
    keep = count[:, 0] >= 2
    return hinge[keep].mean() if keep.any() else x.sum() * 0.0


def tile_variance(weight: float) -> None:
    """Add ``weight`` x the within-tile variance hinge of the context embeddings and the
    within-block hinge of the predictions: the batch-wide VICReg terms are met by differences
    between tiles, while the collapse happens inside each tile."""
    base_loss = jepa.GeoJEPA.forward_loss
    base_context = jepa.GeoJEPA.encode_context
    base_predictor = encoder.Predictor.forward
    seen: dict[str, torch.Tensor] = {}

    def encode_context(self: jepa.GeoJEPA, tokens: torch.Tensor, index: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
        out = base_context(self, tokens, index, valid)
        seen["context"], seen["context_valid"] = out, valid
        return out

    def predict(self: encoder.Predictor, *a: torch.Tensor) -> torch.Tensor:
        out = base_predictor(self, *a)
        seen["pred"], seen["pred_valid"] = out, a[4]
        return out

    def forward_loss(self: jepa.GeoJEPA, batch: object, generator: torch.Generator):
        loss, logs = base_loss(self, batch, generator)
        extra = set_variance(seen["context"], seen["context_valid"]) + set_variance(
            seen["pred"], seen["pred_valid"]
        )
        logs["tile_variance"] = float(extra.detach())
        return loss + weight * extra, logs

    jepa.GeoJEPA.encode_context = encode_context
    encoder.Predictor.forward = predict
    jepa.GeoJEPA.forward_loss = forward_loss


def tile_norm_targets(eps: float = 1e-3) -> None:
    """Standardise each target dimension over the real tokens of its own tile.

    The batch-wide standardisation (``--standardise-targets``) keeps between-tile differences,
    so predicting a tile's mean target still scores well; here the targets are each token's
    deviation from its tile at unit variance, so neither a shared direction nor a tile's mean is
    predicted for free, shrinking the varying part does not lower the loss, and the predictor
    can lower it only by telling its targets apart. The logged ``target_cosine`` and
    ``target_std`` stay those of the layer-normed encoder outputs.
    """
    base_targets = jepa.GeoJEPA.encode_targets
    base_metrics = jepa.collapse_metrics
    raw: dict[str, torch.Tensor] = {}

    def encode_targets(self: jepa.GeoJEPA, batch: object) -> tuple[object, torch.Tensor]:
        tokens, t = base_targets(self, batch)
        weight = tokens.valid[..., None].float()
        count = weight.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (t * weight).sum(dim=1, keepdim=True) / count
        var = ((t - mean) ** 2 * weight).sum(dim=1, keepdim=True) / count
        raw["targets"] = t
        return tokens, torch.where(tokens.valid[..., None], (t - mean) / torch.sqrt(var + eps), 0.0)

    jepa.GeoJEPA.encode_targets = encode_targets
    jepa.collapse_metrics = lambda x, mask=None: base_metrics(raw.pop("targets", x), mask)


def predictor_warmup(steps: int) -> None:
    """Train only the predictor for the first ``steps`` training steps.

    The tokeniser and the context encoder (and so the EMA target) stay at their initialisation
    meanwhile, so the predictor first learns to predict the initial, still distinct targets from
    their positions, before the encoders can make the tokens of a tile alike.
    """
    base_loss = jepa.GeoJEPA.forward_loss
    calls = {"n": 0}

    def forward_loss(self: jepa.GeoJEPA, batch: object, generator: torch.Generator):
        if not hasattr(self, "_warm_params"):
            self._warm_params = [p for m in (self.tokenizer, self.encoder)
                                 for p in m.parameters() if p.requires_grad]
        if self.training:
            calls["n"] += 1
        for param in self._warm_params:
            param.requires_grad_(calls["n"] > steps)
        return base_loss(self, batch, generator)

    jepa.GeoJEPA.forward_loss = forward_loss


def patch(args: argparse.Namespace) -> None:
    """Switch on the requested variants."""
    if (
        args.ema_keep < 1.0
    ):  # lower the starting momentum so the target keeps <= ema_keep of its init
        # train.py calls ``linear`` only for the EMA momentum; sum(1 - m) over the run >= -ln(keep)
        train_module.linear = lambda step, total, start, end: linear(
            step,
            total,
            min(start, max(0.0, 2.0 * (1.0 + math.log(args.ema_keep) / total) - end)),
            end,
        )
    if args.ln_vicreg:  # VICReg on layer-normed rows: an affine gain cannot satisfy it
        base_terms = jepa.vicreg_terms
        jepa.vicreg_terms = lambda x, mask=None: base_terms(
            F.layer_norm(x.float(), (x.shape[-1],)), mask
        )
    if args.default_init:  # PyTorch's default init for the tokeniser MLPs instead of std 0.02
        tokenizer.init_weights = lambda module: None
    if args.box_features:
        base_box_mlp = tokenizer.mlp

        def box_mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
            if dim_in != 8:
                return base_box_mlp(dim_in, hidden, dim_out)
            return nn.Sequential(BoxFeatures(args.box_features),
                                 nn.Linear(6 + 4 * args.box_features, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim_out))

        tokenizer.mlp = box_mlp
    if args.fourier:
        base_mlp = tokenizer.mlp

        def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
            if dim_in != 8:
                return base_mlp(dim_in, hidden, dim_out)
            return nn.Sequential(
                Fourier(args.fourier),
                nn.Linear(16 * args.fourier, hidden),
                nn.GELU(),
                nn.Linear(hidden, dim_out),
            )

        tokenizer.mlp = mlp
    if args.prior_norm:
        prior_norm()
    if args.tile_variance:
        tile_variance(args.tile_variance)
    if args.predictor_warmup:
        predictor_warmup(args.predictor_warmup)
    if args.tile_norm_targets:
        tile_norm_targets()
    if args.balanced:  # tokens = LN(content) + LN(prior): position as loud as content at init
        base_tokens = tokenizer.Tokenizer.forward

        def tokens_forward(self: tokenizer.Tokenizer, *a: object, **k: object) -> tokenizer.Tokens:
            t = base_tokens(self, *a, **k)
            keep = t.valid[..., None]
            prior = torch.where(keep, F.layer_norm(t.pos_mod, (self.dim,)), 0.0)
            content = torch.where(keep, F.layer_norm(t.x - t.pos_mod, (self.dim,)), 0.0)
            return tokenizer.Tokens(content + prior, prior, t.boxes, t.modality, t.valid)

        tokenizer.Tokenizer.forward = tokens_forward
    if args.freeze_content:  # the entity content (tag projection, fusion) stays at its init
        base_init = jepa.GeoJEPA.__init__

        def init(self: jepa.GeoJEPA, *a: object, **k: object) -> None:
            base_init(self, *a, **k)
            for part in (self.tokenizer.tags, self.tokenizer.fusion):
                if part is not None:
                    part.requires_grad_(False)

        jepa.GeoJEPA.__init__ = init
    if args.targets == "tokens":  # predict the target tokeniser's tokens, not the encoder's outputs

        def token_targets(self: jepa.GeoJEPA, batch: object) -> tuple[object, torch.Tensor]:
            tokens = self.target.tokenizer(batch)
            x = F.layer_norm(tokens.x.float(), (tokens.x.shape[-1],))
            return tokens, torch.where(tokens.valid[..., None], x, 0.0)

        jepa.GeoJEPA.encode_targets = token_targets
    if args.standardise_targets:  # each target dimension standardised over the batch's tokens
        base_targets = jepa.GeoJEPA.encode_targets

        def encode_targets(self: jepa.GeoJEPA, batch: object) -> tuple[object, torch.Tensor]:
            tokens, t = base_targets(self, batch)
            rows = t[tokens.valid]
            scaled = (t - rows.mean(0)) / (rows.std(0, correction=0) + 1e-3)
            return tokens, torch.where(tokens.valid[..., None], scaled, 0.0)

        jepa.GeoJEPA.encode_targets = encode_targets
    if args.token_vicreg:  # VICReg on the layer-normed token content (tokeniser output - prior)
        base_loss = jepa.GeoJEPA.forward_loss

        def forward_loss(self: jepa.GeoJEPA, batch: object, generator: torch.Generator):
            seen: list[object] = []
            hook = self.tokenizer.register_forward_hook(lambda m, i, o: seen.append(o))
            try:
                loss, logs = base_loss(self, batch, generator)
            finally:
                hook.remove()
            content = (seen[-1].x - seen[-1].pos_mod).float()
            var, cov = jepa.vicreg_terms(
                F.layer_norm(content, (content.shape[-1],)), seen[-1].valid
            )
            return loss + args.token_vicreg * (var + cov), logs

        jepa.GeoJEPA.forward_loss = forward_loss


def main() -> None:
    """Pretrain one variant and print its collapse metrics and probe scores."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--gz", type=int, default=15, help="zoom of the fold groups")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ema-keep", type=float, default=1.0)
    ap.add_argument("--ln-vicreg", action="store_true")
    ap.add_argument("--token-vicreg", type=float, default=0.0)
    ap.add_argument("--default-init", action="store_true")
    ap.add_argument("--fourier", type=int, default=0)
    ap.add_argument("--standardise-targets", action="store_true")
    ap.add_argument("--prior-norm", action="store_true")
    ap.add_argument("--freeze-content", action="store_true")
    ap.add_argument("--balanced", action="store_true")
    ap.add_argument("--tile-variance", type=float, default=0.0,
                    help="weight of the within-tile / within-block variance hinge")
    ap.add_argument("--predictor-warmup", type=int, default=0,
                    help="steps during which only the predictor trains")
    ap.add_argument("--tile-norm-targets", action="store_true",
                    help="standardise each target dimension within its tile")
    ap.add_argument("--box-features", type=int, default=0, help="octaves of centred box features")
    ap.add_argument("--targets", choices=("encoder", "tokens"), default="encoder")
    ap.add_argument("--model", default="{}", help="GeoJEPAConfig overrides as JSON")
    ap.add_argument("--train", default="{}", help="TrainConfig overrides as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    patch(args)
    train = TrainConfig(
        preset="small",
        epochs=args.epochs,
        batch_size=16,
        progress=False,
        seed=args.seed,
        pretrain_splits="all",
        checkpoint_every=1000,
        **json.loads(args.train),
    )
    start = time.perf_counter()
    pretrain(args.dataset, args.out, train, {"modalities": "T", **json.loads(args.model)})
    took = time.perf_counter() - start
    logs = pd.concat(
        [pd.read_csv(p) for p in sorted((args.out / "logs" / "csv").glob("session*/metrics.csv"))]
    )
    last = logs.dropna(subset=["train/loss"]).iloc[-5:]
    keys = ("loss_jepa", "var_pred", "var_context", "target_std", "target_cosine")
    print(
        f"pretrain {took:.0f} s, " + ", ".join(f"{k} {last[f'train/{k}'].mean():.3f}" for k in keys)
    )
    ds, labels = TileDataset(args.dataset), load_labels(args.dataset).to_pandas()
    _, folds = _folds(ds, labels, EvalConfig(group_zoom=args.gz))
    trained = load_checkpoint(args.out / "checkpoints" / "last.ckpt")
    untrained = random_init(trained)
    for task in select_tasks(["building_count", "max_speed", "traffic_signals"]):
        source, y = (
            masked_dataset(args.dataset, task.name),
            labels[task.name].to_numpy().astype(float),
        )
        scores = {}
        for name, ckpt in (("model", trained), ("random", untrained)):
            x = model_features(ckpt, source)
            scores[name] = [
                fit_linear(x, y, f, task.kind, log_target=task.count).metric for f in folds
            ]
            health = embedding_health(x)
            scores[name + "_health"] = (
                f"rank {health['effective_rank']:.1f}, cos {health['mean_cosine']:.3f}"
            )
        wins = sum(a < b for a, b in zip(scores["model"], scores["random"], strict=True))
        model, random = np.mean(scores["model"]), np.mean(scores["random"])
        print(
            f"{task.name:16s} model {model:6.3f} ({scores['model_health']})  "
            f"random {random:6.3f} ({scores['random_health']})  wins {wins}/{len(folds)}"
        )


if __name__ == "__main__":
    main()
