"""From dataset shards to padded :class:`~geojepa.model.batch.TileBatch` es, streaming.

Work is split into *units* (one Parquet row group each). Every epoch the units are shuffled with
``seed + epoch`` and dealt out to DDP ranks and data-loader workers; each worker reads its units
one at a time, pools a few hundred tiles, sorts the pool by entity count and cuts it into batches
of similar-sized tiles (less padding), which are then shuffled. Memory is bounded by the pool.

Everything per tile is converted with vectorised Arrow/numpy code per row group: tag strings become
vocabulary ids, box-frame vertices are capped at ``max_vertices`` per entity (evenly resampled,
so long rings keep their shape) with a part index per vertex.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from geojepa.dataset.reader import TileDataset
from geojepa.model.batch import TileBatch

IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LOAD_COLUMNS = ("z", "x", "y", "n_entities", "entities", "image", "image_coverage")


@dataclass
class TileItem:
    """One tile's arrays, before padding into a batch."""

    tile: tuple[int, int, int]
    tag_ids: NDArray[np.int64]  # [n, k]
    geom: NDArray[np.float32]  # [n, v, 2]
    geom_part: NDArray[np.int64]  # [n, v]
    kind: NDArray[np.int64]  # [n]
    boxes: NDArray[np.float32]  # [n, 8]
    image: bytes | None

    @property
    def num_entities(self) -> int:
        """Number of entities in the tile."""
        return len(self.kind)


class TagVocabulary:
    """Maps ``key=value`` strings to ids 1..V (0 = none / unknown), in ``vocab.parquet`` order.

    Args:
        tags: The vocabulary, most frequent first.
    """

    def __init__(self, tags: Sequence[str]) -> None:
        self.tags = pa.array(list(tags), pa.string())

    @classmethod
    def of(cls, ds: TileDataset) -> TagVocabulary:
        """The vocabulary of a dataset."""
        return cls(ds.vocabulary().column("tag").to_pylist())

    def __len__(self) -> int:
        return len(self.tags)

    def ids(self, tags: pa.Array) -> NDArray[np.int64]:
        """Ids of an array of tag strings (0 for tags outside the vocabulary)."""
        index = pc.index_in(tags, value_set=self.tags)
        return pc.fill_null(pc.add(index, 1), 0).to_numpy().astype(np.int64)


def _ragged_to_padded(
    values: NDArray, offsets: NDArray[np.int64], width: int, fill: float
) -> NDArray:
    """Pad a ragged array (``values`` split at ``offsets``) to ``[rows, width, ...]``."""
    rows = len(offsets) - 1
    counts = np.minimum(np.diff(offsets), width)
    out = np.full((rows, width, *values.shape[1:]), fill, dtype=values.dtype)
    if counts.sum() == 0:
        return out
    row = np.repeat(np.arange(rows), counts)
    pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out[row, pos] = values[np.repeat(offsets[:-1], counts) + pos]
    return out


def _vertex_parts(
    xy_offsets: NDArray[np.int64], part_values: NDArray[np.int64], part_offsets: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Part index of every vertex (vertices of all entities, concatenated)."""
    n_vertices = int(xy_offsets[-1])
    counts = np.diff(part_offsets)
    entity_of_part = np.repeat(np.arange(len(counts)), counts)
    global_start = xy_offsets[:-1][entity_of_part] + part_values
    first_part = part_offsets[:-1]
    vertex = np.arange(n_vertices)
    entity_of_vertex = np.repeat(np.arange(len(xy_offsets) - 1), np.diff(xy_offsets))
    part_global = np.searchsorted(global_start, vertex, side="right") - 1
    return part_global - first_part[entity_of_vertex]


def _resample_vertices(
    xy: NDArray[np.float32], parts: NDArray[np.int64], offsets: NDArray[np.int64], cap: int
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """Keep at most ``cap`` vertices per entity, evenly spaced along its vertex sequence."""
    counts = np.diff(offsets)
    kept = np.minimum(counts, cap)
    pos = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    count_rep = np.repeat(counts, kept)
    kept_rep = np.repeat(kept, kept)
    step = np.where(kept_rep > 1, (count_rep - 1) / np.maximum(kept_rep - 1, 1), 0.0)
    idx = np.where(count_rep > cap, np.rint(pos * step).astype(np.int64), pos)
    src = np.repeat(offsets[:-1], kept) + idx
    new_offsets = np.concatenate([[0], np.cumsum(kept)])
    return xy[src], parts[src], new_offsets


def tile_items(
    batch: pa.RecordBatch, vocab: TagVocabulary, max_tags: int = 32, max_vertices: int = 64
) -> list[TileItem]:
    """Convert a record batch of tiles into :class:`TileItem` s (vectorised per batch).

    Args:
        batch: Tiles with at least the :data:`LOAD_COLUMNS` columns.
        vocab: Tag vocabulary of the dataset the model was built for.
        max_tags: Tags kept per entity (in stored order).
        max_vertices: Vertices kept per entity (evenly resampled).
    """
    entities = batch.column("entities")
    tile_offsets = entities.offsets.to_numpy().astype(np.int64)
    tile_offsets -= tile_offsets[0]
    flat = pc.list_flatten(entities)
    if isinstance(flat, pa.ChunkedArray):
        flat = flat.combine_chunks()

    tags = flat.field("tags")
    tag_offsets = _offsets(tags)
    tag_ids = vocab.ids(pc.list_flatten(tags))
    tag_table = _ragged_to_padded(tag_ids, tag_offsets, max(1, min(max_tags, _max_len(tag_offsets))), 0)

    shape_xy = flat.field("shape_xy")
    xy = pc.list_flatten(shape_xy).to_numpy().astype(np.float32).reshape(-1, 2)
    xy_offsets = _offsets(shape_xy) // 2
    shape_parts = flat.field("shape_parts")
    parts = _vertex_parts(
        xy_offsets, pc.list_flatten(shape_parts).to_numpy().astype(np.int64), _offsets(shape_parts)
    )
    xy, parts, xy_offsets = _resample_vertices(xy, parts, xy_offsets, max_vertices)
    width = max(1, _max_len(xy_offsets))
    geom = _ragged_to_padded(xy, xy_offsets, width, 0.0)
    geom_part = _ragged_to_padded(parts, xy_offsets, width, -1)

    kind = flat.field("kind").to_numpy().astype(np.int64)
    boxes = pc.list_flatten(flat.field("box")).to_numpy().astype(np.float32).reshape(-1, 8)
    z = batch.column("z").to_numpy()
    x = batch.column("x").to_numpy()
    y = batch.column("y").to_numpy()
    images = batch.column("image").to_pylist() if "image" in batch.schema.names else [None] * batch.num_rows
    items = []
    for i in range(batch.num_rows):
        a, b = tile_offsets[i], tile_offsets[i + 1]
        items.append(
            TileItem(
                tile=(int(z[i]), int(x[i]), int(y[i])),
                tag_ids=tag_table[a:b],
                geom=geom[a:b],
                geom_part=geom_part[a:b],
                kind=kind[a:b],
                boxes=boxes[a:b],
                image=images[i],
            )
        )
    return items


def _offsets(array: pa.Array) -> NDArray[np.int64]:
    off = array.offsets.to_numpy().astype(np.int64)
    return off - off[0]


def _max_len(offsets: NDArray[np.int64]) -> int:
    return int(np.diff(offsets).max()) if len(offsets) > 1 else 0


def decode_image(data: bytes, size: int) -> NDArray[np.float32]:
    """Decode an encoded tile image to a normalised ``[3, size, size]`` array."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return ((arr - IMAGE_MEAN) / IMAGE_STD).transpose(2, 0, 1)


def collate(items: Sequence[TileItem], image_size: int | None = None) -> TileBatch:
    """Pad tile items into a :class:`TileBatch`.

    Args:
        items: Tiles of the batch.
        image_size: Decode images at this size; None leaves ``image`` empty.
    """
    b = len(items)
    n = max(1, max(it.num_entities for it in items))
    k = max(1, max(it.tag_ids.shape[1] if it.num_entities else 1 for it in items))
    v = max(1, max(it.geom.shape[1] if it.num_entities else 1 for it in items))
    tag_ids = np.zeros((b, n, k), np.int64)
    geom = np.zeros((b, n, v, 2), np.float32)
    geom_part = np.full((b, n, v), -1, np.int64)
    kind = np.zeros((b, n), np.int64)
    boxes = np.zeros((b, n, 8), np.float32)
    valid = np.zeros((b, n), bool)
    for i, it in enumerate(items):
        m = it.num_entities
        tag_ids[i, :m, : it.tag_ids.shape[1]] = it.tag_ids[:, :k]
        geom[i, :m, : it.geom.shape[1]] = it.geom[:, :v]
        geom_part[i, :m, : it.geom_part.shape[1]] = it.geom_part[:, :v]
        kind[i, :m] = it.kind
        boxes[i, :m] = it.boxes
        valid[i, :m] = True
    image = has_image = None
    if image_size is not None:
        image_np = np.zeros((b, 3, image_size, image_size), np.float32)
        has = np.zeros(b, bool)
        for i, it in enumerate(items):
            if it.image is not None:
                image_np[i] = decode_image(it.image, image_size)
                has[i] = True
        image, has_image = torch.from_numpy(image_np), torch.from_numpy(has)
    return TileBatch(
        tag_ids=torch.from_numpy(tag_ids),
        geom=torch.from_numpy(geom),
        geom_part=torch.from_numpy(geom_part),
        kind=torch.from_numpy(kind),
        boxes=torch.from_numpy(boxes),
        valid=torch.from_numpy(valid),
        tiles=torch.tensor([it.tile for it in items], dtype=torch.int64).reshape(b, 3),
        image=image,
        has_image=has_image,
    )


def row_group_units(ds: TileDataset, chunk: int) -> list[tuple[Path, int, int, int]]:
    """Work units ``(shard, row_group, start, stop)`` of at most ``chunk`` tiles, in order."""
    units = []
    for path in ds.shard_paths:
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            units.extend((path, g, a, min(a + chunk, rows)) for a in range(0, rows, chunk))
    return units


class TileStream(IterableDataset):
    """Stream a dataset's tiles as padded batches of similar size.

    Args:
        dataset: Dataset folder.
        splits: Splits to read (e.g. ``("train",)``); None for every tile.
        batch_size: Tiles per batch.
        vocab: Tag vocabulary (default: the dataset's own).
        shuffle: Shuffle units, pools and batches (training); False gives the stored order
            with no size sorting (inference).
        seed: Base seed; epoch ``e`` uses ``seed + e``.
        pool_batches: Batches pooled for size sorting.
        image_size: Decode images at this size (None: no images).
        max_tags: Tags per entity.
        max_vertices: Vertices per entity.
        rank: This process's rank among ``world_size`` DDP processes.
        world_size: Number of DDP processes.
        batches_per_epoch: With several ranks, every rank yields exactly this many batches
            (cycling through its units when needed) so that DDP stays in step; None = as many as
            the data gives.
    """

    def __init__(
        self,
        dataset: str | Path,
        splits: Sequence[str] | None = ("train",),
        batch_size: int = 32,
        vocab: TagVocabulary | None = None,
        shuffle: bool = True,
        seed: int = 0,
        pool_batches: int = 16,
        image_size: int | None = None,
        max_tags: int = 32,
        max_vertices: int = 64,
        rank: int = 0,
        world_size: int = 1,
        batches_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.ds = TileDataset(dataset)
        self.splits = None if splits is None else tuple(splits)
        self.batch_size = batch_size
        self.vocab = vocab or TagVocabulary.of(self.ds)
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.image_size = image_size
        self.max_tags = max_tags
        self.max_vertices = max_vertices
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self.skip_batches = 0
        self.units = row_group_units(self.ds, batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's shuffle, and skip its first batches (to resume mid-epoch)."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def num_tiles(self) -> int:
        """Tiles in the selected splits."""
        if self.splits is None:
            return self.ds.num_tiles()
        return sum(self.ds.num_tiles(s) for s in self.splits)

    def __len__(self) -> int:
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return math.ceil(self.num_tiles() / (self.batch_size * self.world_size))

    def _my_units(self, rng: np.random.Generator, worker: int, workers: int) -> list[tuple[Path, int, int, int]]:
        """This worker's share of the units, in a shuffled order that keeps row groups together."""
        groups: dict[tuple[Path, int], list[tuple[Path, int, int, int]]] = {}
        for unit in self.units:
            groups.setdefault(unit[:2], []).append(unit)
        keys = list(groups)
        if self.shuffle:
            keys = [keys[i] for i in rng.permutation(len(keys))]
        ordered = [u for key in keys for u in groups[key]]
        slot = self.rank * workers + worker
        return ordered[slot :: self.world_size * workers]

    def items(self) -> Iterator[TileItem]:
        """Every selected tile, unbatched, in stored order (one process; for inference)."""
        return self._tiles(self.units)

    def _tiles(self, units: list[tuple[Path, int, int, int]]) -> Iterator[TileItem]:
        cols = list(LOAD_COLUMNS) + (["split"] if self.splits is not None else [])
        cached: tuple[tuple[Path, int], pa.Table] | None = None
        for path, group, start, stop in units:
            if cached is None or cached[0] != (path, group):
                cached = ((path, group), pq.ParquetFile(path).read_row_group(group, columns=cols))
            table = cached[1].slice(start, stop - start)
            if self.splits is not None:
                table = table.filter(pc.is_in(table["split"], pa.array(list(self.splits))))
            for rb in table.to_batches():
                yield from tile_items(rb, self.vocab, self.max_tags, self.max_vertices)

    def _batches(self, rng: np.random.Generator, units: list[tuple[Path, int, int, int]]) -> Iterator[list[TileItem]]:
        pool: list[TileItem] = []
        pool_size = self.batch_size * (self.pool_batches if self.shuffle else 1)
        for item in self._tiles(units):
            pool.append(item)
            if len(pool) >= pool_size:
                yield from self._cut(pool, rng)
                pool = []
        if pool:
            yield from self._cut(pool, rng)

    def _cut(self, pool: list[TileItem], rng: np.random.Generator) -> list[list[TileItem]]:
        if self.shuffle:
            order = rng.permutation(len(pool))
            pool = [pool[i] for i in order]
            pool.sort(key=lambda it: it.num_entities)
        batches = [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[TileBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        target = None
        if self.batches_per_epoch is not None:
            per = self.batches_per_epoch
            target = per // workers + (1 if worker < per % workers else 0)
        produced = 0
        skip = self.skip_batches // workers + (1 if worker < self.skip_batches % workers else 0)
        cycle = 0
        while True:
            units = self._my_units(np.random.default_rng([self.seed, self.epoch, cycle]), worker, workers)
            got_any = False
            for items in self._batches(rng, units):
                got_any = True
                if produced >= skip:
                    yield collate(items, self.image_size)
                produced += 1
                if target is not None and produced >= target:
                    return
            cycle += 1
            if target is None or not got_any:
                return
