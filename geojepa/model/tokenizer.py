"""The tokeniser: OSM entities and aerial-image patches -> one token set per tile (SPEC section 3).

Entity tokens (when tags ``T`` or geometry ``G`` are on)::

    tag_vec  = Linear(LayerNorm(sum of the entity's tag vectors))      frozen table or learned
    geom_vec = Linear([masked mean, masked max] of a vertex transformer)
    content  = MLP([tag_vec, geom_vec])          2d -> 2d -> d, GELU; a missing half is zeros

Image tokens (when ``I`` is on): a trainable 16 px patch embedding - one strided convolution
(``patch``, as in I-JEPA) or a hierarchical MLP stem (``hmlp``: 4 px, then 2 x 2, then 2 x 2
cells, each step a non-overlapping strided convolution with a per-pixel LayerNorm and GELU
between, after Touvron et al. 2022, so that no patch token sees a pixel of its neighbours) - or a
frozen pretrained backbone (:func:`load_frozen_backbone`: a ``torch.export`` or TorchScript file)
followed by LayerNorm + Linear. Each patch's position is its axis-aligned cell in the tile frame;
image rows run south while the tile frame's y runs north, so patch row 0 is the northern strip
``y in [1 - 1/g, 1]``. Image tokens of tiles without imagery are padding.

Every token then gets the position/modality prior::

    pos = MLP(box 8 -> 4d -> d), mod = MLP(one-hot modality -> 4d -> d)
    pos_mod = MLP([pos, mod] -> d -> d),   x = content + pos_mod

In training, Gaussian noise is added to the boxes seen by the prior and, when both tags and
geometry are on, modality drop-out zeroes the whole tag half or the whole geometry half of
every entity for the batch (together with chance ``modality_dropout``, each half equally
likely, never both). Padding tokens are all zeros and marked invalid; entities without tags (or
without vertices) get a zero tag (geometry) half. All per-token work runs on the real tokens
only.

Geometry encoder **(ours)**: a small transformer (default 2 blocks of width 64) over the entity's
box-frame vertices, pooled by masked mean and max over its real vertices. Each vertex carries
its coordinates, the offsets to the previous and next vertex of the same part (the polyline and
ring edges a graph network would use), a part embedding (outer ring, holes, relation members)
and the entity's kind embedding. Self-attention then relates every vertex to every other
(parallel sides, holes against their ring) where a PointNet would only pool independent points,
and it needs no edge lists; points (one vertex), lines, rings with holes and relation members
all go through the same path.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geojepa.errors import GeoJepaError
from geojepa.model.batch import ENTITY, IMAGE, TileBatch
from geojepa.model.encoder import Transformer, init_weights

MODALITY_LETTERS = "GTI"
"""Geometry, tags, images: the letters of a modality setting, in canonical order."""

NUM_MODALITIES = 2
"""Token modalities (:data:`ENTITY`, :data:`IMAGE`) known to the modality prior."""

NUM_KINDS = 4
"""Entity kinds: 0 point, 1 line, 2 polygon, 3 relation."""


@dataclass
class Tokens:
    """One padded token set per tile.

    Attributes:
        x: ``Float[B, L, d]`` token content plus prior; zeros at padding.
        pos_mod: ``Float[B, L, d]`` the position/modality prior alone (the predictor's queries).
        boxes: ``Float[B, L, 8]`` token boxes in the tile frame (without training noise).
        modality: ``Long[B, L]`` :data:`ENTITY` or :data:`IMAGE`.
        valid: ``Bool[B, L]``, False at padding. Layout: ``N`` entity tokens (when tags or
            geometry are on), then ``P`` image tokens (when images are on).
    """

    x: Tensor
    pos_mod: Tensor
    boxes: Tensor
    modality: Tensor
    valid: Tensor


def parse_modalities(modalities: str) -> str:
    """Check a modality setting and put it in canonical order.

    Args:
        modalities: Letters among ``G`` (geometry), ``T`` (tags), ``I`` (images), any order.

    Returns:
        The letters in the order ``G``, ``T``, ``I`` (e.g. ``"TG"`` -> ``"GT"``).

    Raises:
        ValueError: If the setting is empty or has unknown or repeated letters.
    """
    letters = modalities.upper()
    if not letters or len(set(letters)) != len(letters) or set(letters) - set(MODALITY_LETTERS):
        raise ValueError(f"modalities must be a combination of G, T and I, got {modalities!r}")
    return "".join(letter for letter in MODALITY_LETTERS if letter in letters)


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """``Linear -> GELU -> Linear``."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))


def patch_boxes(grid: int) -> Tensor:
    """Boxes of the cells of a ``grid x grid`` patch raster over the tile.

    Args:
        grid: Patches per side.

    Returns:
        ``Float[grid * grid, 8]``: per patch, in raster order (image row 0 = north), the corners
        ``(x0, y0), (x1, y0), (x1, y1), (x0, y1)`` (counter-clockwise) in the tile frame.
    """
    step = 1.0 / grid
    col = torch.arange(grid, dtype=torch.float32).repeat(grid)
    row = torch.arange(grid, dtype=torch.float32).repeat_interleave(grid)
    x0, x1 = col * step, (col + 1) * step
    y0, y1 = 1.0 - (row + 1) * step, 1.0 - row * step
    return torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], dim=1)


class TagEncoder(nn.Module):
    """Entity tag vector: the sum of its tags' vectors, LayerNorm, Linear to ``d``.

    Args:
        dim: Output width ``d``.
        vocab_size: Number of distinct tags (ids ``1..vocab_size``; 0 = no tag).
        tag_dim: Width of a tag vector.
        mode: ``"frozen"``: ``table`` is a fixed buffer (frozen text embeddings);
            ``"learned"``: a trainable embedding table.
        table: ``Float[vocab_size + 1, tag_dim]`` for ``"frozen"`` (row 0 is ignored).
    """

    table: Tensor

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        tag_dim: int,
        mode: Literal["frozen", "learned"],
        table: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding: nn.Embedding | None = None
        if mode == "frozen":
            if table is None:
                raise ValueError("the frozen tag encoder needs a tag embedding table")
            if table.shape != (vocab_size + 1, tag_dim):
                raise ValueError(
                    f"tag table must have shape [vocab_size + 1, tag_dim] = "
                    f"{[vocab_size + 1, tag_dim]}, got {list(table.shape)}"
                )
            self.register_buffer("table", table.detach().float().clone(), persistent=False)
        elif mode == "learned":
            self.embedding = nn.Embedding(vocab_size + 1, tag_dim, padding_idx=0)
            nn.init.normal_(self.embedding.weight, std=1.0 / math.sqrt(tag_dim))
            with torch.no_grad():
                self.embedding.weight[0].zero_()
        else:
            raise ValueError(f"tag encoder must be 'frozen' or 'learned', got {mode!r}")
        self.norm = nn.LayerNorm(tag_dim)
        self.proj = nn.Linear(tag_dim, dim)

    def forward(self, tag_ids: Tensor) -> Tensor:
        """Encode entities' tags.

        Args:
            tag_ids: ``Long[E, K]`` tag ids (0 = no tag) of ``E`` entities.

        Returns:
            ``Float[E, d]``; zeros for entities without tags.
        """
        weight = self.table if self.embedding is None else self.embedding.weight
        summed = F.embedding_bag(tag_ids, weight, mode="sum", padding_idx=0)
        out = self.proj(self.norm(summed))
        return out * (tag_ids > 0).any(dim=1, keepdim=True).to(out.dtype)


class GeometryEncoder(nn.Module):
    """Entity shape vector from its box-frame vertices (see the module docstring).

    Args:
        dim: Output width ``d``.
        width: Width of the vertex transformer.
        depth: Its number of blocks.
        heads: Its attention heads.
        max_parts: Part embeddings; parts beyond share the last one.
        frozen: Freeze the encoder: no gradients, eval mode forever (``train()`` is ignored).
    """

    def __init__(
        self,
        dim: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        max_parts: int = 16,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        self.frozen = frozen
        self.vertex = nn.Linear(6, width)
        self.part = nn.Embedding(max_parts, width)
        self.kind = nn.Embedding(NUM_KINDS, width)
        self.transformer = Transformer(width, depth, heads)
        self.norm = nn.LayerNorm(2 * width)
        self.proj = nn.Linear(2 * width, dim)
        for layer in (self.vertex, self.proj):
            init_weights(layer)
        for table in (self.part, self.kind):
            nn.init.trunc_normal_(table.weight, std=0.02)
        if frozen:
            self.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> GeometryEncoder:
        """Set training mode, except that a frozen encoder stays in eval mode."""
        return super().train(mode and not self.frozen)

    def forward(self, geom: Tensor, part: Tensor, kind: Tensor) -> Tensor:
        """Encode entity shapes.

        Args:
            geom: ``Float[E, V, 2]`` box-frame vertices.
            part: ``Long[E, V]`` part of each vertex, -1 at padding.
            kind: ``Long[E]`` entity kind.

        Returns:
            ``Float[E, d]``; zeros for entities without vertices.
        """
        num_entities, num_vertices = part.shape
        valid = part >= 0
        positions = torch.arange(1, num_vertices + 1, device=part.device)
        end = (valid * positions).amax(dim=1) if num_entities else positions[:0]
        width = int(end.max()) if num_entities else 0
        if width == 0:
            return geom.new_zeros(num_entities, self.proj.out_features)
        has = (end > 0).nonzero().squeeze(1)
        geom, part, valid = geom[has, :width], part[has, :width], valid[has, :width]
        same_next = valid[:, 1:] & valid[:, :-1] & (part[:, 1:] == part[:, :-1])
        step = (geom[:, 1:] - geom[:, :-1]) * same_next[..., None].to(geom.dtype)
        zero = step.new_zeros(step.shape[0], 1, 2)
        feats = torch.cat([geom, torch.cat([step, zero], 1), torch.cat([zero, step], 1)], dim=-1)
        parts = part.clamp(0, self.part.num_embeddings - 1)
        h = self.vertex(feats) + self.part(parts) + self.kind(kind[has])[:, None]
        h = self.transformer(h, valid)
        mean = h.sum(dim=1) / valid.sum(dim=1, keepdim=True).to(h.dtype)
        top = h.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
        pooled = self.proj(self.norm(torch.cat([mean, top], dim=-1)))
        return pooled.new_zeros(num_entities, pooled.shape[-1]).index_copy(0, has, pooled)


class FrozenBackbone(nn.Module):
    """A pretrained image feature extractor, frozen: eval mode forever and no gradients.

    The wrapped module maps ``Float[B, 3, S, S]`` normalised images to ``Float[B, P, C]`` patch
    features in raster order (row 0 = top of the image), with ``P`` a square number (leave any
    CLS token out). It is put in eval mode once (an exported program already is) and
    :meth:`train` never reaches it again, so BatchNorm statistics and dropout stay frozen.

    Args:
        module: The feature extractor.
        image_size: Image side ``S`` it is probed with.

    Attributes:
        num_patches: ``P``.
        out_dim: ``C``.

    Raises:
        GeoJepaError: If the module's output is not ``[B, P, C]`` with square ``P``.
    """

    def __init__(self, module: nn.Module, image_size: int) -> None:
        super().__init__()
        self.module = module
        self.requires_grad_(False)
        self.training = False
        with contextlib.suppress(NotImplementedError):  # exported programs are fixed in eval
            module.eval()
        with torch.no_grad():
            probe = module(torch.zeros(1, 3, image_size, image_size))
        if probe.ndim != 3 or math.isqrt(probe.shape[1]) ** 2 != probe.shape[1]:
            raise GeoJepaError(
                "an image backbone must return [B, P, C] patch features with a square number "
                f"of patches P, got {tuple(probe.shape)}"
            )
        self.num_patches, self.out_dim = int(probe.shape[1]), int(probe.shape[2])

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Ignore requests for training mode: the backbone always stays in eval mode."""
        self.training = False
        return self

    def forward(self, image: Tensor) -> Tensor:
        """``Float[B, 3, S, S]`` -> ``Float[B, P, C]`` features, without gradients."""
        with torch.no_grad():
            return self.module(image).float()


def load_frozen_backbone(path: Path, image_size: int = 224) -> FrozenBackbone:
    """Load a frozen image backbone from a file the user gives.

    This is the plug-in point for pretrained image encoders (e.g. an ImageNet ViT-B/16 without
    its CLS token): any module that maps ``Float[B, 3, S, S]`` normalised images to
    ``Float[B, P, C]`` raster-order patch features works, saved either with
    ``torch.export.save`` (a ``.pt2`` file, exported in eval mode with a dynamic batch size) or
    as TorchScript with ``torch.jit.save`` (any other suffix).

    Args:
        path: The ``.pt2`` or TorchScript file.
        image_size: Image side ``S``.

    Returns:
        The frozen backbone (on the CPU).

    Raises:
        GeoJepaError: If the file is missing or holds no usable module.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoJepaError("image backbone file not found", path)
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # loaders raise many types for a bad file
        kind = "torch.export program" if path.suffix == ".pt2" else "TorchScript module"
        raise GeoJepaError(f"not a {kind} ({err})", path) from err
    try:
        return FrozenBackbone(module, image_size)
    except GeoJepaError as err:
        raise GeoJepaError(str(err), path) from err
    except RuntimeError as err:
        raise GeoJepaError(
            f"image backbone failed on a {image_size} px image ({err})", path
        ) from err


ImageStem = Literal["patch", "hmlp"]
IMAGE_STEMS: tuple[ImageStem, ...] = ("patch", "hmlp")
"""Trainable patch embeddings: one strided convolution, or the hierarchical MLP stem."""


class _PixelNorm(nn.LayerNorm):
    """LayerNorm over the channels of every pixel of a ``[B, C, H, W]`` map (nothing spatial)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each pixel's channel vector."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def check_image_stem(stem: str, patch: int) -> None:
    """Check that ``stem`` is one of :data:`IMAGE_STEMS` and can cut ``patch`` px patches.

    Raises:
        ValueError: If the stem is unknown, or it is ``hmlp`` and ``patch`` is not a positive
            multiple of 4.
    """
    if stem not in IMAGE_STEMS:
        raise ValueError(f"image_stem must be one of {', '.join(IMAGE_STEMS)}, got {stem!r}")
    if stem == "hmlp" and (patch < 4 or patch % 4):
        raise ValueError(f"the hmlp image stem needs a patch side that is a multiple of 4, got {patch}")


def hmlp_stem(dim: int, patch: int) -> nn.Sequential:
    """The hierarchical MLP stem: ``patch / 4`` px cells, then 2 x 2 of those, then 2 x 2 again.

    Every step is a strided convolution whose kernel equals its stride, so a patch token is a
    (non-linear) function of its own ``patch x patch`` pixels only, as with one strided
    convolution, and masking a patch hides all of it.

    Args:
        dim: Output width ``d`` (the first two steps are ``max(d / 4, 8)`` wide).
        patch: Patch side in pixels, a multiple of 4.

    Raises:
        ValueError: If ``patch`` is not a positive multiple of 4.
    """
    check_image_stem("hmlp", patch)
    width = max(dim // 4, 8)
    return nn.Sequential(
        nn.Conv2d(3, width, kernel_size=patch // 4, stride=patch // 4), _PixelNorm(width), nn.GELU(),
        nn.Conv2d(width, width, kernel_size=2, stride=2), _PixelNorm(width), nn.GELU(),
        nn.Conv2d(width, dim, kernel_size=2, stride=2),
    )


class ImageEncoder(nn.Module):
    """Image patch tokens: a trainable patch embedding or a frozen backbone + LayerNorm + Linear.

    Args:
        dim: Output width ``d``.
        image_size: Image side in pixels.
        patch: Patch side in pixels of the trainable patch embedding.
        backbone: A frozen backbone to use instead of the patch embedding.
        stem: The trainable patch embedding (:data:`IMAGE_STEMS`): ``"patch"``, one strided
            convolution, or ``"hmlp"`` (:func:`hmlp_stem`).

    Attributes:
        grid: Patches per side.
    """

    def __init__(
        self, dim: int, image_size: int, patch: int, backbone: FrozenBackbone | None = None,
        stem: ImageStem = "patch",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.image_size = image_size
        self.backbone = backbone
        self.patch_embed: nn.Module | None = None
        self.adapter: nn.Sequential | None = None
        check_image_stem(stem, patch)
        if backbone is None:
            if image_size % patch:
                raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
            self.patch_embed = (
                nn.Conv2d(3, dim, kernel_size=patch, stride=patch) if stem == "patch"
                else hmlp_stem(dim, patch)
            )
            self.grid = image_size // patch
        else:
            self.adapter = nn.Sequential(
                nn.LayerNorm(backbone.out_dim), nn.Linear(backbone.out_dim, dim)
            )
            init_weights(self.adapter[1])
            self.grid = math.isqrt(backbone.num_patches)
        self.boxes: Tensor
        self.register_buffer("boxes", patch_boxes(self.grid), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        """``Float[B, 3, S, S]`` -> ``Float[B, grid^2, d]`` patch tokens in raster order.

        Raises:
            ValueError: If the image is not ``image_size`` square.
        """
        if image.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"images must be [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(image.shape)}"
            )
        if image.shape[0] == 0:
            return image.new_zeros(0, self.grid**2, self.dim)
        if self.patch_embed is not None:
            return self.patch_embed(image).flatten(2).transpose(1, 2)
        assert self.adapter is not None and self.backbone is not None
        return self.adapter(self.backbone(image))


class Tokenizer(nn.Module):
    """Tiles -> token sets: entity tokens and/or image tokens with their prior.

    Args:
        dim: Token width ``d``.
        modalities: Letters among ``G``, ``T``, ``I`` (see :func:`parse_modalities`).
        tag_encoder: ``"frozen"`` or ``"learned"``.
        vocab_size: Number of distinct tags.
        tag_dim: Width of a tag vector (the text model's width for ``"frozen"``).
        tag_table: ``Float[vocab_size + 1, tag_dim]`` frozen tag table (``"frozen"`` with ``T``).
        geometry_dim: Width of the vertex transformer.
        geometry_depth: Its blocks.
        geometry_heads: Its heads.
        geometry_parts: Its part embeddings.
        freeze_geometry: Freeze the geometry encoder.
        image_size: Image side in pixels.
        patch: Patch side of the trainable patch embedding.
        image_backbone: Frozen backbone to use for images instead of the patch embedding.
        image_stem: The trainable patch embedding (:data:`IMAGE_STEMS`).
        modality_dropout: Chance per training batch of dropping the tag or the geometry half.
        box_noise: Standard deviation of the training noise on token boxes (tile units).
    """

    def __init__(
        self,
        dim: int,
        modalities: str = "T",
        tag_encoder: Literal["frozen", "learned"] = "frozen",
        vocab_size: int = 0,
        tag_dim: int = 384,
        tag_table: Tensor | None = None,
        geometry_dim: int = 64,
        geometry_depth: int = 2,
        geometry_heads: int = 4,
        geometry_parts: int = 16,
        freeze_geometry: bool = False,
        image_size: int = 224,
        patch: int = 16,
        image_backbone: FrozenBackbone | None = None,
        image_stem: ImageStem = "patch",
        modality_dropout: float = 0.3,
        box_noise: float = 0.01,
    ) -> None:
        super().__init__()
        self.modalities = parse_modalities(modalities)
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must lie in [0, 1], got {modality_dropout}")
        if box_noise < 0.0:
            raise ValueError(f"box_noise must be >= 0, got {box_noise}")
        self.dim = dim
        self.modality_dropout = modality_dropout
        self.box_noise = box_noise
        self.tags = (
            TagEncoder(dim, vocab_size, tag_dim, tag_encoder, tag_table)
            if "T" in self.modalities
            else None
        )
        self.geometry = (
            GeometryEncoder(
                dim,
                geometry_dim,
                geometry_depth,
                geometry_heads,
                geometry_parts,
                freeze_geometry,
            )
            if "G" in self.modalities
            else None
        )
        self.entities = self.tags is not None or self.geometry is not None
        self.fusion = mlp(2 * dim, 2 * dim, dim) if self.entities else None
        self.image = (
            ImageEncoder(dim, image_size, patch, image_backbone, image_stem)
            if "I" in self.modalities
            else None
        )
        self.pos = mlp(8, 4 * dim, dim)
        self.mod = mlp(NUM_MODALITIES, 4 * dim, dim)
        self.pos_mod = mlp(2 * dim, dim, dim)
        for module in (self.fusion, self.pos, self.mod, self.pos_mod, self.image):
            if module is not None:
                module.apply(init_weights)

    def shared_parts(self) -> list[object]:
        """The frozen parts, which an EMA copy may share instead of duplicating.

        Returns:
            The frozen tag table, a frozen geometry encoder and a frozen image backbone, where
            present.
        """
        parts: list[object] = []
        if self.tags is not None and self.tags.embedding is None:
            parts.append(self.tags.table)
        if self.geometry is not None and self.geometry.frozen:
            parts.append(self.geometry)
        if self.image is not None and self.image.backbone is not None:
            parts.append(self.image.backbone)
        return parts

    def forward(self, batch: TileBatch, generator: torch.Generator | None = None) -> Tokens:
        """Tokenise a batch.

        Args:
            batch: The tiles.
            generator: Randomness of the training noise and modality drop-out (the global
                generator when None); unused in eval mode.

        Returns:
            The tokens; see :class:`Tokens`.

        Raises:
            GeoJepaError: If images are on and the batch has no imagery.
            ValueError: If a tag id lies outside the vocabulary.
        """
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # content, boxes, modality, valid
        if self.entities:
            parts.append(self._entities(batch, generator))
        if self.image is not None:
            parts.append(self._images(batch))
        content, boxes, modality, valid = (
            torch.cat(items, dim=1) for items in zip(*parts, strict=True)
        )
        dtype = next(self.pos.parameters()).dtype
        prior = self._prior(boxes, modality, valid, generator).to(dtype)
        return Tokens(content.to(dtype) + prior, prior, boxes, modality, valid)

    def _entities(
        self, batch: TileBatch, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Entity contents (real entities only, scattered back), boxes, modality, valid."""
        valid = batch.valid
        num_tiles, num_entities = valid.shape
        index = valid.reshape(-1).nonzero().squeeze(1)
        drop_tags, drop_geometry = self._draw_dropout(valid.device, generator)
        tag_vec = geom_vec = None
        if self.tags is not None and not drop_tags:
            ids = batch.tag_ids.reshape(num_tiles * num_entities, -1).index_select(0, index)
            if ids.numel() and (int(ids.max()) > self.tags.vocab_size or int(ids.min()) < 0):
                raise ValueError(
                    f"tag ids must lie in [0, {self.tags.vocab_size}], got "
                    f"[{int(ids.min())}, {int(ids.max())}]"
                )
            tag_vec = self.tags(ids)
        if self.geometry is not None and not drop_geometry:
            vertices = batch.geom.shape[2]
            geom = batch.geom.reshape(-1, vertices, 2).index_select(0, index)
            part = batch.geom_part.reshape(-1, vertices).index_select(0, index)
            geom_vec = self.geometry(geom, part, batch.kind.reshape(-1).index_select(0, index))
        present = tag_vec if tag_vec is not None else geom_vec
        dtype = torch.float32 if present is None else present.dtype
        zeros = torch.zeros(index.numel(), self.dim, dtype=dtype, device=valid.device)
        halves = [zeros if h is None else h.to(dtype) for h in (tag_vec, geom_vec)]
        assert self.fusion is not None
        fused = self.fusion(torch.cat(halves, dim=-1))
        content = fused.new_zeros(num_tiles * num_entities, self.dim).index_copy(0, index, fused)
        modality = torch.full_like(valid, ENTITY, dtype=torch.long)
        return content.view(num_tiles, num_entities, -1), batch.boxes, modality, valid

    def _images(self, batch: TileBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Image patch contents, boxes, modality and valid (only tiles with imagery)."""
        assert self.image is not None
        if batch.image is None:
            raise GeoJepaError(
                f"modalities {self.modalities!r} include images (I), but the batch has no "
                "imagery: prepare the dataset with imagery or leave I out"
            )
        device = batch.image.device
        num_tiles = batch.image.shape[0]
        has_image = (
            torch.ones(num_tiles, dtype=torch.bool, device=device)
            if batch.has_image is None
            else batch.has_image.to(device)
        )
        patches = self.image.grid**2
        index = has_image.nonzero().squeeze(1)
        encoded = self.image(batch.image.index_select(0, index))
        content = encoded.new_zeros(num_tiles, patches, self.dim).index_copy(0, index, encoded)
        boxes = self.image.boxes.expand(num_tiles, patches, 8)
        modality = torch.full((num_tiles, patches), IMAGE, dtype=torch.long, device=device)
        return content, boxes, modality, has_image[:, None].expand(num_tiles, patches)

    def query_prior(self, boxes: Tensor, kind: int) -> Tensor:
        """The position/modality prior of query boxes, as the predictor's queries get it.

        Args:
            boxes: ``Float[Q, 8]`` box corners in the tile frame.
            kind: Their modality (:data:`~geojepa.model.batch.ENTITY` or ``IMAGE``).

        Returns:
            ``Float[Q, d]`` priors (box noise only in training mode).
        """
        modality = torch.full((1, len(boxes)), kind, dtype=torch.long, device=boxes.device)
        valid = torch.ones_like(modality, dtype=torch.bool)
        return self._prior(boxes[None], modality, valid, None)[0]

    def _draw_dropout(
        self, device: torch.device, generator: torch.Generator | None
    ) -> tuple[bool, bool]:
        """Which entity half (tags, geometry) to drop for this batch: at most one, training only."""
        if not self.training or self.tags is None or self.geometry is None:
            return False, False
        gen_device = device if generator is None else generator.device
        u = torch.rand(2, generator=generator, device=gen_device).tolist()
        if u[0] >= self.modality_dropout:
            return False, False
        return u[1] < 0.5, u[1] >= 0.5

    def _prior(
        self, boxes: Tensor, modality: Tensor, valid: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """The position/modality prior of every real token (zeros at padding)."""
        num_tiles, length = valid.shape
        index = valid.reshape(-1).nonzero().squeeze(1)
        real_boxes = boxes.reshape(-1, 8).index_select(0, index).float()
        if self.training and self.box_noise > 0.0:
            gen_device = real_boxes.device if generator is None else generator.device
            noise = torch.randn(real_boxes.shape, generator=generator, device=gen_device)
            real_boxes = real_boxes + self.box_noise * noise.to(real_boxes.device)
        one_hot = torch.eye(NUM_MODALITIES, device=boxes.device)
        mods = self.mod(one_hot)[modality.reshape(-1).index_select(0, index)]
        pos = self.pos(real_boxes)
        prior = self.pos_mod(torch.cat([pos, mods.to(pos.dtype)], dim=-1))
        out = prior.new_zeros(num_tiles * length, self.dim).index_copy(0, index, prior)
        return out.view(num_tiles, length, self.dim)
