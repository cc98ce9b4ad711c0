"""GeoJEPA: settings, presets and the JEPA model (SPEC sections 3-5).

One training step (:meth:`GeoJEPA.forward_loss`):

1. The *target* side (an EMA copy of the tokeniser and the encoder, always in eval mode, no
   gradients) encodes the full token set of every tile; its outputs, layer-normed without an
   affine, are the targets.
2. One masking strategy is drawn for the step and masks are sampled on the tokens' boxes,
   modalities and validity (:mod:`geojepa.model.masks`).
3. The *context* side tokenises (training noise, modality drop-out) and encodes the context
   tokens only, gathered into a compact padded batch.
4. The predictor predicts every target block of the batch in one pass, each (tile, block) row
   seeing that tile's context and one query per target token.
5. Loss = smooth-L1 over the real target positions + ``vicreg_weight`` x (variance +
   covariance) of the predictions and of the context embeddings.

Frozen parts (frozen tag table, frozen geometry encoder, frozen image backbone) are shared by
the online and the target side rather than copied; :meth:`GeoJEPA.ema_step` averages only the
trained parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geojepa.model.batch import ENTITY, IMAGE, TileBatch
from geojepa.model.encoder import Predictor, SetEncoder
from geojepa.model.losses import collapse_metrics, jepa_loss, vicreg_terms
from geojepa.model.masks import (
    STRATEGIES,
    MaskConfig,
    gather_target_tokens,
    gather_tokens,
    sample_masks,
)
from geojepa.model.text import cache_path, load_tag_table, tag_embedding_table
from geojepa.model.tokenizer import (
    NUM_KINDS,
    ImageStem,
    Tokenizer,
    Tokens,
    check_image_stem,
    load_frozen_backbone,
    parse_modalities,
    patch_boxes,
)

if TYPE_CHECKING:
    from geojepa.dataset.loader import TagVocabulary
    from geojepa.dataset.reader import TileDataset

TEXT_DIM = 384
"""Width of the frozen text embeddings (all-MiniLM-L6-v2)."""


@dataclass
class GeoJEPAConfig:
    """Model settings. Defaults are the paper's dimensions (the ``"base"`` preset).

    Attributes:
        vocab_size: Distinct tags of the dataset (tag ids ``1..vocab_size``).
        modalities: Combination of ``G`` (geometry), ``T`` (tags), ``I`` (images); stored in
            the canonical order ``G``, ``T``, ``I``.
        tag_encoder: ``"frozen"`` (text-model table, needs the table at construction) or
            ``"learned"`` (trainable embedding table).
        tag_dim: Width of a tag vector; must be 384 (the text model's) for ``"frozen"``.
        tag_table: Safetensors file of the frozen tag table (the cache written by
            :func:`~geojepa.model.text.tag_embedding_table`; :meth:`with_dataset` sets it).
        d: Token width.
        depth: Encoder blocks.
        heads: Encoder attention heads.
        mlp_ratio: MLP hidden width as a multiple of the block width.
        dropout: Encoder dropout (online encoder only; the target never drops).
        registers: Encoder register tokens.
        predictor_d: Predictor width.
        predictor_depth: Predictor blocks.
        predictor_heads: Predictor attention heads.
        geometry_dim: Width of the geometry encoder's vertex transformer.
        geometry_depth: Its blocks.
        geometry_heads: Its heads.
        geometry_parts: Its part embeddings (later parts share the last).
        freeze_geometry: Keep the geometry encoder at its initial (or loaded) weights.
        max_vertices: Vertices kept per entity when batches are built (the encoder accepts any
            number).
        image_size: Image side in pixels.
        patch: Patch side of the trainable patch embedding.
        image_stem: The trainable patch embedding: ``patch`` (one strided convolution) or
            ``hmlp`` (a hierarchical MLP stem, non-linear within each patch).
        image_backbone: ``torch.export`` (``.pt2``) or TorchScript file of a frozen image
            backbone (:func:`~geojepa.model.tokenizer.load_frozen_backbone`); None = trainable
            patches.
        modality_dropout: Chance per training batch of dropping the tag or the geometry half.
        box_noise: Standard deviation of the training noise on token boxes (tile units).
        vicreg_weight: Weight of the VICReg variance and covariance terms.
        activation_checkpointing: Recompute the blocks of the context encoder and the predictor
            in the backward pass instead of keeping their activations: less training memory,
            about one more forward pass of them per step, the same results.
        mask: Masking settings.
    """

    vocab_size: int = 0
    modalities: str = "T"
    tag_encoder: Literal["frozen", "learned"] = "frozen"
    tag_dim: int = TEXT_DIM
    tag_table: Path | None = None
    d: int = 384
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    registers: int = 2
    predictor_d: int = 192
    predictor_depth: int = 4
    predictor_heads: int = 8
    geometry_dim: int = 64
    geometry_depth: int = 2
    geometry_heads: int = 4
    geometry_parts: int = 16
    freeze_geometry: bool = False
    max_vertices: int = 64
    image_size: int = 224
    patch: int = 16
    image_stem: ImageStem = "patch"
    image_backbone: Path | None = None
    modality_dropout: float = 0.3
    box_noise: float = 0.01
    vicreg_weight: float = 0.02
    activation_checkpointing: bool = False
    mask: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self) -> None:
        """Canonicalise the modalities and reject inconsistent settings.

        Raises:
            ValueError: If a setting is out of range or settings contradict each other.
        """
        self.modalities = parse_modalities(self.modalities)
        if self.tag_encoder not in ("frozen", "learned"):
            raise ValueError(f"tag_encoder must be 'frozen' or 'learned', got {self.tag_encoder!r}")
        if self.tag_encoder == "frozen" and self.tag_dim != TEXT_DIM:
            raise ValueError(f"the frozen tag encoder has tag_dim {TEXT_DIM}, got {self.tag_dim}")
        check_image_stem(self.image_stem, self.patch)
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0, got {self.vocab_size}")
        for name, width, heads in (
            ("d", self.d, self.heads),
            ("predictor_d", self.predictor_d, self.predictor_heads),
            ("geometry_dim", self.geometry_dim, self.geometry_heads),
        ):
            if width <= 0 or heads <= 0 or width % heads:
                raise ValueError(f"{name} = {width} must be a positive multiple of {heads} heads")
        if self.registers < 0 or self.depth < 1 or self.predictor_depth < 1:
            raise ValueError("depths must be >= 1 and registers >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.vicreg_weight < 0.0:
            raise ValueError(f"vicreg_weight must be >= 0, got {self.vicreg_weight}")
        if self.image_backbone is not None:
            self.image_backbone = Path(self.image_backbone)
        if self.tag_table is not None:
            self.tag_table = Path(self.tag_table)

    @property
    def uses_images(self) -> bool:
        """Whether image tokens are on (``I`` in the modalities)."""
        return "I" in self.modalities

    @property
    def uses_tag_table(self) -> bool:
        """Whether the model needs a frozen tag table (frozen encoder with tags on)."""
        return self.tag_encoder == "frozen" and "T" in self.modalities

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain YAML/JSON values (paths as strings, tuples as lists)."""
        out = asdict(self)
        for name in ("image_backbone", "tag_table"):
            out[name] = None if out[name] is None else str(out[name])
        out["mask"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["mask"].items()}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GeoJEPAConfig:
        """Settings from :meth:`to_dict`'s output (missing fields keep their defaults).

        Raises:
            ValueError: If a field is unknown or a value is invalid.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))}")
        values = dict(values)
        mask = values.get("mask")
        if isinstance(mask, dict):
            settings: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in mask.items()
            }
            values["mask"] = MaskConfig(**settings)
        return cls(**values)

    def with_dataset(
        self,
        dataset: TileDataset | str | Path,
        vocab: TagVocabulary | Sequence[str] | None = None,
    ) -> GeoJEPAConfig:
        """These settings fitted to a dataset's vocabulary.

        Sets the vocabulary size and, for the frozen tag encoder with tags on, the frozen tag
        table (computed once and cached in the dataset folder).

        Args:
            dataset: The dataset or its folder.
            vocab: Its tag vocabulary in id order (read from the dataset when None).

        Returns:
            A copy with ``vocab_size`` (and ``tag_table``) set.

        Raises:
            GeoJepaError: If the table must be computed and the text model is unavailable.
        """
        from geojepa.dataset.loader import TagVocabulary
        from geojepa.dataset.reader import TileDataset

        folder = dataset.folder if isinstance(dataset, TileDataset) else Path(dataset)
        if vocab is None:
            ds = dataset if isinstance(dataset, TileDataset) else TileDataset(folder)
            vocab = TagVocabulary.of(ds)
        tags = vocab.tags.to_pylist() if isinstance(vocab, TagVocabulary) else list(vocab)
        config = replace(self, vocab_size=len(tags))
        if config.uses_tag_table:
            tag_embedding_table(folder, tags)
            config.tag_table = cache_path(folder, tags)
        return config


PRESETS: dict[str, dict[str, Any]] = {
    "base": {"activation_checkpointing": True},
    "small": {
        "d": 128,
        "depth": 4,
        "heads": 4,
        "predictor_d": 64,
        "predictor_depth": 2,
        "predictor_heads": 4,
        "geometry_dim": 32,
        "geometry_depth": 1,
        "geometry_heads": 4,
    },
}
"""Named settings on top of the defaults: ``base`` = the paper's dimensions (with activation
checkpointing, to halve training memory), ``small`` = a model
that trains in minutes on a laptop CPU."""


def config_from_preset(name: str, **overrides: Any) -> GeoJEPAConfig:
    """Settings of a preset with some fields replaced.

    Args:
        name: A key of :data:`PRESETS`.
        **overrides: Fields of :class:`GeoJEPAConfig` to set.

    Returns:
        The settings.

    Raises:
        ValueError: If the preset or a field is unknown, or a value is invalid.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    known = set(GeoJEPAConfig.__dataclass_fields__)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    return replace(GeoJEPAConfig(), **{**PRESETS[name], **overrides})


TilePool = Literal["tokens", "modality", "kind", "predicted"]
"""How :meth:`GeoJEPA.embed` pools tokens into a tile embedding."""
TILE_POOLS: tuple[TilePool, ...] = ("tokens", "modality", "kind", "predicted")

PREDICTED_GRID = 8
"""Cells per side of the query raster of :meth:`GeoJEPA.predict_grid` (the ``"predicted"`` pool)."""


def _pool_groups(modality: Tensor, valid: Tensor, entity_kind: Tensor, pool: TilePool,
                 entities: bool, images: bool) -> list[Tensor]:
    """The token sets :meth:`GeoJEPA.embed` pools apart, each ``Bool[B, L]``.

    Args:
        modality: ``Long[B, L]`` each token's modality (entity tokens first).
        valid: ``Bool[B, L]`` real tokens.
        entity_kind: ``Long[B, N]`` the entities' kinds (see :class:`TileBatch`).
        pool: The tile pooling.
        entities: Whether the model has entity tokens.
        images: Whether the model has image tokens.
    """
    if pool == "tokens" or not entities:
        return [valid]
    if pool == "kind":
        kind = torch.full_like(modality, -1)
        kind[:, : entity_kind.shape[1]] = entity_kind
        groups = [valid & (modality == ENTITY) & (kind == k) for k in range(NUM_KINDS)]
        return groups + ([valid & (modality == IMAGE)] if images else [])
    return [valid & (modality == m) for m in (ENTITY, IMAGE)] if images else [valid]


def _max_mean(h: Tensor, keep: Tensor) -> Tensor:
    """``[max, mean]`` of ``h`` ``[B, L, c]`` over the positions ``keep`` ``[B, L]`` of each row
    (zeros for a row with none)."""
    count = keep.sum(dim=1, keepdim=True)
    top = h.masked_fill(~keep[..., None], float("-inf")).amax(dim=1).masked_fill(count == 0, 0.0)
    mean = h.masked_fill(~keep[..., None], 0.0).sum(dim=1) / count.clamp(min=1)
    return torch.cat([top, mean], dim=-1)


def gather(x: Tensor, index: Tensor, tile: Tensor | None = None) -> Tensor:
    """Per-token features at an index from :func:`~geojepa.model.masks.gather_tokens`.

    Same result as :func:`~geojepa.model.masks.select_tokens`, through one ``index_select`` on
    the flattened tokens, whose backward is several times faster on the CPU than that of
    advanced indexing.

    Args:
        x: ``[B, L, C]`` per-token features.
        index: ``Long[R, M]`` token positions.
        tile: ``Long[R]``, the tile of each row; None means row ``r`` is tile ``r``.

    Returns:
        ``[R, M, C]`` features.
    """
    num_tokens = x.shape[1]
    rows = torch.arange(index.shape[0], device=index.device) if tile is None else tile
    flat = (rows[:, None] * num_tokens + index).reshape(-1)
    picked = x.reshape(-1, x.shape[-1]).index_select(0, flat)
    return picked.view(*index.shape, x.shape[-1])


class _Target(nn.Module):
    """The EMA side: tokeniser and encoder copies, no gradients, eval mode forever."""

    def __init__(self, tokenizer: Tokenizer, encoder: SetEncoder) -> None:
        super().__init__()
        shared = {id(part): part for part in tokenizer.shared_parts()}
        self.tokenizer: Tokenizer = copy.deepcopy(tokenizer, memo=shared)
        self.encoder: SetEncoder = copy.deepcopy(encoder)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Target:
        """Ignore requests for training mode: the target never uses dropout or noise."""
        return super().train(False)


class GeoJEPA(nn.Module):
    """The GeoJEPA model: online tokeniser + context encoder, EMA target, predictor.

    Args:
        config: Model settings.
        tag_table: ``Float[vocab_size + 1, 384]`` frozen tag embeddings
            (:func:`geojepa.model.text.tag_embedding_table`), used by the frozen tag encoder
            with tags on; when None, it is read from ``config.tag_table``. The table is not part
            of the state dict (checkpoints stay small, and a trained model can embed a dataset
            with another vocabulary by building it with that dataset's table).

    Attributes:
        tokenizer: Online tokeniser (trained).
        encoder: Online (context) encoder (trained).
        predictor: The predictor (trained).
        target: EMA copy of ``tokenizer`` and ``encoder`` (``target.tokenizer``,
            ``target.encoder``).
    """

    def __init__(self, config: GeoJEPAConfig, tag_table: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        if config.uses_tag_table and tag_table is None:
            if config.tag_table is None:
                raise ValueError(
                    "the frozen tag encoder needs a tag table: pass tag_table, or set "
                    "config.tag_table (GeoJEPAConfig.with_dataset does)"
                )
            tag_table = load_tag_table(config.tag_table)
        backbone = (
            None
            if config.image_backbone is None or "I" not in config.modalities
            else load_frozen_backbone(config.image_backbone, config.image_size)
        )
        self.tokenizer = Tokenizer(
            config.d,
            modalities=config.modalities,
            tag_encoder=config.tag_encoder,
            vocab_size=config.vocab_size,
            tag_dim=config.tag_dim,
            tag_table=tag_table if config.uses_tag_table else None,
            geometry_dim=config.geometry_dim,
            geometry_depth=config.geometry_depth,
            geometry_heads=config.geometry_heads,
            geometry_parts=config.geometry_parts,
            freeze_geometry=config.freeze_geometry,
            image_size=config.image_size,
            patch=config.patch,
            image_backbone=backbone,
            image_stem=config.image_stem,
            modality_dropout=config.modality_dropout,
            box_noise=config.box_noise,
        )
        self.encoder = SetEncoder(
            config.d,
            config.depth,
            config.heads,
            config.mlp_ratio,
            config.dropout,
            config.registers,
            config.activation_checkpointing,
        )
        self.predictor = Predictor(
            config.d,
            config.predictor_d,
            config.predictor_depth,
            config.predictor_heads,
            config.mlp_ratio,
            config.activation_checkpointing,
        )
        self.target = _Target(self.tokenizer, self.encoder)

    def online_modules(self) -> nn.ModuleList:
        """The trained parts: tokeniser, context encoder and predictor (for the optimiser)."""
        return nn.ModuleList([self.tokenizer, self.encoder, self.predictor])

    @torch.no_grad()
    def ema_step(self, momentum: float) -> None:
        """Move the target towards the online side: ``target = m * target + (1 - m) * online``.

        Parameters shared by both sides (frozen parts) are left alone; buffers are copied.

        Args:
            momentum: ``m`` in ``[0, 1]``.

        Raises:
            ValueError: If ``momentum`` is out of range.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        mine: list[Tensor] = []
        theirs: list[Tensor] = []
        for target, online in (
            (self.target.tokenizer, self.tokenizer),
            (self.target.encoder, self.encoder),
        ):
            online_params = dict(online.named_parameters())
            for name, param in target.named_parameters():
                if param is not online_params[name]:
                    mine.append(param)
                    theirs.append(online_params[name].detach())
            online_buffers = dict(online.named_buffers())
            for name, buffer in target.named_buffers():
                if buffer is not online_buffers[name]:
                    buffer.copy_(online_buffers[name])
        if mine:
            torch._foreach_lerp_(mine, theirs, 1.0 - momentum)

    @torch.no_grad()
    def encode_targets(self, batch: TileBatch) -> tuple[Tokens, Tensor]:
        """Target-side tokens and targets of the full token sets.

        Args:
            batch: The tiles.

        Returns:
            The target tokeniser's tokens and ``Float[B, L, d]`` targets: the target encoder's
            outputs, layer-normed without an affine (zeros at padding).
        """
        tokens = self.target.tokenizer(batch)
        h = self.target.encoder(tokens.x, tokens.valid)
        return tokens, F.layer_norm(h.float(), (h.shape[-1],))

    def encode_context(self, tokens: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        """Encode the context tokens of each tile with the online encoder.

        Args:
            tokens: ``Float[B, L, d]`` online tokens (:attr:`Tokens.x`).
            index: ``Long[B, C]`` context token positions (``gather_tokens`` of the context
                mask).
            valid: ``Bool[B, C]``, the real context entries.

        Returns:
            ``Float[B, C, d]`` context embeddings, zeros at padding.
        """
        return self.encoder(gather(tokens, index), valid)

    def forward_loss(
        self, batch: TileBatch, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """The JEPA training loss of a batch (see the module docstring).

        Args:
            batch: The tiles.
            generator: Randomness of the masks, the training noise and modality drop-out.

        Returns:
            The scalar loss and logs: ``loss``, ``loss_jepa``, ``var_pred``, ``cov_pred``,
            ``var_context``, ``cov_context``, ``mask_<strategy>`` (1 for the drawn strategy,
            else 0), ``context_fraction`` and ``target_fraction`` (of the real tokens), and
            ``target_std`` and ``target_cosine`` (collapse metrics of the target embeddings).

        Raises:
            GeoJepaError: If images are on and the batch has no imagery.
        """
        target_tokens, targets = self.encode_targets(batch)
        valid = target_tokens.valid
        masks = sample_masks(
            target_tokens.boxes, target_tokens.modality, valid, self.config.mask, generator
        )
        tokens = self.tokenizer(batch, generator)
        context_index, context_valid = gather_tokens(masks.context)
        context = self.encode_context(tokens.x, context_index, context_valid)
        target_index, target_valid, tile = gather_target_tokens(masks.targets)
        pred = self.predictor(
            context,
            gather(tokens.pos_mod, context_index),
            context_valid,
            gather(tokens.pos_mod, target_index, tile),
            target_valid,
            tile,
        )
        loss_jepa = jepa_loss(pred, gather(targets, target_index, tile), target_valid)
        var_pred, cov_pred = vicreg_terms(pred, target_valid)
        var_context, cov_context = vicreg_terms(context, context_valid)
        weight = self.config.vicreg_weight
        loss = loss_jepa + weight * (var_pred + cov_pred + var_context + cov_context)
        terms = {
            "loss": loss,
            "loss_jepa": loss_jepa,
            "var_pred": var_pred,
            "cov_pred": cov_pred,
            "var_context": var_context,
            "cov_context": cov_context,
        }
        real = max(int(valid.sum()), 1)
        logs = {name: float(value.detach()) for name, value in terms.items()}
        logs.update({f"mask_{name}": float(name == masks.strategy) for name in STRATEGIES})
        logs["context_fraction"] = int(masks.context.sum()) / real
        logs["target_fraction"] = int(masks.targets.any(dim=1).sum()) / real
        metrics = collapse_metrics(targets, valid)
        logs.update({f"target_{name}": value for name, value in metrics.items()})
        return loss, logs

    @torch.no_grad()
    def embed(
        self, batch: TileBatch, layers: int = 1, pool: TilePool = "tokens",
        layered_tokens: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Token and tile embeddings from the target encoder on the full token sets.

        Args:
            batch: The tiles.
            layers: Pool the outputs of the encoder's last ``layers`` blocks (each through its
                final LayerNorm) into the tile embedding, as in multi-layer linear probing;
                1 (the default, SPEC section 4) pools the last block only.
            pool: ``"tokens"`` (SPEC section 5): [max, mean] over all of a tile's real tokens.
                ``"modality"``: [max, mean] over its entity tokens, then [max, mean] over its
                image patches, concatenated, so the many patch tokens of a model with images
                cannot drown its entities; the same as ``"tokens"`` for a model of one kind of
                token. ``"kind"``: as ``"modality"``, with the entity tokens pooled per entity
                kind too (points, lines, polygons, relations, in that order), so the few roads
                of a tile are not drowned by its many buildings and points. ``"predicted"``:
                ``"modality"``, then [max, mean] of what the predictor expects at every cell of
                a grid over the tile (:meth:`predict_grid`): what the tile's tokens imply about
                entities they do not show.
            layered_tokens: Token embeddings concatenate the last ``layers`` blocks' outputs
                too (``layers * d`` wide, the last block last), as the set probe reads them;
                otherwise they are the last block's.

        Returns:
            ``tokens`` ``Float[B, L, d]`` (zeros at padding; ``layers * d`` wide with
            ``layered_tokens``), ``valid`` ``Bool[B, L]`` and
            ``tiles`` ``Float[B, 2 * k * layers * d]`` (``k`` = the kinds of token pooled
            apart: 1, or 2 with ``"modality"`` for a model with entities and images, 4 with
            ``"kind"`` for a model with entities, 5 with images too; ``2 * d`` more with
            ``"predicted"``): [max,
            mean] over each tile's real tokens only (zeros where a tile has none), so a tile's
            embedding never depends on its batch-mates.

        Raises:
            GeoJepaError: If images are on and the batch has no imagery.
            ValueError: If ``layers`` is not between 1 and the encoder depth, or ``pool`` is
                unknown.
        """
        if pool not in TILE_POOLS:
            raise ValueError(f"pool must be one of {', '.join(TILE_POOLS)}, got {pool!r}")
        tokens = self.target.tokenizer(batch)
        h = self.target.encoder(tokens.x, tokens.valid, layers).float()
        valid = tokens.valid
        groups = _pool_groups(tokens.modality, valid, batch.kind, pool,
                              bool(set(self.config.modalities) - {"I"}), self.config.uses_images)
        pooled = [_max_mean(h, g) for g in groups]
        if pool == "predicted":
            predicted = self.predict_grid(batch)
            pooled.append(_max_mean(predicted, torch.ones_like(predicted[..., 0], dtype=torch.bool)))
        tok = h if layered_tokens else h[..., -self.config.d:]
        return tok, valid, torch.cat(pooled, dim=-1)

    @torch.no_grad()
    def predict_grid(self, batch: TileBatch, grid: int = PREDICTED_GRID) -> Tensor:
        """What the predictor expects at every cell of a grid over each tile, from all its tokens.

        The online side encodes every real token of a tile as the context, and the predictor
        answers one query per cell of a ``grid x grid`` raster over the tile (the cell's box, as
        an entity; as an image patch for an image-only model), as it answered for masked
        entities in training. Where inputs were removed (the masked task variants), the answers
        carry what the remaining tokens imply about the missing entities, which an encoder that
        only sees present tokens cannot show. Runs in eval mode whatever the model's mode (no
        training noise, no dropout).

        Args:
            batch: The tiles.
            grid: Cells per side.

        Returns:
            ``Float[B, grid * grid, d]`` predictions, layer-normed without an affine as the
            targets are, in raster order (see :func:`~geojepa.model.tokenizer.patch_boxes`).

        Raises:
            GeoJepaError: If images are on and the batch has no imagery.
        """
        mode = self.training
        self.eval()
        try:
            tokens = self.tokenizer(batch)
            context = self.encoder(tokens.x, tokens.valid)
            kind = ENTITY if self.tokenizer.entities else IMAGE
            prior = self.tokenizer.query_prior(patch_boxes(grid).to(context.device), kind)
        finally:
            self.train(mode)
        num_tiles = context.shape[0]
        queries = prior.to(context.dtype).expand(num_tiles, -1, -1)
        query_valid = torch.ones(queries.shape[:2], dtype=torch.bool, device=context.device)
        tile = torch.arange(num_tiles, device=context.device)
        pred = self.predictor(context, tokens.pos_mod, tokens.valid, queries, query_valid, tile)
        return F.layer_norm(pred.float(), (pred.shape[-1],))
