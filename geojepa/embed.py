"""Load a pretrained checkpoint and embed a dataset's tiles, entities and image patches.

Inference uses the EMA target encoder on every token of a tile. A tile's embedding is
``[masked max, masked mean]`` over its valid tokens only (``2d`` numbers), so it does not depend on
its batch-mates; an entity's (or image patch's) embedding is its token (``d`` numbers).

Attention costs the square of a batch's largest tile for every tile of the batch, so tiles are
read in windows of :data:`SORT_WINDOW` batches, batched by entity count within a window (tiles of
similar size together), and put back in stored order before they are returned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from geojepa.dataset.loader import TagVocabulary, TileStream, collate
from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError
from geojepa.model.batch import TileBatch
from geojepa.model.jepa import TILE_POOLS, GeoJEPA, GeoJEPAConfig, TilePool
from geojepa.model.text import cache_path, tag_embedding_table

SORT_WINDOW = 16
"""Batches per window of tiles that are batched by entity count (see the module docstring)."""


@dataclass
class Checkpoint:
    """A loaded model with the settings and vocabulary it was trained with.

    Attributes:
        model: The model, in eval mode.
        config: Its settings.
        vocabulary: The tag vocabulary of its pretraining data (tag id order).
        train: The pretraining settings.
        pretrain_data: Which tiles pretraining saw (:meth:`Manifest.tile_record`; empty for
            checkpoints without the record).
        path: The file it was loaded from (None for a model built in memory).
    """

    model: GeoJEPA
    config: GeoJEPAConfig
    vocabulary: list[str]
    train: dict[str, Any]
    pretrain_data: dict[str, Any]
    path: Path | None = None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a ``geojepa pretrain`` checkpoint without unpickling arbitrary objects.

    The frozen tag table is read from the cache named in the settings; when that file is gone
    (the checkpoint was moved) it is rebuilt beside the checkpoint from the stored vocabulary.

    Args:
        path: A ``.ckpt`` file.
        device: Where to put the model.

    Raises:
        GeoJepaError: The file is missing or is not a geojepa checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoJepaError("checkpoint not found", path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or corrupt files
        raise GeoJepaError(f"not a loadable checkpoint ({type(err).__name__})", path) from err
    if "hyper_parameters" not in raw or "vocabulary" not in raw:
        raise GeoJepaError("not a geojepa checkpoint", path)
    hparams = raw["hyper_parameters"]
    vocabulary = list(raw["vocabulary"])
    config = GeoJEPAConfig.from_dict(dict(hparams["model"]))
    if config.uses_tag_table and (config.tag_table is None or not Path(config.tag_table).is_file()):
        tag_embedding_table(path.parent, vocabulary)
        config.tag_table = cache_path(path.parent, vocabulary)
    model = GeoJEPA(config)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    model.eval().to(device)
    pretrain_data = dict(raw.get("pretrain_data", {}))
    return Checkpoint(model, config, vocabulary, dict(hparams["train"]), pretrain_data, path)


def new_tags(checkpoint: Checkpoint, dataset: str | Path) -> list[str]:
    """The tags of a dataset that a checkpoint's pretraining vocabulary lacks, in the dataset's
    vocabulary order."""
    known = set(checkpoint.vocabulary)
    tags = TileDataset(dataset).vocabulary().column("tag").to_pylist()
    return [t for t in tags if t not in known]


def with_dataset_tags(checkpoint: Checkpoint, dataset: str | Path) -> Checkpoint:
    """The checkpoint, reading also the tags of ``dataset`` that its pretraining never saw.

    The frozen tag encoder embeds a tag with the text model, so it can read a tag it was not
    pretrained on: the unseen tags get their text vectors as new ids after the known ones
    (which keep their rows); every trained weight is unchanged. A learned tag table has no row
    for an unseen tag, so such a model (and one without tags) is returned as it is and its
    unseen tags stay absent, as they do for every model when no tag is new.

    Args:
        checkpoint: From :func:`load_checkpoint` (or :func:`random_init`).
        dataset: The dataset to embed (the extended table is cached in its folder).

    Returns:
        ``checkpoint`` itself, or a copy whose vocabulary and model read the new tags too.

    Raises:
        GeoJepaError: If the new tags must be embedded and the text model is unavailable.
    """
    config = checkpoint.config
    new = new_tags(checkpoint, dataset) if config.uses_tag_table else []
    if not new:
        return checkpoint
    vocabulary = [*checkpoint.vocabulary, *new]
    model = checkpoint.model
    table = tag_embedding_table(Path(dataset), vocabulary, known=model.tokenizer.tags.table)
    config = replace(config, vocab_size=len(vocabulary), tag_table=cache_path(Path(dataset), vocabulary))
    with torch.random.fork_rng():  # building draws weights that load_state_dict overwrites
        extended = GeoJEPA(config, tag_table=table)
    extended.load_state_dict(model.state_dict())
    extended.eval().to(next(model.parameters()).device)
    return Checkpoint(extended, config, vocabulary, checkpoint.train, checkpoint.pretrain_data,
                      checkpoint.path)


@dataclass
class Embeddings:
    """Embeddings of a set of tiles.

    Attributes:
        tiles: ``[T, 3]`` z, x, y.
        tile: ``[T, 2d]`` tile embeddings (wider with ``layers`` or ``pool``; see
            :meth:`GeoJEPA.embed`).
        entity_tile: ``[E]`` row in ``tiles`` of each entity.
        entity_index: ``[E]`` position of the entity in its tile (the dataset's stored order).
        entity: ``[E, d]`` entity embeddings.
        patch_tile: ``[P]`` row in ``tiles`` of each image patch.
        patch_index: ``[P]`` patch number (row-major, north-west first).
        patch: ``[P, d]`` patch embeddings.
    """

    tiles: NDArray[np.int64]
    tile: NDArray[np.float32]
    entity_tile: NDArray[np.int64]
    entity_index: NDArray[np.int64]
    entity: NDArray[np.float32]
    patch_tile: NDArray[np.int64]
    patch_index: NDArray[np.int64]
    patch: NDArray[np.float32]

    @classmethod
    def concat(cls, parts: Sequence[Embeddings]) -> Embeddings:
        """Join batches, renumbering tile rows."""
        offsets = np.cumsum([0] + [len(p.tiles) for p in parts[:-1]])
        return cls(
            tiles=np.concatenate([p.tiles for p in parts]),
            tile=np.concatenate([p.tile for p in parts]),
            entity_tile=np.concatenate([p.entity_tile + o for p, o in zip(parts, offsets, strict=True)]),
            entity_index=np.concatenate([p.entity_index for p in parts]),
            entity=np.concatenate([p.entity for p in parts]),
            patch_tile=np.concatenate([p.patch_tile + o for p, o in zip(parts, offsets, strict=True)]),
            patch_index=np.concatenate([p.patch_index for p in parts]),
            patch=np.concatenate([p.patch for p in parts]),
        )

    def reorder(self, order: NDArray[np.int64]) -> Embeddings:
        """The same embeddings with the tile rows permuted: row ``i`` is row ``order[i]`` here.

        Entity and patch rows follow their tiles (grouped by tile, in the new tile order, their
        order within a tile kept).
        """
        row = np.empty_like(order)
        row[order] = np.arange(len(order))
        entity_tile, patch_tile = row[self.entity_tile], row[self.patch_tile]
        entities = np.argsort(entity_tile, kind="stable")
        patches = np.argsort(patch_tile, kind="stable")
        return Embeddings(
            tiles=self.tiles[order], tile=self.tile[order],
            entity_tile=entity_tile[entities], entity_index=self.entity_index[entities],
            entity=self.entity[entities],
            patch_tile=patch_tile[patches], patch_index=self.patch_index[patches],
            patch=self.patch[patches],
        )


def check_layers(checkpoint: Checkpoint, layers: int) -> None:
    """Check that a model has at least ``layers`` encoder blocks to pool.

    Raises:
        GeoJepaError: If ``layers`` is not between 1 and the model's depth.
    """
    depth = checkpoint.config.depth
    if not 1 <= layers <= depth:
        raise GeoJepaError(f"layers must be between 1 and the model's depth {depth}, got {layers}",
                           checkpoint.path)


def check_pool(pool: str) -> None:
    """Check that ``pool`` names a way of pooling tokens into a tile embedding.

    Raises:
        GeoJepaError: If it is not one of :data:`~geojepa.model.jepa.TILE_POOLS`.
    """
    if pool not in TILE_POOLS:
        raise GeoJepaError(f"pool must be one of {', '.join(TILE_POOLS)}, got {pool!r}")


def iter_embeddings(
    checkpoint: Checkpoint,
    dataset: str | Path,
    splits: Sequence[str] | None = None,
    batch_size: int = 64,
    tokens: bool = True,
    progress: bool = True,
    image_only: bool = False,
    layers: int = 1,
    pool: TilePool = "tokens",
    layered_tokens: bool = False,
) -> Iterator[Embeddings]:
    """Embed a dataset window by window, in stored tile order.

    Args:
        checkpoint: From :func:`load_checkpoint`.
        dataset: Dataset folder (its tags are mapped through the checkpoint's vocabulary; tags the
            model never saw are read by a frozen tag encoder and count as absent for a learned
            one; see :func:`with_dataset_tags`).
        splits: Splits to embed; None for all tiles.
        batch_size: Tiles per forward pass (batched by size within windows of
            :data:`SORT_WINDOW` batches).
        tokens: Also return entity and patch embeddings.
        progress: Show a progress bar.
        image_only: Hide every entity, so tiles are embedded from their image patches alone
            (the image-only baseline of a model that uses images).
        layers: Pool the outputs of the encoder's last ``layers`` blocks into the tile
            embedding (``2 * layers * d`` numbers; see :meth:`GeoJEPA.embed`).
        pool: ``"tokens"`` pools all tokens together; ``"modality"`` pools a model's entities
            and image patches apart (twice the numbers for a model with both); ``"kind"`` pools
            each entity kind (points, lines, polygons, relations) and the image patches apart
            (4 or 5 times the numbers); ``"predicted"`` adds the predictor's expectations on a
            grid over the tile (``2 * d`` more).
        layered_tokens: Entity and patch embeddings concatenate the last ``layers`` blocks'
            outputs too (``layers * d`` numbers) instead of the last block's alone.

    Yields:
        One :class:`Embeddings` per window of up to ``SORT_WINDOW * batch_size`` tiles, in stored
        order.
    """
    checkpoint = with_dataset_tags(checkpoint, dataset)
    config = checkpoint.config
    stream = TileStream(
        dataset, splits=splits, batch_size=batch_size, vocab=TagVocabulary(checkpoint.vocabulary),
        shuffle=False, image_size=config.image_size if config.uses_images else None,
        max_tags=int(checkpoint.train.get("max_tags", 32)), max_vertices=config.max_vertices,
    )
    if config.uses_images and not stream.ds.manifest.has_imagery:
        raise GeoJepaError("the model uses images (I) but the dataset has no imagery", dataset)
    if image_only and not config.uses_images:
        raise GeoJepaError("image-only embeddings need a model that uses images (I)")
    check_layers(checkpoint, layers)
    check_pool(pool)
    bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not progress)
    with bar, torch.inference_mode():
        task = bar.add_task("embed", total=stream.num_tiles())
        items = stream.items()
        while window := list(islice(items, SORT_WINDOW * batch_size)):
            parts = []
            order = np.argsort([it.num_entities for it in window], kind="stable")
            for start in range(0, len(window), batch_size):
                batch = collate([window[i] for i in order[start : start + batch_size]],
                                stream.image_size)
                parts.append(_embed_batch(checkpoint, batch, image_only, layers, pool,
                                          layered_tokens, tokens))
                bar.advance(task, batch.size)
            yield Embeddings.concat(parts).reorder(np.argsort(order))


def _embed_batch(
    checkpoint: Checkpoint, batch: TileBatch, image_only: bool, layers: int, pool: TilePool,
    layered_tokens: bool, tokens: bool,
) -> Embeddings:
    """Embed one batch of tiles (see :func:`iter_embeddings`)."""
    model = checkpoint.model
    batch = batch.to(next(model.parameters()).device)
    if image_only:
        batch = replace(batch, valid=torch.zeros_like(batch.valid))
    tok, valid, tile_emb = model.embed(batch, layers, pool, layered_tokens)
    entities_first = bool(set(checkpoint.config.modalities) & {"G", "T"})
    return _split_tokens(batch, tok, valid, tile_emb, entities_first, tokens)


def _split_tokens(
    batch: TileBatch, tok: torch.Tensor, valid: torch.Tensor, tile_emb: torch.Tensor,
    entities_first: bool, tokens: bool,
) -> Embeddings:
    """Cut a batch's token embeddings into tile, entity and patch rows."""
    d = tok.shape[-1]
    none = np.zeros(0, np.int64)
    out = Embeddings(
        tiles=batch.tiles.cpu().numpy(), tile=tile_emb.float().cpu().numpy(),
        entity_tile=none, entity_index=none, entity=np.zeros((0, d), np.float32),
        patch_tile=none, patch_index=none, patch=np.zeros((0, d), np.float32),
    )
    if not tokens:
        return out
    n = batch.valid.shape[1] if entities_first else 0
    if n:
        t, i = torch.nonzero(valid[:, :n], as_tuple=True)
        out.entity_tile, out.entity_index = t.cpu().numpy(), i.cpu().numpy()
        out.entity = tok[t, i].float().cpu().numpy()
    if tok.shape[1] > n:
        t, i = torch.nonzero(valid[:, n:], as_tuple=True)
        out.patch_tile, out.patch_index = t.cpu().numpy(), i.cpu().numpy()
        out.patch = tok[t, i + n].float().cpu().numpy()
    return out


def embed_dataset(
    checkpoint: str | Path | Checkpoint,
    dataset: str | Path,
    splits: Sequence[str] | None = None,
    batch_size: int = 64,
    tokens: bool = True,
    progress: bool = True,
    image_only: bool = False,
    layers: int = 1,
    pool: TilePool = "tokens",
    layered_tokens: bool = False,
) -> Embeddings:
    """Embed a whole dataset (or some splits) into memory; see :func:`iter_embeddings`."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    parts = list(iter_embeddings(ckpt, dataset, splits, batch_size, tokens, progress, image_only,
                                 layers, pool, layered_tokens))
    if not parts:
        raise GeoJepaError("no tiles to embed", dataset)
    return Embeddings.concat(parts)

