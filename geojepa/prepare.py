"""``geojepa prepare``: OSM extracts (+ imagery) -> a sharded GeoJEPA tile dataset.

The pipeline streams each OSM file once per pass (:mod:`geojepa.osm`), cuts entities into
per-tile pieces in worker processes (:mod:`geojepa.tiling`), spills them into bucket files and
then assembles each bucket into a Parquet shard (:mod:`geojepa.dataset.writer`). Everything is
written into a temporary folder beside the output that is renamed into place only when complete,
so a failure never leaves a partial dataset.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from geojepa import __version__
from geojepa.atomic import atomic_folder
from geojepa.dataset.manifest import InputFile, Manifest
from geojepa.dataset.schema import SPLITS, TILES_DIR, VOCAB_NAME
from geojepa.dataset.writer import (
    BucketSpill,
    ShardResult,
    ShardSettings,
    assemble_bucket,
    assign_splits,
    write_vocab,
)
from geojepa.errors import GeoJepaError
from geojepa.osm import EntityBatch, ReadStats, read_entities
from geojepa.tags import DEFAULT_EXCLUDED_KEYS, TagFilter
from geojepa.tiles import tile_bounds_lonlat
from geojepa.tiling import PieceStats, TileGrid, bbox_grid, cut_batch

BUCKET_BYTES = 1 << 20
"""Input bytes per bucket: bounds the memory of assembling one bucket."""
MAX_BUCKETS = 1024


INLINE_BYTES = 16 << 20
"""Inputs smaller than this are prepared in this process by default: starting worker processes
costs more than they save."""


def default_workers() -> int:
    """Worker processes used for large inputs: the CPUs this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus))


def resolve_workers(workers: int, input_bytes: int) -> int:
    """Worker processes to use: ``workers`` if given (>= 0), else 0 for small inputs and
    :func:`default_workers` for large ones."""
    if workers >= 0:
        return workers
    return 0 if input_bytes < INLINE_BYTES else default_workers()


@dataclass
class PrepareConfig:
    """Settings of ``geojepa prepare`` (all have defaults; see SPEC section 2).

    Attributes:
        zoom: Tile zoom.
        image_size: Image side in pixels.
        min_entities: Tiles with fewer entities are dropped.
        max_entities: Denser tiles keep a seeded sample of this many entities.
        group_zoom: Zoom of the split groups.
        split_fractions: Train, val and test fractions of the groups.
        seed: Seed of the split and of the capping sample.
        workers: Worker processes (0: everything in this process; -1: automatic, none for
            inputs under 16 MiB, else one per CPU up to 8).
        bbox: Optional ``(west, south, east, north)`` in degrees.
        excluded_tags: Key patterns that never reach the dataset.
        image_format: Encoding of tile images: ``webp``, ``png`` or ``jpeg``.
        image_quality: Quality of lossy image formats.
        max_entity_tiles: Entities covering more tiles are dropped (and counted).
        batch_size: Entities per work unit.
        geoparquet: Also write every entity piece as GeoParquet (``entities.parquet``).
    """

    zoom: int = 16
    image_size: int = 224
    min_entities: int = 5
    max_entities: int = 1250
    group_zoom: int = 14
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    workers: int = -1
    bbox: tuple[float, float, float, float] | None = None
    excluded_tags: tuple[str, ...] = DEFAULT_EXCLUDED_KEYS
    image_format: str = "webp"
    image_quality: int = 90
    max_entity_tiles: int = 16_384
    batch_size: int = 20_000
    geoparquet: bool = False

    def validate(self) -> None:
        """Check the settings, raising :class:`GeoJepaError` on the first bad one."""
        if not 1 <= self.zoom <= 22:
            raise GeoJepaError(f"zoom must be in 1..22, got {self.zoom}")
        if not 0 <= self.group_zoom <= self.zoom:
            raise GeoJepaError(f"group zoom must be in 0..{self.zoom}, got {self.group_zoom}")
        if self.image_size < 16:
            raise GeoJepaError(f"image size must be at least 16, got {self.image_size}")
        if not 1 <= self.min_entities <= self.max_entities:
            raise GeoJepaError("need 1 <= min_entities <= max_entities")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise GeoJepaError(f"split fractions must be 3 non-negative numbers summing to 1, got {fr}")
        if self.image_format not in ("webp", "png", "jpeg"):
            raise GeoJepaError(f"image format must be webp, png or jpeg, got {self.image_format}")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise GeoJepaError(f"bbox must be west,south,east,north in degrees, got {self.bbox}")


class _RateColumn(ProgressColumn):
    """Items per second of a task."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="progress.data.speed")


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def _cut(batch: EntityBatch, grid: TileGrid) -> tuple[pa.Table, PieceStats]:
    stats = PieceStats()
    return cut_batch(batch, grid, stats), stats


class _Inline(Executor):
    """An executor that runs each call at once, in this process (``workers=0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(err)
        return future


@contextmanager
def _executor(workers: int) -> Iterator[Executor]:
    if workers <= 0:
        yield _Inline()
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ordered(
    executor: Executor, calls: Iterable[tuple[Callable[..., Any], tuple]], in_flight: int
) -> Iterator[Any]:
    """Run calls on ``executor`` with bounded look-ahead and yield results in call order."""
    pending: deque[Future] = deque()
    for fn, args in calls:
        pending.append(executor.submit(fn, *args))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _check_inputs(osm_paths: Sequence[Path]) -> None:
    if not osm_paths:
        raise GeoJepaError("no OSM input given")
    for path in osm_paths:
        if not path.exists():
            raise GeoJepaError("OSM file not found", path)
        if not path.is_file():
            raise GeoJepaError("OSM input is not a file", path)
        name = path.name.lower()
        if not any(name.endswith(ext) for ext in (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz", ".o5m", ".opl")):
            raise GeoJepaError("unsupported OSM file type (expected .osm.pbf, .osm or .osm.bz2)", path)
        if path.stat().st_size == 0:
            raise GeoJepaError("OSM file is empty", path)


def _data_bounds(groups: list[tuple[int, int]], group_zoom: int) -> tuple[float, float, float, float]:
    """Lon/lat bounds of the split groups that received data."""
    boxes = [tile_bounds_lonlat(group_zoom, gx, gy) for gx, gy in groups]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def prepare(
    osm_paths: Sequence[str | Path],
    out: str | Path,
    imagery: Sequence[str | Path] = (),
    config: PrepareConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> Manifest:
    """Build a tile dataset from OSM files and optional imagery.

    Args:
        osm_paths: ``.osm.pbf`` / ``.osm`` / ``.osm.bz2`` files.
        out: Dataset folder to create.
        imagery: GeoTIFF/COG files, or one XYZ tile folder; empty for no imagery.
        config: Settings; defaults when None.
        overwrite: Replace an existing ``out``.
        progress: Show progress bars.
        console: Rich console for progress output.

    Returns:
        The manifest of the written dataset.

    Raises:
        GeoJepaError: Bad input or settings, or a failure while writing; nothing is left behind.
    """
    config = config or PrepareConfig()
    config.validate()
    osm = [Path(p) for p in osm_paths]
    _check_inputs(osm)
    out = Path(out)
    imagery_paths = [Path(p) for p in imagery]
    source = None
    if imagery_paths:
        from geojepa.imagery import open_imagery

        source = open_imagery(imagery_paths)
    try:
        with atomic_folder(out, overwrite) as tmp, _progress(console, progress) as bars:
            return _prepare_into(tmp, out, osm, imagery_paths, source, config, bars)
    except (OSError, pa.ArrowException) as err:
        raise GeoJepaError(f"writing the dataset failed ({err})", out) from err
    finally:
        if source is not None:
            source.close()


def _prepare_into(
    tmp: Path,
    out: Path,
    osm: list[Path],
    imagery_paths: list[Path],
    source: Any,
    config: PrepareConfig,
    bars: Progress,
) -> Manifest:
    grid = bbox_grid(config.zoom, config.bbox, config.max_entity_tiles)
    total_bytes = sum(p.stat().st_size for p in osm)
    n_buckets = max(1, min(MAX_BUCKETS, math.ceil(total_bytes / BUCKET_BYTES)))
    spill = BucketSpill(tmp / "_buckets", n_buckets, config.zoom - config.group_zoom)
    read_stats = ReadStats()
    piece_stats = PieceStats()
    tag_filter = TagFilter(config.excluded_tags)
    reading = bars.add_task("reading OSM", total=None, unit="entities")

    workers = resolve_workers(config.workers, total_bytes)
    with _executor(workers) as pool:
        batches = (
            (_cut, (batch, grid))
            for path in osm
            for batch in read_entities(path, tag_filter, config.batch_size, read_stats)
        )
        for table, stats in _ordered(pool, batches, in_flight=2 * max(workers, 1)):
            spill.write(table)
            for name in ("entities", "pieces", "outside", "oversized"):
                setattr(piece_stats, name, getattr(piece_stats, name) + getattr(stats, name))
            bars.advance(reading, stats.entities)
        buckets = spill.close()
        bars.update(reading, total=piece_stats.entities)

        groups = spill.group_tuples()
        if not groups:
            where = "" if config.bbox is None else f" inside bbox {config.bbox}"
            raise GeoJepaError(f"no OSM entities with kept tags{where}", osm[0])
        if source is not None and not source.overlaps(_data_bounds(groups, config.group_zoom)):
            raise GeoJepaError("imagery does not overlap the OSM area", imagery_paths[0])
        splits = assign_splits(groups, config.split_fractions, config.seed)
        settings = ShardSettings(
            zoom=config.zoom,
            group_zoom=config.group_zoom,
            min_entities=config.min_entities,
            max_entities=config.max_entities,
            seed=config.seed,
            splits=splits,
            imagery=[str(p) for p in imagery_paths],
            image_size=config.image_size,
            image_format=config.image_format,
            image_quality=config.image_quality,
        )
        tiles_dir = tmp / TILES_DIR
        tiles_dir.mkdir()
        writing = bars.add_task("writing tiles", total=len(buckets), unit="buckets")
        calls = (
            (assemble_bucket, (spill.path(b), tiles_dir / f"tiles-{b:05d}.parquet", settings))
            for b in buckets
        )
        results: list[ShardResult] = []
        for result in _ordered(pool, calls, in_flight=2 * max(workers, 1)):
            results.append(result)
            bars.advance(writing)
    shutil.rmtree(spill.folder)
    manifest = _write_manifest(tmp, osm, imagery_paths, config, splits, results, read_stats,
                               piece_stats)
    if config.geoparquet:
        from geojepa.dataset.geoparquet import export_entities

        export_entities(tmp, tmp / "entities.parquet")
    return manifest


def _write_manifest(
    tmp: Path,
    osm: list[Path],
    imagery_paths: list[Path],
    config: PrepareConfig,
    splits: dict[tuple[int, int], str],
    results: list[ShardResult],
    read_stats: ReadStats,
    piece_stats: PieceStats,
) -> Manifest:
    """Write the vocabulary and the manifest of the shards in ``results`` to ``tmp``.

    Raises:
        GeoJepaError: If no tile was written (none has ``min_entities``).
    """
    counts = {s: {"tiles": sum(r.tiles[s] for r in results),
                  "entities": sum(r.entities[s] for r in results)} for s in SPLITS}
    if sum(c["tiles"] for c in counts.values()) == 0:
        raise GeoJepaError(
            f"no tile has at least {config.min_entities} entities"
            + ("" if config.bbox is None else f" inside bbox {config.bbox}"),
            osm[0],
        )
    vocab: Counter[str] = Counter()
    for r in results:
        vocab.update(r.vocab)
    write_vocab(tmp / VOCAB_NAME, vocab)
    tiles_with_image = sum(r.tiles_with_image for r in results)
    report = {
        "read": asdict(read_stats),
        "cut": asdict(piece_stats),
        "sparse_tiles_dropped": sum(r.sparse_tiles for r in results),
        "capped_tiles": sum(r.capped_tiles for r in results),
        "capped_entities": sum(r.capped_entities for r in results),
        "tiles_with_image": tiles_with_image,
        "mean_image_coverage": (
            sum(r.coverage_sum for r in results) / max(1, sum(c["tiles"] for c in counts.values()))
        ),
    }
    settings_dict = asdict(config)
    settings_dict.pop("workers")
    manifest = Manifest(
        zoom=config.zoom,
        group_zoom=config.group_zoom,
        settings=settings_dict,
        inputs=[InputFile.of(p) for p in osm],
        imagery=[InputFile.of(p) for p in imagery_paths],
        shards=[{"path": r.shard, "tiles": sum(r.tiles.values())} for r in results if r.shard],
        counts=counts,
        groups={f"{gx}_{gy}": s for (gx, gy), s in sorted(splits.items())},
        report=report,
        vocab_size=len(vocab),
        created_by=f"geojepa {__version__}",
    )
    manifest.save(tmp)
    return manifest
