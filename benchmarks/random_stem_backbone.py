"""Export a GeoJEPA model's *untrained* image stem as a frozen backbone (issue 4).

On the synthetic city, the untrained 224 px image model read by the set probe finds the painted
crossings of the signalised junctions (masked traffic_signals 0.51-0.56 MAE), and JEPA
pretraining removes them (0.57-0.63; ``evaluate_results.md``, sessions 21-22). This script takes
a checkpoint, rebuilds the weights its pretraining started from (``features.random_init``, the
same weights as its random-init twin in ``geojepa evaluate``) and saves that model's trainable
patch embedding, unchanged, as a ``torch.export`` program that ``geojepa pretrain
--model-image-backbone FILE`` loads as a frozen backbone. Pretraining with it can no longer
change what the patch tokens see; only the adapter (LayerNorm + Linear) and the transformer learn.

Run by hand from the repository root (venv active):

    python benchmarks/random_stem_backbone.py CHECKPOINT --save stem.pt2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from mae_image_backbone import save_backbone
from torch import Tensor, nn

from geojepa.embed import load_checkpoint
from geojepa.features import random_init
from geojepa.model.tokenizer import load_frozen_backbone


class PatchFeatures(nn.Module):
    """A patch embedding as a backbone: ``Float[B, 3, S, S]`` -> ``Float[B, P, C]``."""

    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.stem = stem

    def forward(self, images: Tensor) -> Tensor:
        """Raster-order patch features of normalised images."""
        return self.stem(images).flatten(2).transpose(1, 2)


def export_stem(checkpoint: Path, path: Path, seed: int | None = None) -> tuple[nn.Module, int]:
    """Save the untrained patch embedding of ``checkpoint``'s model to ``path``; return it and
    its image side."""
    model = random_init(load_checkpoint(checkpoint), seed).model
    stem = model.tokenizer.image.patch_embed
    if stem is None:
        raise SystemExit(f"{checkpoint}: the model has no trainable image stem")
    module = PatchFeatures(stem).eval()
    save_backbone(module, path, model.config.image_size)
    return module, model.config.image_size


def main() -> None:
    """Export, then check that the saved backbone gives the stem's features."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--save", type=Path, required=True, help="the .pt2 file to write")
    parser.add_argument("--seed", type=int, default=None,
                        help="initialisation seed (default: the checkpoint's training seed)")
    args = parser.parse_args()
    module, size = export_stem(args.checkpoint, args.save, args.seed)
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    loaded = load_frozen_backbone(args.save, size)
    with torch.no_grad():
        gap = float((loaded(images) - module(images)).abs().max())
    print(f"{args.save}: {loaded.num_patches} patches x {loaded.out_dim}, max |difference| {gap:.2e}")


if __name__ == "__main__":
    main()
