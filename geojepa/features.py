"""Tile features for the downstream evaluation: GeoJEPA embeddings and the tag baselines.

Every function returns one row per tile in the dataset's stored order (the order of
``labels.parquet``), so features of a dataset and of its masked copies line up row by row.

* :func:`model_features`: ``[masked max, masked mean]`` of a GeoJEPA model's target encoder
  (optionally from the image patches alone, or with entities and patches pooled apart);
  :func:`model_inputs` adds the token embeddings themselves, for the set probe.
* :func:`tag_pool_features`: TagPool - max and mean over a tile's entities of their tag vectors
  (the sum of the MiniLM vectors of the entity's tags, as in the tokeniser); :func:`tag_pool_inputs`
  adds the tag vectors themselves, for the set probe.
* :func:`tag_count_features`: TagCount - ``log1p`` of how many entities of the tile carry each of
  the most frequent tags.
* :func:`read_tile_embeddings`: tile embeddings another tool made, read from a Parquet file
  and put in the dataset's order by their tile coordinates (:func:`check_tile_embeddings`
  checks a file without reading the embeddings).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from geojepa.dataset.loader import TagVocabulary
from geojepa.dataset.reader import TileDataset
from geojepa.embed import Checkpoint, embed_dataset
from geojepa.errors import GeoJepaError
from geojepa.model.jepa import GeoJEPA, TilePool
from geojepa.model.text import tag_embedding_table
from geojepa.model.tokenizer import NUM_KINDS
from geojepa.probes import TokenSets


@dataclass(frozen=True)
class Features:
    """What a method gives the probes for one dataset.

    Attributes:
        tile: ``[T, D]`` tile features.
        tokens: The tiles' token embeddings for :func:`~geojepa.probes.fit_set`, when asked for
            and the method has tokens (None otherwise).
    """

    tile: NDArray[np.float32]
    tokens: TokenSets | None = None


def model_features(
    checkpoint: Checkpoint, dataset: Path, image_only: bool = False, batch_size: int = 64,
    layers: int = 1, pool: TilePool = "tokens",
) -> NDArray[np.float32]:
    """Tile embeddings of a model, ``[T, 2 * layers * d]`` (twice as wide when ``pool`` is
    ``"modality"`` and the model has entities and images, 4 or 5 times with ``"kind"``; see
    :func:`embed_dataset`)."""
    return model_inputs(checkpoint, dataset, image_only, batch_size, layers, pool).tile


def model_inputs(
    checkpoint: Checkpoint, dataset: Path, image_only: bool = False, batch_size: int = 64,
    layers: int = 1, pool: TilePool = "tokens", tokens: bool = False,
) -> Features:
    """Tile embeddings of a model (as :func:`model_features`) from one pass over the dataset,
    with ``tokens`` also its token embeddings, from the same ``layers`` last blocks as the tile
    embeddings (``[M, layers * d]``): entities are kind 0 and image patches the next kind (kind 0
    for a model without entities)."""
    emb = embed_dataset(checkpoint, dataset, batch_size=batch_size, tokens=tokens, progress=False,
                        image_only=image_only, layers=layers, pool=pool, layered_tokens=True)
    if not tokens:
        return Features(emb.tile)
    modalities = set(checkpoint.config.modalities)
    has_entities, has_patches = bool(modalities & {"G", "T"}), checkpoint.config.uses_images
    kinds = int(has_entities) + int(has_patches)
    sets = TokenSets(
        x=np.concatenate([emb.entity, emb.patch]),
        tile=np.concatenate([emb.entity_tile, emb.patch_tile]),
        kind=np.concatenate([np.zeros(len(emb.entity), np.int64),
                             np.full(len(emb.patch), kinds - 1, np.int64)]),
        num_tiles=len(emb.tiles), num_kinds=kinds,
    )
    return Features(emb.tile, sets)


def iter_entity_tag_vectors(
    dataset: Path, vocab: list[str], table_folder: Path
) -> Iterator[tuple[NDArray[np.float32], NDArray[np.int64], int, NDArray[np.int8]]]:
    """Each entity's tag vector (the sum of the MiniLM vectors of its tags), batch by batch.

    Args:
        dataset: The (possibly masked) dataset.
        vocab: Vocabulary the tag table covers (that of the unmasked dataset, so every variant
            uses the same table).
        table_folder: Where the MiniLM tag table is cached.

    Yields:
        Per stored batch: ``[E, 384]`` entity vectors, ``[E]`` the row of each entity's tile
        within the batch, the batch's number of tiles and ``[E]`` each entity's kind (0 point,
        1 line, 2 polygon, 3 relation).
    """
    table = tag_embedding_table(table_folder, vocab).numpy()
    ids = TagVocabulary(vocab)
    for batch in TileDataset(dataset).iter_batches(columns=["entities"]):
        entities = pc.list_flatten(batch.column("entities"))
        tags = entities.field("tags")
        vectors = np.zeros((len(entities), table.shape[1]), np.float32)
        np.add.at(vectors, pc.list_parent_indices(tags).to_numpy(), table[ids.ids(pc.list_flatten(tags))])
        yield (vectors, pc.list_parent_indices(batch.column("entities")).to_numpy(), batch.num_rows,
               entities.field("kind").to_numpy(zero_copy_only=False))


def tag_pool_features(dataset: Path, vocab: list[str], table_folder: Path,
                      by_kind: bool = False) -> NDArray[np.float32]:
    """TagPool features ``[T, 2 * 384]``: max and mean of the entities' tag vectors (arguments
    as :func:`iter_entity_tag_vectors`; ``by_kind`` as :func:`tag_pool_inputs`)."""
    return tag_pool_inputs(dataset, vocab, table_folder, by_kind=by_kind).tile


def tag_pool_inputs(dataset: Path, vocab: list[str], table_folder: Path, tokens: bool = False,
                    by_kind: bool = False) -> Features:
    """TagPool features (as :func:`tag_pool_features`), with ``tokens`` also the entities' tag
    vectors themselves as one kind of token; ``by_kind`` pools each entity kind apart (points,
    lines, polygons, relations: ``[T, 4 * 2 * 384]``), as a model's ``"kind"`` tile pooling."""
    vectors, tiles, pooled, offset = [], [], [], 0
    for batch_vectors, tile, num_tiles, kind in iter_entity_tag_vectors(dataset, vocab, table_folder):
        pooled.append(pool_rows_by_kind(batch_vectors, tile, kind, num_tiles) if by_kind
                      else pool_rows(batch_vectors, tile, num_tiles))
        if tokens:
            vectors.append(batch_vectors)
            tiles.append(tile + offset)
        offset += num_tiles
    if not tokens:
        return Features(np.concatenate(pooled))
    tile = np.concatenate(tiles)
    return Features(np.concatenate(pooled), TokenSets(np.concatenate(vectors), tile,
                                                      np.zeros(len(tile), np.int64), offset, 1))


def pool_rows(vectors: NDArray[np.float32], tile: NDArray[np.int64], num_tiles: int) -> NDArray[np.float32]:
    """``[max, mean]`` of row vectors per tile (zeros for a tile without rows), as the SPEC pools
    a tile's tokens.

    Args:
        vectors: ``[N, c]`` row vectors.
        tile: ``[N]`` the tile of each row, ``0 <= tile < num_tiles``.
        num_tiles: Number of tiles.

    Returns:
        ``[num_tiles, 2 * c]``.
    """
    d = vectors.shape[1]
    top = np.full((num_tiles, d), -np.inf, np.float32)
    np.maximum.at(top, tile, vectors)
    top[np.isinf(top)] = 0.0
    total = np.zeros((num_tiles, d), np.float32)
    np.add.at(total, tile, vectors)
    count = np.bincount(tile, minlength=num_tiles)[:, None]
    return np.concatenate([top, total / np.maximum(count, 1)], axis=1)


def pool_rows_by_kind(vectors: NDArray[np.float32], tile: NDArray[np.int64], kind: NDArray[np.integer],
                      num_tiles: int) -> NDArray[np.float32]:
    """:func:`pool_rows` of each entity kind apart (points, lines, polygons, relations),
    concatenated: ``[num_tiles, NUM_KINDS * 2 * c]``, as a model's ``"kind"`` tile pooling.

    Args:
        vectors: ``[N, c]`` entity vectors.
        tile: ``[N]`` the tile of each entity.
        kind: ``[N]`` each entity's kind, ``0 <= kind < NUM_KINDS``.
        num_tiles: Number of tiles.
    """
    return np.concatenate([pool_rows(vectors[kind == k], tile[kind == k], num_tiles)
                           for k in range(NUM_KINDS)], axis=1)


def tag_count_features(dataset: Path, vocab: list[str], max_tags: int = 2000) -> NDArray[np.float32]:
    """TagCount features ``[T, min(len(vocab), max_tags)]``: ``log1p`` entity counts per tag.

    Args:
        dataset: The (possibly masked) dataset.
        vocab: Vocabulary, most frequent first (that of the unmasked dataset).
        max_tags: Keep this many of the most frequent tags.
    """
    kept = TagVocabulary(vocab[:max_tags])
    rows = []
    for batch in TileDataset(dataset).iter_batches(columns=["entities"]):
        entities = pc.list_flatten(batch.column("entities"))
        tags = entities.field("tags")
        ids = kept.ids(pc.list_flatten(tags))
        tile = pc.list_parent_indices(batch.column("entities")).to_numpy()[
            pc.list_parent_indices(tags).to_numpy()]
        counts = np.zeros((batch.num_rows, len(kept) + 1), np.float32)
        np.add.at(counts, (tile, ids), 1.0)
        rows.append(np.log1p(counts[:, 1:]))
    return np.concatenate(rows)


def embedding_health(x: NDArray[np.floating]) -> dict[str, float]:
    """Collapse indicators of tile embeddings ``[N, D]``, reported beside the probe results.

    Probes standardise every feature, so they can score a collapsed embedding (all tiles nearly
    one vector, told apart only by tiny residues) like a healthy one; nearest-neighbour search
    by cosine similarity cannot. These numbers make such an embedding visible.

    Args:
        x: One row per tile.

    Returns:
        ``dims`` (D); ``effective_rank``: ``exp`` of the entropy of the normalised singular
        values of the centred rows (Roy & Vetterli, 2007), from 1 (all variation along one
        direction) to ``min(N - 1, D)``; ``mean_cosine``: the mean cosine similarity over pairs
        of distinct rows (1: every tile points the same way; an all-zero row, a tile without
        tokens, counts as orthogonal to every other; NaN with fewer than 2 rows).
    """
    x = np.asarray(x, dtype=np.float64)
    n, dims = x.shape
    singular = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    total = singular.sum()
    if total > 0:
        p = singular[singular > 0] / total
        rank = float(np.exp(-(p * np.log(p)).sum()))
    else:
        rank = 0.0
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if n > 1:
        cosine = (np.square(unit.sum(axis=0)).sum() - np.square(unit).sum()) / (n * (n - 1))
    else:
        cosine = np.nan
    return {"dims": float(dims), "effective_rank": rank, "mean_cosine": float(cosine)}


def training_seed(checkpoint: Checkpoint) -> int:
    """The seed a checkpoint's pretraining started from (0 when it does not record one)."""
    return int(checkpoint.train.get("seed", 0))


def random_init(checkpoint: Checkpoint, seed: int | None = None) -> Checkpoint:
    """The same architecture and settings as ``checkpoint``, untrained.

    ``geojepa pretrain`` seeds torch with the run's seed and builds the model right away, so
    building it again after the same seed gives back exactly the weights the run started from.

    Args:
        checkpoint: A trained checkpoint.
        seed: Seed of the initialisation; None = the checkpoint's training seed (its own
            initialisation; 0 when the checkpoint does not record one).

    Returns:
        The untrained model, in eval mode on the checkpoint's device.
    """
    if seed is None:
        seed = training_seed(checkpoint)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GeoJEPA(checkpoint.config)
    model.eval().to(next(checkpoint.model.parameters()).device)
    return Checkpoint(model, checkpoint.config, checkpoint.vocabulary, checkpoint.train, {})


EMBEDDING_COLUMN = "embedding"
"""List column of a tile-embeddings file holding each tile's vector (see :func:`read_tile_embeddings`)."""
TILE_COLUMNS = ("x", "y")
"""Integer columns of a tile-embeddings file naming its tile at the dataset's zoom."""


def check_tile_embeddings(path: Path, x: NDArray[np.integer], y: NDArray[np.integer],
                          zoom: int | None = None) -> list[str]:
    """Check that a tile-embeddings file (see :func:`read_tile_embeddings`) has a row for each
    of the tiles ``(x, y)``, reading only its schema and tile columns.

    Returns:
        The file's embedding columns.

    Raises:
        GeoJepaError: Naming the file: unreadable, no ``x``/``y`` columns, no embedding column,
            a ``z`` other than ``zoom``, a tile twice, or a tile of ``(x, y)`` missing.
    """
    schema = _schema(path)
    columns = _embedding_columns(schema, path)
    tiles = [c for c in ("z", *TILE_COLUMNS) if c in schema.names]
    _rows_of_tiles(pq.read_table(path, columns=tiles), x, y, zoom, path)
    return columns


def read_tile_embeddings(path: Path, x: NDArray[np.integer], y: NDArray[np.integer],
                         zoom: int | None = None) -> NDArray[np.float32]:
    """Tile embeddings made by another tool, one row per tile ``(x, y)``, in that order.

    The Parquet (or GeoParquet) file has a row per tile: integer columns ``x`` and ``y``, the
    tile at the dataset's zoom (and, optionally, ``z``, which must then be that zoom), and the
    tile's vector, either in a list column ``embedding`` (one length for every row) or, without
    one, in every other numeric column (non-numeric columns such as a geometry are left out).
    Rows of other tiles are ignored.

    Args:
        path: The file.
        x: Tile columns of the tiles wanted.
        y: Tile rows of the tiles wanted.
        zoom: The tiles' zoom, checked against a ``z`` column (None: not checked).

    Returns:
        ``[len(x), D]`` embeddings.

    Raises:
        GeoJepaError: Naming the file: as :func:`check_tile_embeddings`, or vectors of several
            lengths, or non-finite values.
    """
    schema = _schema(path)
    columns = _embedding_columns(schema, path)
    tiles = [c for c in ("z", *TILE_COLUMNS) if c in schema.names]
    table = pq.read_table(path, columns=[*tiles, *columns])
    rows = _rows_of_tiles(table, x, y, zoom, path)
    if columns == [EMBEDDING_COLUMN]:
        vectors = table.column(EMBEDDING_COLUMN).combine_chunks()
        lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
        if len(lengths) and (np.any(lengths != lengths[0]) or vectors.null_count):
            raise GeoJepaError("the embedding column holds vectors of several lengths", path)
        values = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        matrix = values.reshape(len(vectors), -1)
    else:
        matrix = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in columns])
    out = matrix[rows].astype(np.float32)
    if not np.isfinite(out).all():
        raise GeoJepaError("embeddings hold NaN, infinite or missing values", path)
    return out


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise GeoJepaError(f"not a Parquet file ({err})", path) from err


def _embedding_columns(schema: pa.Schema, path: Path) -> list[str]:
    """``[embedding]``, or the numeric columns other than the tile's; checks the tile columns."""
    for name in TILE_COLUMNS:
        if name not in schema.names or not pa.types.is_integer(schema.field(name).type):
            raise GeoJepaError(f"tile embeddings need integer columns x and y (the tile at the "
                               f"dataset's zoom); {name!r} is missing or not an integer", path)
    if EMBEDDING_COLUMN in schema.names:
        kind = schema.field(EMBEDDING_COLUMN).type
        if not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)):
            raise GeoJepaError(f"column {EMBEDDING_COLUMN!r} must be a list of numbers, got {kind}", path)
        return [EMBEDDING_COLUMN]
    numeric = [f.name for f in schema if f.name not in (*TILE_COLUMNS, "z")
               and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not numeric:
        raise GeoJepaError(f"no embedding: neither a list column {EMBEDDING_COLUMN!r} nor numeric "
                           "columns beside x and y", path)
    return numeric


def _rows_of_tiles(table: pa.Table, x: NDArray[np.integer], y: NDArray[np.integer], zoom: int | None,
                   path: Path) -> NDArray[np.int64]:
    """The row of ``table`` holding each tile ``(x, y)``, after checking its ``z`` (if any)."""
    if zoom is not None and "z" in table.column_names:
        other = set(pc.unique(table.column("z")).to_pylist()) - {zoom}
        if other:
            raise GeoJepaError(f"tiles of zoom {min(other, key=str)} in a dataset of zoom {zoom}", path)
    have = pd.MultiIndex.from_arrays([table.column(c).to_numpy(zero_copy_only=False) for c in TILE_COLUMNS])
    if not have.is_unique:
        first = have[have.duplicated()][0]
        raise GeoJepaError(f"tile x={first[0]} y={first[1]} has several rows", path)
    rows = have.get_indexer(pd.MultiIndex.from_arrays([x, y]))
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        i = missing[0]
        raise GeoJepaError(f"no embedding for {len(missing)} of the dataset's {len(x)} tiles "
                           f"(first: x={x[i]} y={y[i]})", path)
    return rows.astype(np.int64)
