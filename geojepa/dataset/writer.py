"""Writing the tile dataset in two steps that keep memory bounded.

1. :class:`BucketSpill` appends the per-tile entity pieces of every batch to Arrow IPC streams,
   one per bucket; a bucket holds whole split groups, chosen by a stable hash, so memory in
   step 2 depends on the bucket size, never on the number of tiles.
2. :func:`assemble_bucket` reads one bucket, groups its pieces into tiles, drops sparse tiles,
   caps dense ones, resolves relation members, attaches images and writes one Parquet shard.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pyarrow import ipc

from geojepa.dataset.schema import ENTITY_TYPE, SPLITS, TILE_SCHEMA, VOCAB_SCHEMA
from geojepa.osm import GROUP
from geojepa.tiles import Tile
from geojepa.tiling import PIECE_SCHEMA

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(values: NDArray[np.integer], seed: int = 0) -> NDArray[np.uint64]:
    """A stable 64-bit hash (splitmix64 finaliser) of integers, vectorised."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK64
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK64
        return z ^ (z >> np.uint64(31))


def group_keys(tile_x: NDArray[np.integer], tile_y: NDArray[np.integer], shift: int) -> NDArray[np.int64]:
    """Pack the split group ``(x >> shift, y >> shift)`` of tiles into one integer."""
    return (np.asarray(tile_x, np.int64) >> shift) << 32 | (np.asarray(tile_y, np.int64) >> shift)


def assign_splits(
    groups: list[tuple[int, int]], fractions: tuple[float, float, float], seed: int
) -> dict[tuple[int, int], str]:
    """Assign split groups to train/val/test with exact, seeded proportions.

    Groups are sorted, shuffled with ``seed``, and cut at the rounded fractions; with three or
    more groups, val and test get at least one group each when their fraction is positive.

    Args:
        groups: Group coordinates ``(gx, gy)``.
        fractions: Train, val and test fractions (summing to 1).
        seed: Shuffle seed.

    Returns:
        Group -> split name.
    """
    ordered = sorted(set(groups))
    n = len(ordered)
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    if n >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = max(n - n_val - n_test, 0)
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    names = (names + ["train"] * n)[:n]
    return {ordered[i]: names[k] for k, i in enumerate(order)}


class BucketSpill:
    """Partition piece tables into bucket files on disk.

    Args:
        folder: Where bucket files go (a temporary folder of the dataset being written).
        n_buckets: Number of buckets.
        group_shift: ``zoom - group_zoom``: tiles ``(x >> shift, y >> shift)`` form a group.
    """

    def __init__(self, folder: Path, n_buckets: int, group_shift: int) -> None:
        self.folder = folder
        self.n_buckets = n_buckets
        self.group_shift = group_shift
        self.groups: set[int] = set()
        self.pieces = 0
        self._writers: dict[int, tuple[pa.OSFile, ipc.RecordBatchStreamWriter]] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, bucket: int) -> Path:
        """File of one bucket."""
        return self.folder / f"bucket-{bucket:05d}.arrow"

    def write(self, table: pa.Table) -> None:
        """Append a table of pieces (:data:`geojepa.tiling.PIECE_SCHEMA`) to its buckets."""
        if table.num_rows == 0:
            return
        keys = group_keys(table["tile_x"].to_numpy(), table["tile_y"].to_numpy(), self.group_shift)
        self.groups.update(np.unique(keys).tolist())
        self.pieces += table.num_rows
        buckets = (mix64(keys) % np.uint64(self.n_buckets)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            bucket = int(sorted_buckets[start])
            writer = self._writers.get(bucket)
            if writer is None:
                sink = pa.OSFile(str(self.path(bucket)), "wb")
                writer = (sink, ipc.new_stream(sink, PIECE_SCHEMA))
                self._writers[bucket] = writer
            writer[1].write_table(table.take(order[start:end]))

    def close(self) -> list[int]:
        """Close every bucket file and return the buckets that received pieces, sorted."""
        for sink, writer in self._writers.values():
            writer.close()
            sink.close()
        return sorted(self._writers)

    def group_tuples(self) -> list[tuple[int, int]]:
        """Every group that received pieces, as ``(gx, gy)``."""
        return [(k >> 32, k & 0xFFFFFFFF) for k in sorted(self.groups)]


@dataclass
class ShardSettings:
    """Settings of step 2, shared by every bucket (picklable).

    Attributes:
        zoom: Tile zoom.
        group_zoom: Split-group zoom.
        min_entities: Tiles with fewer entities are dropped.
        max_entities: Tiles with more entities keep a seeded sample of this many.
        seed: Seed of the capping sample.
        splits: Group ``(gx, gy)`` -> split.
        imagery: Imagery inputs, or empty.
        image_size: Image side in pixels.
        image_format: ``webp``, ``png`` or ``jpeg``.
        image_quality: Quality of lossy formats.
        row_group_tiles: Tiles per Parquet row group.
    """

    zoom: int
    group_zoom: int
    min_entities: int
    max_entities: int
    seed: int
    splits: dict[tuple[int, int], str]
    imagery: list[str] = field(default_factory=list)
    image_size: int = 224
    image_format: str = "webp"
    image_quality: int = 90
    row_group_tiles: int = 128


@dataclass
class ShardResult:
    """What one bucket produced."""

    shard: str | None = None
    tiles: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    entities: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    sparse_tiles: int = 0
    capped_tiles: int = 0
    capped_entities: int = 0
    tiles_with_image: int = 0
    coverage_sum: float = 0.0
    vocab: Counter[str] = field(default_factory=Counter)


def _read_bucket(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return ipc.open_stream(source).read_all()


def _select_tiles(
    table: pa.Table, settings: ShardSettings, result: ShardResult
) -> tuple[pa.Table, NDArray[np.int64], NDArray[np.int64]]:
    """Sort pieces, drop duplicates and sparse tiles, cap dense ones.

    Returns:
        The kept pieces sorted by tile, per-tile start offsets and capped counts.
    """
    table = table.sort_by([("tile_x", "ascending"), ("tile_y", "ascending"),
                           ("osm_type", "ascending"), ("osm_id", "ascending")])
    tx = table["tile_x"].to_numpy().astype(np.int64)
    ty = table["tile_y"].to_numpy().astype(np.int64)
    ref = pack_ref_array(table["osm_type"].to_numpy(), table["osm_id"].to_numpy())
    tile_key = tx << 32 | ty
    dup = np.r_[False, (tile_key[1:] == tile_key[:-1]) & (ref[1:] == ref[:-1])]
    keep = ~dup
    starts = np.flatnonzero(np.r_[True, tile_key[1:] != tile_key[:-1]])
    tile_id = np.cumsum(np.r_[True, tile_key[1:] != tile_key[:-1]]) - 1
    counts = np.bincount(tile_id, weights=keep, minlength=len(starts)).astype(np.int64)
    sparse = counts < settings.min_entities
    result.sparse_tiles += int(sparse.sum())
    keep &= ~sparse[tile_id]
    capped = np.zeros(len(starts), dtype=np.int64)
    dense = np.flatnonzero(counts > settings.max_entities)
    if len(dense):
        priority = mix64(ref, settings.seed)
        ends = np.r_[starts[1:], len(tile_key)]
        for t in dense:
            rows = np.arange(starts[t], ends[t])
            rows = rows[keep[rows]]
            drop = rows[np.argsort(priority[rows], kind="stable")[settings.max_entities:]]
            keep[drop] = False
            capped[t] = len(drop)
        result.capped_tiles += len(dense)
        result.capped_entities += int(capped.sum())
    kept = table.filter(pa.array(keep))
    kept_tile = tile_id[keep]
    tile_starts = np.flatnonzero(np.r_[True, kept_tile[1:] != kept_tile[:-1]])
    return kept, tile_starts, capped[np.unique(kept_tile)]


def pack_ref_array(osm_type: NDArray[np.integer], osm_id: NDArray[np.integer]) -> NDArray[np.int64]:
    """Vectorised :func:`geojepa.osm.pack_ref`."""
    return np.asarray(osm_id, np.int64) * 4 + np.asarray(osm_type, np.int64)


def _member_indices(kept: pa.Table, tile_starts: NDArray[np.int64]) -> pa.Array:
    """Replace packed member references of relations by indices into their tile's entities."""
    n = kept.num_rows
    kind = kept["kind"].to_numpy()
    ref = pack_ref_array(kept["osm_type"].to_numpy(), kept["osm_id"].to_numpy())
    ends = np.r_[tile_starts[1:], n]
    members: list[list[int]] = [[] for _ in range(n)]
    groups = np.flatnonzero(kind == GROUP)
    if len(groups):
        tile_of = np.searchsorted(tile_starts, groups, side="right") - 1
        raw = kept["members"].combine_chunks()
        local: dict[int, int] = {}
        current = -1
        for row, t in zip(groups.tolist(), tile_of.tolist(), strict=True):
            if t != current:  # relations are sorted by tile: one lookup table per tile
                current = t
                local = {r: i for i, r in enumerate(ref[tile_starts[t] : ends[t]].tolist())}
            members[row] = [local[m] for m in raw[row].values.to_numpy().tolist() if m in local]
    return pa.array(members, pa.list_(pa.int32()))


def assemble_bucket(bucket_path: Path, shard_path: Path, settings: ShardSettings) -> ShardResult:
    """Turn one bucket of pieces into a Parquet shard of tiles.

    Args:
        bucket_path: Bucket file written by :class:`BucketSpill`.
        shard_path: Parquet file to write (inside the temporary dataset folder).
        settings: Step-2 settings.

    Returns:
        Counts, the tag vocabulary of the kept entities, and the shard name (None when every
        tile of the bucket was dropped).
    """
    result = ShardResult()
    pieces = _read_bucket(bucket_path)
    kept, tile_starts, capped = _select_tiles(pieces, settings, result)
    if kept.num_rows == 0:
        return result
    n_tiles = len(tile_starts)
    offsets = np.r_[tile_starts, kept.num_rows].astype(np.int32)
    entities = pa.StructArray.from_arrays(
        [kept[name].combine_chunks() for name in ENTITY_TYPE.names[:-1]]
        + [_member_indices(kept, tile_starts)],
        fields=list(ENTITY_TYPE),
    )
    tx = kept["tile_x"].to_numpy()[tile_starts].astype(np.int64)
    ty = kept["tile_y"].to_numpy()[tile_starts].astype(np.int64)
    shift = settings.zoom - settings.group_zoom
    split = [settings.splits[(int(x) >> shift, int(y) >> shift)] for x, y in zip(tx, ty, strict=True)]
    n_entities = np.diff(offsets)
    images, coverage = _tile_images(tx, ty, settings, result)

    counts = pc.value_counts(pc.list_flatten(entities.field("tags")))
    result.vocab.update(
        dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))
    )
    for name, count in zip(split, n_entities, strict=True):
        result.tiles[name] += 1
        result.entities[name] += int(count)

    table = pa.table(
        {
            "z": pa.array(np.full(n_tiles, settings.zoom, np.int8)),
            "x": pa.array(tx.astype(np.int32)),
            "y": pa.array(ty.astype(np.int32)),
            "group_x": pa.array((tx >> shift).astype(np.int32)),
            "group_y": pa.array((ty >> shift).astype(np.int32)),
            "split": pa.array(split, pa.string()),
            "n_entities": pa.array(n_entities.astype(np.int32)),
            "n_capped": pa.array(capped.astype(np.int32)),
            "entities": pa.ListArray.from_arrays(pa.array(offsets), entities),
            "image": pa.array(images, pa.binary()),
            "image_coverage": pa.array(coverage, pa.float32()),
        },
        schema=TILE_SCHEMA,
    )
    pq.write_table(
        table, shard_path, row_group_size=settings.row_group_tiles, compression="zstd"
    )
    result.shard = shard_path.name
    return result


_SOURCES: dict[tuple[str, ...], object] = {}


def _tile_images(
    tx: NDArray[np.int64], ty: NDArray[np.int64], settings: ShardSettings, result: ShardResult
) -> tuple[list[bytes | None], NDArray[np.float32]]:
    """Images and coverage of the given tiles (None/0 without imagery)."""
    n = len(tx)
    if not settings.imagery:
        return [None] * n, np.zeros(n, np.float32)
    from geojepa.imagery import encode_image, open_imagery

    key = tuple(settings.imagery)
    source = _SOURCES.get(key)
    if source is None:
        source = _SOURCES[key] = open_imagery([Path(p) for p in settings.imagery])
    images: list[bytes | None] = []
    coverage = np.zeros(n, np.float32)
    for i, (x, y) in enumerate(zip(tx.tolist(), ty.tolist(), strict=True)):
        tile_image = source.read_tile(Tile(settings.zoom, x, y), settings.image_size)
        coverage[i] = tile_image.coverage
        if tile_image.coverage > 0:
            images.append(encode_image(tile_image.rgb, settings.image_format, settings.image_quality))
            result.tiles_with_image += 1
            result.coverage_sum += float(tile_image.coverage)
        else:
            images.append(None)
    return images, coverage


def write_vocab(path: Path, vocab: Counter[str]) -> None:
    """Write a tag vocabulary, most frequent first (ties in tag order)."""
    items = sorted(vocab.items(), key=lambda kv: (-kv[1], kv[0]))
    table = pa.table(
        {"tag": [k for k, _ in items], "count": [v for _, v in items]}, schema=VOCAB_SCHEMA
    )
    pq.write_table(table, path, compression="zstd")
