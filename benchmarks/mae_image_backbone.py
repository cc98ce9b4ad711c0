"""A frozen image backbone for GeoJEPA, self-supervised on a dataset's own imagery (issue 4).

GeoJEPA's trainable image stem learns image features the JEPA objective can predict, and on the
synthetic city those do not show the painted crosswalks of the signalised junctions (see
``headroom_city_signals.md``). A masked autoencoder (MAE: hide 75% of the 16 px patches,
reconstruct their pixels) has to keep such local, high-contrast detail, so it might (on the
synthetic city it does not: ``mae_image_backbone.md``, and ``evaluate_results.md``, session 21,
for the set probe on its patch features). This script trains a
small MAE on the tile images of one dataset (no labels, no OSM), saves its encoder as a
``torch.export`` program that ``geojepa pretrain --model-image-backbone FILE`` loads as a frozen
backbone (196 patch features per 224 px image, no CLS token), and probes the backbone's
``[max, mean]`` pooled patch features on the masked task labels of a second dataset, with the
probes and spatially grouped folds of ``geojepa evaluate``.

Run by hand from the repository root (venv active; ``geojepa prepare --image-size 224`` and
``geojepa tasks`` made the datasets; about 14 minutes on 2 cores for 2,860 training images):

    python benchmarks/mae_image_backbone.py --train city8_224 --probe city224 \
        --save mae.pt2 --out benchmarks/mae_image_backbone.md
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from headroom_city_signals import probe_cells, tile_images
from numpy.typing import NDArray
from torch import Tensor, nn

from geojepa.atomic import atomic_file
from geojepa.dataset.reader import TileDataset
from geojepa.model.tokenizer import hmlp_stem
from geojepa.probes import grouped_folds

PATCH = 16


def sincos_positions(side: int, dim: int) -> Tensor:
    """Fixed 2-d sine-cosine positions of a ``side x side`` patch grid in raster order, ``[P, dim]``."""
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter) / quarter))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = [f(axis.flatten()[:, None].float() * freqs) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


def transformer(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    """A pre-LN transformer without dropout (MAE pretraining uses none)."""
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def patchify(images: Tensor) -> Tensor:
    """``[B, C, S, S]`` -> ``[B, P, C, 16, 16]`` patches in raster order."""
    b, c, size, _ = images.shape
    side = size // PATCH
    grid = images.reshape(b, c, side, PATCH, side, PATCH).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b, side * side, c, PATCH, PATCH)


class PatchEncoder(nn.Module):
    """The backbone: hmlp patch stem + fixed positions + transformer -> ``[B, P, dim]``."""

    def __init__(self, image_size: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.stem = hmlp_stem(dim, PATCH)
        self.register_buffer("pos", sincos_positions(image_size // PATCH, dim))
        self.blocks = transformer(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)

    def tokens(self, images: Tensor) -> Tensor:
        """Patch tokens with positions, before the transformer, ``[B, P, dim]``."""
        return self.stem(images).flatten(2).transpose(1, 2) + self.pos

    def forward(self, images: Tensor) -> Tensor:
        """``Float[B, 3, S, S]`` normalised images -> ``Float[B, P, dim]`` patch features."""
        return self.norm(self.blocks(self.tokens(images)))


class MaskedAutoencoder(nn.Module):
    """An MAE around :class:`PatchEncoder`: the encoder sees the kept patches, a narrow decoder
    reconstructs the hidden ones' pixels, each patch normalised to zero mean and unit variance."""

    def __init__(self, image_size: int = 224, dim: int = 128, depth: int = 4, heads: int = 4,
                 decoder_dim: int = 64, decoder_depth: int = 2) -> None:
        super().__init__()
        self.encoder = PatchEncoder(image_size, dim, depth, heads)
        self.to_decoder = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.register_buffer("decoder_pos", sincos_positions(image_size // PATCH, decoder_dim))
        self.decoder = transformer(decoder_dim, decoder_depth, heads)
        self.to_pixels = nn.Sequential(nn.LayerNorm(decoder_dim), nn.Linear(decoder_dim, 3 * PATCH * PATCH))

    def loss(self, images: Tensor, mask_ratio: float, generator: torch.Generator) -> Tensor:
        """Mean squared reconstruction error of the hidden patches.

        The stem sees one patch at a time (its kernels equal their strides), so only the kept
        patches go through it, as they would inside the whole image.
        """
        patches = patchify(images)  # [B, P, 3, 16, 16]
        b, p = patches.shape[:2]
        keep = max(1, round(p * (1 - mask_ratio)))
        order = torch.rand(b, p, generator=generator).argsort(dim=1)
        kept, hidden = order[:, :keep], order[:, keep:]
        rows = torch.arange(b)[:, None]
        tokens = self.encoder.stem(patches[rows, kept].flatten(0, 1)).view(b, keep, -1)
        latent = self.encoder.norm(self.encoder.blocks(tokens + self.encoder.pos[kept]))
        full = self.mask_token.expand(b, p, -1).clone()
        full[rows, kept] = self.to_decoder(latent)
        predicted = self.to_pixels(self.decoder(full + self.decoder_pos)[rows, hidden])
        target = patches[rows, hidden].flatten(2)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return nn.functional.mse_loss(predicted, target)


def train_mae(images: NDArray[np.float32], epochs: int, batch_size: int, lr: float,
              seed: int) -> tuple[MaskedAutoencoder, list[float]]:
    """Train the MAE on ``images`` (flipped and quarter-turned at random); mean loss per epoch."""
    torch.manual_seed(seed)
    model = MaskedAutoencoder(image_size=images.shape[-1])
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "mask_token" not in n]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1 or "mask_token" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    steps = epochs * math.ceil(len(images) / batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))))
    generator = torch.Generator().manual_seed(seed)
    x, history = torch.from_numpy(images), []
    model.train()
    for _ in range(epochs):
        losses = []
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            turns, flip = torch.randint(4, (2,), generator=generator).tolist()
            inputs = torch.rot90(x[batch], turns, (2, 3))
            inputs = inputs.flip(3) if flip % 2 else inputs
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(inputs, 0.75, generator)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        print(f"epoch {len(history)}: loss {history[-1]:.4f}", flush=True)
    return model.eval(), history


def pooled_features(encoder: nn.Module, images: NDArray[np.float32]) -> NDArray[np.float64]:
    """``[max, mean]`` over patches of the backbone's features, one row per image."""
    with torch.no_grad():
        feats = torch.cat([encoder(chunk) for chunk in torch.from_numpy(images).split(64)])
    return torch.cat([feats.amax(1), feats.mean(1)], 1).double().numpy()


def save_backbone(encoder: nn.Module, path: Path, image_size: int) -> None:
    """Export an image backbone (``[B, 3, S, S]`` -> ``[B, P, C]``) with a dynamic batch size
    to a ``.pt2`` file, written atomically."""
    example = torch.zeros(2, 3, image_size, image_size)
    program = torch.export.export(encoder.eval(), (example,),
                                  dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    atomic_file(path, lambda tmp: torch.export.save(program, str(tmp)))


def dataset_images(ds: Path, size: int) -> NDArray[np.float32]:
    """Every tile image of a dataset, ``[N, 3, size, size]``."""
    keys = np.array([(t["x"], t["y"]) for t in TileDataset(ds).iter_tiles(columns=["x", "y"])])
    return tile_images(ds, keys, size)


def main() -> None:
    """Train, save and probe the backbone; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="dataset whose images train the MAE")
    parser.add_argument("--probe", type=Path, required=True, help="dataset (with tasks) to probe on")
    parser.add_argument("--save", type=Path, required=True, help="where to write the .pt2 backbone")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=["traffic_signals", "building_count"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/mae_image_backbone.md"))
    args = parser.parse_args()
    start = time.perf_counter()
    model, history = train_mae(dataset_images(args.train, args.image_size), args.epochs,
                               args.batch_size, args.lr, args.seed)
    train_s = time.perf_counter() - start
    save_backbone(model.encoder, args.save, args.image_size)
    labels = pd.read_parquet(args.probe / "tasks" / "labels.parquet")
    zoom, keys = int(labels["z"].iloc[0]), labels[["x", "y"]].to_numpy()
    folds = grouped_folds(keys >> (zoom - 14), 5, 0)
    images = tile_images(args.probe, keys, args.image_size)
    torch.manual_seed(args.seed)
    features = {"Dummy (train median)": None,
                "MAE encoder, untrained": pooled_features(PatchEncoder(args.image_size, 128, 4, 4).eval(), images),
                f"MAE encoder, {args.epochs} epochs": pooled_features(model.encoder, images)}
    lines = ["| image features, [max, mean] over patches | task | linear | MLP |", "|---|---|---|---|"]
    for task in args.tasks:
        y = labels[task].to_numpy(np.float64)
        for name, x in features.items():
            lines.append(f"| {name} | {task} | {probe_cells(x, y, folds)} |")
            print(lines[-1], flush=True)
    header = [
        "# A self-supervised (MAE) image backbone for GeoJEPA, probed on its own (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        (f"Command: `python benchmarks/mae_image_backbone.py --train {args.train.name} --probe "
         f"{args.probe.name} --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g} "
         f"--seed {args.seed}`  "),
        f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
        (f"MAE: {len(history)} epochs on the {args.train.name} images in {train_s:.0f} s, "
         f"reconstruction loss {history[0]:.3f} -> {history[-1]:.3f}. Probes: masked labels of "
         f"{args.probe.name} ({len(labels)} tiles), 5 folds over zoom-14 groups (seed 0, the folds "
         "of `geojepa evaluate`), counts fitted in log space; test MAE, mean +- std over folds."), "",
    ]
    args.out.write_text("\n".join([*header, *lines, ""]))


if __name__ == "__main__":
    main()
