"""Streaming access to a prepared tile dataset."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geojepa.dataset.manifest import Manifest
from geojepa.dataset.schema import SPLITS, TILES_DIR, VOCAB_NAME
from geojepa.errors import GeoJepaError


class TileDataset:
    """A prepared dataset folder: manifest, tile shards and tag vocabulary.

    Tiles are read shard by shard and row group by row group, so a dataset far larger than memory
    can be streamed.

    Args:
        folder: The dataset folder written by ``geojepa prepare``.

    Raises:
        GeoJepaError: ``folder`` is not a readable dataset.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)

    @property
    def shard_paths(self) -> list[Path]:
        """Tile shard files, in manifest order."""
        return [self.folder / TILES_DIR / s["path"] for s in self.manifest.shards]

    def num_tiles(self, split: str | None = None) -> int:
        """Number of tiles, in one split or in all."""
        counts = self.manifest.counts
        if split is None:
            return sum(c["tiles"] for c in counts.values())
        return counts[split]["tiles"]

    def iter_batches(
        self,
        split: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> Iterator[pa.RecordBatch]:
        """Stream tiles as Arrow record batches.

        Args:
            split: One split name, several, or None for all tiles.
            columns: Columns to read (all when None); ``split`` is read as needed.
            batch_size: Tiles per batch, at most.

        Yields:
            Record batches with the :data:`geojepa.dataset.schema.TILE_SCHEMA` columns asked for.
        """
        wanted = _split_set(split)
        read_cols = None if columns is None else list(dict.fromkeys([*columns, "split"]))
        for path in self.shard_paths:
            try:
                reader = pq.ParquetFile(path)
            except (OSError, pa.ArrowInvalid) as err:
                raise GeoJepaError(f"unreadable shard ({err})", path) from err
            for batch in reader.iter_batches(batch_size=batch_size, columns=read_cols):
                if wanted is not None:
                    batch = batch.filter(pc.is_in(batch["split"], pa.array(sorted(wanted))))
                    if batch.num_rows == 0:
                        continue
                if columns is not None and "split" not in columns:
                    batch = batch.drop_columns(["split"])
                yield batch

    def iter_tiles(
        self, split: str | Sequence[str] | None = None, columns: Sequence[str] | None = None
    ) -> Iterator[dict]:
        """Stream tiles one at a time as Python dictionaries (convenient, not fast)."""
        for batch in self.iter_batches(split, columns):
            yield from batch.to_pylist()

    def vocabulary(self) -> pa.Table:
        """The tag vocabulary: ``tag`` and ``count``, most frequent first."""
        return pq.read_table(self.folder / VOCAB_NAME)


def _split_set(split: str | Sequence[str] | None) -> set[str] | None:
    if split is None:
        return None
    names = {split} if isinstance(split, str) else set(split)
    unknown = names - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split {sorted(unknown)}; expected one of {SPLITS}")
    return names
