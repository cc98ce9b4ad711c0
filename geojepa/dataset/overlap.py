"""Which evaluated tiles pretraining saw, even when it read another dataset.

A checkpoint records the pretraining data (:meth:`Manifest.tile_record`). When the evaluated
dataset was prepared from the same input files with the same tiling, the record's splits say
exactly which tiles pretraining saw. When it was prepared from other files (a larger extract
holding the region, the same region prepared again from a copy, or a file that adds other data
to it), the record's tile keys answer instead: a tile's *content key* hashes its place
(zoom, x, y) and the OSM identities of its entities, so a tile of another dataset with the same
place and entities is one pretraining saw, and its *place* tells whether pretraining saw other
data there (another version of the OSM data, or a synthetic city at the same coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

from geojepa.dataset.manifest import Manifest
from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError

MAX_RECORDED_TILES = 1 << 22
"""Tile keys kept in a checkpoint at most (16 bytes each: 64 MiB); a larger pretraining set
records none, and an evaluation on other input files then cannot tell what it saw."""

_KEY_COLUMNS = ["z", "x", "y", "split", "entities.list.element.osm_type",
                "entities.list.element.osm_id"]


@dataclass(frozen=True)
class TileKeys:
    """Where tiles are and what they hold, one row per tile.

    Attributes:
        zoom: The tiles' zoom.
        x: Tile column, ``int64[n]``.
        y: Tile row, ``int64[n]``.
        content: Hash of the place and the OSM identities of the tile's entities (in any order),
            ``int64[n]``.
    """

    zoom: int
    x: NDArray[np.int64]
    y: NDArray[np.int64]
    content: NDArray[np.int64]

    def at(self, x: NDArray[np.int64], y: NDArray[np.int64]) -> TileKeys:
        """The keys of the tiles at ``(x, y)`` (each must be one of these tiles), in that order.

        Raises:
            GeoJepaError: If a place is not among these tiles.
        """
        place = _place(self.x, self.y)
        wanted = _place(np.asarray(x, np.int64), np.asarray(y, np.int64))
        if len(place) == 0 and len(wanted):
            raise GeoJepaError("tiles missing from the dataset")
        order = np.argsort(place)
        rows = order[np.minimum(np.searchsorted(place, wanted, sorter=order), len(place) - 1)]
        if not np.array_equal(place[rows], wanted):
            raise GeoJepaError("tiles missing from the dataset")
        return TileKeys(self.zoom, self.x[rows], self.y[rows], self.content[rows])


def tile_keys(ds: TileDataset, splits: tuple[str, ...] | None = None) -> TileKeys:
    """The keys of a dataset's tiles (in some splits, or all), reading only places and OSM ids.

    A content key mixes the place with the wrap-around sum of the mixed OSM identities of the
    tile's entities: independent of their order, and computed for all tiles at once.

    Args:
        ds: The dataset.
        splits: Split names; None for every tile.
    """
    xs, ys, contents = [], [], []
    for path in ds.shard_paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=_KEY_COLUMNS):
            if splits is not None:
                keep = np.isin(batch.column("split").to_numpy(zero_copy_only=False), list(splits))
                batch = batch.filter(keep)
            entities = batch.column("entities")
            offsets = entities.offsets.to_numpy()
            flat = entities.values
            ident = (flat.field("osm_id").to_numpy().astype(np.uint64) * np.uint64(4)
                     + flat.field("osm_type").to_numpy().astype(np.uint64))
            sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(_mix(ident), dtype=np.uint64)])
            z, x, y = (batch.column(c).to_numpy().astype(np.uint64) for c in ("z", "x", "y"))
            place = (z << np.uint64(58)) | (x << np.uint64(29)) | y
            contents.append(_mix(_mix(place) ^ (sums[offsets[1:]] - sums[offsets[:-1]])))
            xs.append(x.astype(np.int64))
            ys.append(y.astype(np.int64))
    content = np.concatenate(contents).view(np.int64) if contents else np.zeros(0, np.int64)
    return TileKeys(ds.manifest.zoom, _cat(xs), _cat(ys), content)


def _mix(v: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The SplitMix64 finaliser, element-wise (uint64 arithmetic wraps around)."""
    v = v + np.uint64(0x9E3779B97F4A7C15)
    v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return v ^ (v >> np.uint64(31))


def pretraining_record(ds: TileDataset, splits: tuple[str, ...] | None) -> dict[str, Any]:
    """What a checkpoint stores about its pretraining tiles: :meth:`Manifest.tile_record`, plus
    their keys (``tiles``) unless there are more than :data:`MAX_RECORDED_TILES`."""
    record = ds.manifest.tile_record(splits)
    count = ds.num_tiles() if splits is None else sum(ds.num_tiles(s) for s in splits)
    if count <= MAX_RECORDED_TILES:
        keys = tile_keys(ds, splits)
        record["tiles"] = {"zoom": keys.zoom, "x": torch.from_numpy(keys.x.astype(np.int32)),
                           "y": torch.from_numpy(keys.y.astype(np.int32)),
                           "content": torch.from_numpy(keys.content)}
    return record


def seen_by(
    record: dict[str, Any], manifest: Manifest, splits: list[str], keys: TileKeys | None = None
) -> list[bool | None]:
    """Whether pretraining (described by :func:`pretraining_record`) saw tiles of a dataset.

    Args:
        record: The pretraining record stored in a checkpoint; empty when unknown.
        manifest: The evaluated dataset's manifest.
        splits: The stored split of each evaluated tile.
        keys: The evaluated tiles' keys (:func:`tile_keys`), in the order of ``splits``; needed
            only when the dataset comes from other input files than pretraining's.

    Returns:
        Per tile: True (seen), False (not seen) or None (cannot tell: no record; the same OSM
        data cut with another zoom or other split groups; or other input files and no keys).
    """
    if not record:
        return [None] * len(splits)
    if set(record["inputs"]) & {f.sha256 for f in manifest.inputs}:
        if record["zoom"] != manifest.zoom or record["groups"] != manifest.groups:
            return [None] * len(splits)
        if record["splits"] is None:
            return [True] * len(splits)
        seen = set(record["splits"])
        return [s in seen for s in splits]
    if "tiles" not in record or keys is None:
        return [None] * len(splits)
    return np.isin(keys.content, record["tiles"]["content"].numpy()).tolist()


def places_covered(record: dict[str, Any], keys: TileKeys) -> NDArray[np.bool_] | None:
    """Whether pretraining had tiles (of any content) over each evaluated tile's place, compared
    at the coarser of the two zooms; None when the record has no tile keys."""
    tiles = record.get("tiles")
    if tiles is None:
        return None
    zoom = min(int(tiles["zoom"]), keys.zoom)
    mine = int(tiles["zoom"]) - zoom
    theirs = keys.zoom - zoom
    seen = _place(tiles["x"].numpy().astype(np.int64) >> mine,
                  tiles["y"].numpy().astype(np.int64) >> mine)
    return np.isin(_place(keys.x >> theirs, keys.y >> theirs), seen)


def _place(x: NDArray[np.int64], y: NDArray[np.int64]) -> NDArray[np.int64]:
    return (x << 32) | y


def _cat(parts: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
