"""The padded batch of tiles that the tokeniser consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

ENTITY, IMAGE = 0, 1
"""Token modalities."""


@dataclass
class TileBatch:
    """A batch of ``B`` tiles with up to ``N`` entities each, padded.

    Attributes:
        tag_ids: ``Long[B, N, K]`` vocabulary ids of each entity's tags; 0 = no tag (ids of real
            tags start at 1, in the order of the dataset's ``vocab.parquet``).
        geom: ``Float[B, N, V, 2]`` the entity's shape: box-frame vertices in ``[0, 1]^2``,
            parts one after another, at most ``V``.
        geom_part: ``Long[B, N, V]`` part of each vertex (ring, line, member), -1 for padding.
        kind: ``Long[B, N]`` 0 point, 1 line, 2 polygon, 3 relation.
        boxes: ``Float[B, N, 8]`` minimum rotated box corners in the tile frame.
        valid: ``Bool[B, N]`` False for padding entities.
        image: ``Float[B, 3, H, W]`` normalised RGB, or None without imagery.
        has_image: ``Bool[B]`` tiles whose image had data, or None without imagery.
        tiles: ``Long[B, 3]`` z, x, y of each tile.
    """

    tag_ids: Tensor
    geom: Tensor
    geom_part: Tensor
    kind: Tensor
    boxes: Tensor
    valid: Tensor
    tiles: Tensor
    image: Tensor | None = None
    has_image: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of tiles."""
        return self.valid.shape[0]

    def to(self, device: torch.device | str) -> TileBatch:
        """Move every tensor to ``device``."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device, non_blocking=True)
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def select(self, rows: Tensor | slice) -> TileBatch:
        """A batch of a subset of the tiles (padding is kept as it is)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[rows]
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )
