"""Downstream tasks (SPEC section 6): per-tile labels from the OSM tags, and masked inputs.

Labels are read from the dataset's entities, which are the raw OSM objects cut to tiles with their
full tags (only the dataset's excluded metadata keys are gone; they never bear a label, and
:func:`build_tasks` refuses a dataset whose exclusion list would hide one).

=================  ================================================  ==========================
task               label                                             masked input
=================  ================================================  ==========================
building_count     entities with a ``building`` tag (not ``no``)     every entity with a
                                                                     ``building*`` key
max_speed          max ``maxspeed`` (also ``:forward``/``:backward``)   every tag whose key contains
                   over the tile's roads (``highway=*``), km/h;      ``maxspeed``
                   mph x 1.609, knots x 1.852, ``;`` lists give
                   their max, ``CC:urban``-style zones their usual
                   limit; :data:`NO_ROAD_SPEED` when no road has one
traffic_signals    nodes with ``highway``/``crossing=traffic_signals``  every tag naming
                   or a ``traffic_signals`` / ``crossing:signals``   ``signals``; point entities
                   tag (not ``no``)                                  that carried one
bridge             1 if an entity has a ``bridge`` / ``bridge:*`` tag  ``bridge*`` and ``layer*``
                   (not ``no``) or is ``man_made``/``type=bridge``   tags, values naming a bridge
car_bridge         1 if a bridge entity is a road for cars           as for bridge
=================  ================================================  ==========================

Every mask also drops the entities it leaves without tags (their presence alone would tell).
``bridge`` and ``car_bridge`` share one masked variant.

``geojepa tasks DATASET`` writes ``DATASET/tasks/``: ``labels.parquet`` (one row per tile), one
masked copy of the dataset per mask under ``masked/<mask>/`` (a complete dataset: manifest, shards,
vocabulary), and ``tasks.json`` with the label statistics per split.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from rich.progress import Progress
from rich.table import Table

from geojepa.atomic import atomic_folder
from geojepa.dataset.reader import TileDataset
from geojepa.dataset.schema import ENTITY_TYPE, SPLITS, TILES_DIR, VOCAB_NAME
from geojepa.dataset.writer import write_vocab
from geojepa.errors import GeoJepaError
from geojepa.tags import TagFilter

TASKS_DIR = "tasks"
LABELS_NAME = "labels.parquet"
TASKS_JSON = "tasks.json"
MASKED_DIR = "masked"
NO_ROAD_SPEED = 0.0
"""max_speed of a tile where no road carries a speed limit (a value no real road has)."""

MPH = 1.609
KNOTS = 1.852
ZONE_SPEEDS = {"urban": 50.0, "living_street": 20.0, "walk": 7.0, "school": 30.0}
"""Usual limits of implicit ``CC:zone`` values that are the same almost everywhere."""
RURAL_SPEEDS = {"AT": 100.0, "BE": 90.0, "CH": 80.0, "CZ": 90.0, "DE": 100.0, "DK": 80.0,
                "ES": 90.0, "FI": 80.0, "FR": 80.0, "GB": 96.5, "IT": 90.0, "NL": 80.0,
                "NO": 80.0, "PL": 90.0, "SE": 70.0, "US": 88.5}
"""``CC:rural`` limits by country."""

CAR_ROADS = (
    "motorway", "trunk", "primary", "secondary", "tertiary", "motorway_link", "trunk_link",
    "primary_link", "secondary_link", "tertiary_link", "unclassified", "residential",
    "living_street", "service", "road",
)
"""``highway`` values of roads that carry cars."""

Mask = Literal["building", "maxspeed", "signals", "bridge"]
MASKS: tuple[Mask, ...] = ("building", "maxspeed", "signals", "bridge")


@dataclass(frozen=True)
class Task:
    """A downstream task.

    Attributes:
        name: Label column.
        kind: ``regression`` (metric: MAE) or ``binary`` (metric: error rate).
        mask: The masked input variant that hides this label.
        count: Non-negative counts (probes may fit them in log space).
        unit: Unit of the label, for tables.
    """

    name: str
    kind: Literal["regression", "binary"]
    mask: Mask
    count: bool
    unit: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("building_count", "regression", "building", True, "buildings"),
        Task("max_speed", "regression", "maxspeed", False, "km/h"),
        Task("traffic_signals", "regression", "signals", True, "signals"),
        Task("bridge", "binary", "bridge", False, ""),
        Task("car_bridge", "binary", "bridge", False, ""),
    )
}

# Regular expressions (RE2 syntax, on "key=value" strings).
_BUILDING_ENTITY = r"^building="
_BUILDING_KEY = r"^building[^=]*="
_ROAD = r"^highway="
_SPEED_TAG = r"^maxspeed(:forward|:backward)?="
_SPEED_KEY = r"^[^=]*maxspeed[^=]*="
_SIGNAL_LABEL = r"^(highway|crossing)=traffic_signals$|^(traffic_signals|crossing:signals)="
_SIGNAL_TAG = r"signals"
_BRIDGE_LABEL = r"^bridge(:[^=]*)?=|^(man_made|type)=bridge$"
_BRIDGE_TAG = r"^(bridge|layer)[^=]*=|=.*bridge"
_CAR_ROAD = "^highway=(" + "|".join(CAR_ROADS) + ")$"
_NO_CARS = r"^(motor_vehicle|motorcar)=no$"
_NO = r"=no$"
LABEL_KEYS = ("building", "highway", "maxspeed", "crossing", "traffic_signals", "bridge",
              "man_made", "type", "layer")
"""Keys the labels are read from; the dataset must have kept them."""


@dataclass
class _Flat:
    """A record batch's entities flattened, with tag -> entity and entity -> tile indices."""

    entities: pa.StructArray
    tags: pa.StringArray
    tag_entity: NDArray[np.int64]
    entity_tile: NDArray[np.int64]
    num_tiles: int

    @classmethod
    def of(cls, batch: pa.RecordBatch) -> _Flat:
        column = batch.column("entities")
        flat = pc.list_flatten(column)
        tags = flat.field("tags")
        return cls(
            entities=flat,
            tags=pc.list_flatten(tags),
            tag_entity=pc.list_parent_indices(tags).to_numpy().astype(np.int64),
            entity_tile=pc.list_parent_indices(column).to_numpy().astype(np.int64),
            num_tiles=batch.num_rows,
        )

    def tag_match(self, pattern: str) -> NDArray[np.bool_]:
        """Which tags match a regular expression."""
        return pc.match_substring_regex(self.tags, pattern).to_numpy(zero_copy_only=False)

    def entity_any(self, tag_mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Entities with at least one tag in ``tag_mask``."""
        hits = np.bincount(self.tag_entity[tag_mask], minlength=len(self.entities))
        return hits > 0

    def tile_count(self, entity_mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        """Entities in ``entity_mask`` per tile."""
        return np.bincount(self.entity_tile[entity_mask], minlength=self.num_tiles)

    def is_node(self) -> NDArray[np.bool_]:
        """Entities that are OSM nodes."""
        return self.entities.field("osm_type").to_numpy() == 0


def parse_maxspeed(value: str) -> float | None:
    """A ``maxspeed`` value in km/h, or None when it names no number.

    Handles plain numbers (km/h), ``mph`` and ``knots`` units, ``;``-separated lists (their
    maximum) and the implicit zones of :data:`ZONE_SPEEDS` / :data:`RURAL_SPEEDS`.

    Examples:
        >>> parse_maxspeed("30 mph")
        48.27
        >>> parse_maxspeed("FI:urban")
        50.0
    """
    speeds = [s for s in (_parse_one(part) for part in value.split(";")) if s is not None]
    return max(speeds) if speeds else None


_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mph|knots|km/h|kmh|kph)?\s*$")


def _parse_one(text: str) -> float | None:
    m = _NUMBER.match(text.lower())
    if m:
        factor = {"mph": MPH, "knots": KNOTS}.get(m.group(2) or "", 1.0)
        return round(float(m.group(1)) * factor, 3)
    country, _, zone = text.strip().partition(":")
    zone = zone or country
    if zone == "rural":
        return RURAL_SPEEDS.get(country.upper())
    return ZONE_SPEEDS.get(zone)


def batch_labels(batch: pa.RecordBatch) -> dict[str, NDArray]:
    """Labels of every task for a record batch of tiles (needs the ``entities`` column).

    Returns:
        Task name -> one value per tile (float64 for max_speed, int64 otherwise).
    """
    f = _Flat.of(batch)
    no = f.tag_match(_NO)
    buildings = f.entity_any(f.tag_match(_BUILDING_ENTITY) & ~no)
    signals = f.entity_any(f.tag_match(_SIGNAL_LABEL) & ~no) & f.is_node()
    bridges = f.entity_any(f.tag_match(_BRIDGE_LABEL) & ~no)
    car_roads = f.entity_any(f.tag_match(_CAR_ROAD)) & ~f.entity_any(f.tag_match(_NO_CARS))
    return {
        "building_count": f.tile_count(buildings),
        "max_speed": _max_speed(f),
        "traffic_signals": f.tile_count(signals),
        "bridge": (f.tile_count(bridges) > 0).astype(np.int64),
        "car_bridge": (f.tile_count(bridges & car_roads) > 0).astype(np.int64),
    }


def _max_speed(f: _Flat) -> NDArray[np.float64]:
    roads = f.entity_any(f.tag_match(_ROAD))
    speed_tags = np.flatnonzero(f.tag_match(_SPEED_TAG) & roads[f.tag_entity])
    out = np.full(f.num_tiles, NO_ROAD_SPEED, np.float64)
    if len(speed_tags) == 0:
        return out
    values = pc.take(f.tags, pa.array(speed_tags)).to_pylist()
    cache: dict[str, float | None] = {}
    speeds = np.array(
        [np.nan if (s := cache.setdefault(v, parse_maxspeed(v.partition("=")[2]))) is None else s
         for v in values],
        np.float64,
    )
    ok = ~np.isnan(speeds)
    tiles = f.entity_tile[f.tag_entity[speed_tags[ok]]]
    np.maximum.at(out, tiles, speeds[ok])
    return out


def mask_batch(batch: pa.RecordBatch, mask: Mask) -> pa.RecordBatch:
    """Remove the tags and entities that bear a mask's labels (see the module table).

    Relation member indices are renumbered to the kept entities (members that were dropped are
    removed from the list) and ``n_entities`` is updated.

    Args:
        batch: Tiles with the dataset's columns.
        mask: Which labels to hide.
    """
    f = _Flat.of(batch)
    n = len(f.entities)
    drop_tags = np.zeros(len(f.tags), bool)
    drop_entities = np.zeros(n, bool)
    if mask == "building":
        drop_entities = f.entity_any(f.tag_match(_BUILDING_KEY))
    elif mask == "maxspeed":
        drop_tags = f.tag_match(_SPEED_KEY)
    elif mask == "signals":
        drop_tags = f.tag_match(_SIGNAL_TAG)
        drop_entities = f.entity_any(drop_tags) & (f.is_node() | _is_point(f))
    elif mask == "bridge":
        drop_tags = f.tag_match(_BRIDGE_TAG)
    else:
        raise ValueError(f"unknown mask {mask!r}; expected one of {MASKS}")
    had_tags = np.bincount(f.tag_entity, minlength=n) > 0
    kept_tag_count = np.bincount(f.tag_entity[~drop_tags], minlength=n)
    keep = ~drop_entities & ~(had_tags & (kept_tag_count == 0))
    keep_tags = ~drop_tags & keep[f.tag_entity]
    return _rebuild(batch, f, keep, keep_tags)


def _is_point(f: _Flat) -> NDArray[np.bool_]:
    return f.entities.field("kind").to_numpy() == 0


def _rebuild(
    batch: pa.RecordBatch, f: _Flat, keep: NDArray[np.bool_], keep_tags: NDArray[np.bool_]
) -> pa.RecordBatch:
    """The batch with only the ``keep`` entities and, of those, only the ``keep_tags`` tags."""
    n = len(f.entities)
    kept = np.flatnonzero(keep)
    tag_counts = np.bincount(f.tag_entity[keep_tags], minlength=n)[kept]
    tags = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(tag_counts)]), pa.int32()),
        f.tags.filter(pa.array(keep_tags)),
    )
    members = _renumber_members(f, keep)
    fields = []
    for field in ENTITY_TYPE:
        if field.name == "tags":
            fields.append(tags)
        elif field.name == "members":
            fields.append(members)
        else:
            fields.append(f.entities.field(field.name).take(pa.array(kept)))
    entities = pa.StructArray.from_arrays(fields, fields=list(ENTITY_TYPE))
    per_tile = np.bincount(f.entity_tile[keep], minlength=f.num_tiles)
    offsets = pa.array(np.concatenate([[0], np.cumsum(per_tile)]), pa.int32())
    columns = {name: batch.column(name) for name in batch.schema.names}
    columns["entities"] = pa.ListArray.from_arrays(offsets, entities, type=pa.list_(ENTITY_TYPE))
    columns["n_entities"] = pa.array(per_tile, pa.int32())
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=batch.schema)


def _renumber_members(f: _Flat, keep: NDArray[np.bool_]) -> pa.ListArray:
    """Members of the kept entities, as indices among their tile's kept entities."""
    members = f.entities.field("members")
    values = pc.list_flatten(members).to_numpy().astype(np.int64)
    owner = pc.list_parent_indices(members).to_numpy().astype(np.int64)
    tile_start = np.searchsorted(f.entity_tile, np.arange(f.num_tiles))
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    new_local = kept_before[1:] - 1 - kept_before[tile_start][f.entity_tile]
    target = tile_start[f.entity_tile[owner]] + values
    ok = keep[owner] & keep[target]
    counts = np.bincount(owner[ok], minlength=len(keep))[keep]
    return pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32()),
        pa.array(new_local[target[ok]], pa.int32()),
    )


@dataclass
class TaskSummary:
    """What :func:`build_tasks` wrote.

    Attributes:
        folder: The tasks folder.
        tiles: Tiles labelled.
        stats: Split -> task -> statistics (mean, median, min, max, and for binary tasks the
            positive count; for max_speed also the tiles without a road speed).
        removed: Mask -> tags and entities it removed.
    """

    folder: Path
    tiles: int
    stats: dict[str, dict[str, dict[str, float]]]
    removed: dict[str, dict[str, int]]


def tasks_folder(dataset: str | Path) -> Path:
    """Where ``geojepa tasks`` writes the tasks of a dataset."""
    return Path(dataset) / TASKS_DIR


def build_tasks(
    dataset: str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TaskSummary:
    """Compute every task's labels and write the masked variants of a dataset.

    Args:
        dataset: A ``geojepa prepare`` dataset.
        out: Tasks folder (default ``DATASET/tasks``).
        overwrite: Replace an existing tasks folder.
        progress: Show progress bars.

    Raises:
        GeoJepaError: Not a dataset, or its tag exclusion list hides a label-bearing key.
    """
    ds = TileDataset(dataset)
    _check_label_keys(ds)
    out = tasks_folder(dataset) if out is None else Path(out)
    with atomic_folder(out, overwrite) as tmp, Progress(disable=not progress) as bar:
        work = bar.add_task("labels + masked inputs", total=ds.num_tiles())
        labels: list[pa.RecordBatch] = []
        writers = {m: _MaskedWriter(ds, tmp / MASKED_DIR / m, m) for m in MASKS}
        for shard in ds.shard_paths:
            source = pq.ParquetFile(shard)
            for w in writers.values():
                w.open_shard(shard.name, source.schema_arrow)
            for batch in source.iter_batches(batch_size=_row_group_size(source)):
                labels.append(_label_batch(batch))
                for w in writers.values():
                    w.write(mask_batch(batch, w.mask))
                bar.advance(work, batch.num_rows)
        table = pa.Table.from_batches(labels)
        pq.write_table(table, tmp / LABELS_NAME, compression="zstd")
        removed = {m: w.finish() for m, w in writers.items()}
        stats = label_stats(table)
        info = {"dataset": str(Path(dataset).resolve()), "tasks": {k: asdict(t) for k, t in TASKS.items()},
                "no_road_speed": NO_ROAD_SPEED, "stats": stats, "removed": removed}
        (tmp / TASKS_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return TaskSummary(out, table.num_rows, stats, removed)


def _check_label_keys(ds: TileDataset) -> None:
    excluded = ds.manifest.settings.get("excluded_tags", ())
    tag_filter = TagFilter(excluded)
    hidden = [k for k in LABEL_KEYS if not tag_filter.keep(k)]
    if hidden:
        raise GeoJepaError(
            f"the dataset was prepared excluding {', '.join(hidden)}; labels need those keys",
            ds.folder,
        )


def _row_group_size(shard: pq.ParquetFile) -> int:
    meta = shard.metadata
    return max(1, meta.row_group(0).num_rows) if meta.num_row_groups else 1


def _label_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    base = {name: batch.column(name) for name in ("z", "x", "y", "group_x", "group_y", "split")}
    labels = {k: pa.array(v) for k, v in batch_labels(batch).items()}
    return pa.RecordBatch.from_pydict({**base, **labels})


class _MaskedWriter:
    """Writes one masked copy of a dataset, shard by shard, and its manifest and vocabulary."""

    def __init__(self, ds: TileDataset, folder: Path, mask: Mask) -> None:
        self.ds, self.folder, self.mask = ds, folder, mask
        (folder / TILES_DIR).mkdir(parents=True)
        self.writer: pq.ParquetWriter | None = None
        self.vocab: Counter[str] = Counter()
        self.entities = dict.fromkeys(SPLITS, 0)

    def open_shard(self, name: str, schema: pa.Schema) -> None:
        """Start the masked copy of the source shard ``name``."""
        self._close()
        self.writer = pq.ParquetWriter(self.folder / TILES_DIR / name, schema, compression="zstd")

    def write(self, batch: pa.RecordBatch) -> None:
        """Append a masked batch to the open shard and count its tags and entities."""
        assert self.writer is not None
        self.writer.write_batch(batch)
        tags = pc.list_flatten(pc.list_flatten(batch.column("entities")).field("tags"))
        counts = pc.value_counts(tags)
        self.vocab.update(dict(zip(counts.field("values").to_pylist(),
                                   counts.field("counts").to_pylist(), strict=True)))
        split = batch.column("split").to_numpy(zero_copy_only=False)
        n = batch.column("n_entities").to_numpy()
        for s in SPLITS:
            self.entities[s] += int(n[split == s].sum())

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> dict[str, int]:
        """Close the last shard, write manifest and vocabulary; return what was removed."""
        self._close()
        write_vocab(self.folder / VOCAB_NAME, self.vocab)
        m = self.ds.manifest
        before_entities = sum(c["entities"] for c in m.counts.values())
        before_tags = int(self.ds.vocabulary().column("count").to_numpy().sum())
        counts = {s: {"tiles": m.counts[s]["tiles"], "entities": self.entities[s]} for s in SPLITS}
        removed = {
            "entities": before_entities - sum(self.entities.values()),
            "tags": before_tags - sum(self.vocab.values()),
        }
        extra = {**m.extra, "masked": {"mask": self.mask, "source": str(self.ds.folder.resolve()),
                                       "removed": removed}}
        replace(m, counts=counts, vocab_size=len(self.vocab), extra=extra).save(self.folder)
        return removed


def label_stats(labels: pa.Table) -> dict[str, dict[str, dict[str, float]]]:
    """Statistics of every label per split (and over all tiles, as ``all``)."""
    split = labels.column("split").to_numpy(zero_copy_only=False)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in (*SPLITS, "all"):
        rows = np.ones(len(split), bool) if name == "all" else split == name
        if not rows.any():
            continue
        out[name] = {}
        for task in TASKS.values():
            v = labels.column(task.name).to_numpy()[rows].astype(np.float64)
            s = {"tiles": int(rows.sum()), "mean": float(v.mean()), "median": float(np.median(v)),
                 "min": float(v.min()), "max": float(v.max())}
            if task.kind == "binary":
                s["positive"] = int(v.sum())
            if task.name == "max_speed":
                s["no_road_speed"] = int((v == NO_ROAD_SPEED).sum())
            out[name][task.name] = s
    return out


def load_labels(dataset: str | Path, tasks_dir: str | Path | None = None) -> pa.Table:
    """The labels written by :func:`build_tasks` (one row per tile).

    Raises:
        GeoJepaError: ``geojepa tasks`` has not been run for the dataset.
    """
    folder = tasks_folder(dataset) if tasks_dir is None else Path(tasks_dir)
    path = folder / LABELS_NAME
    if not path.is_file():
        raise GeoJepaError("no task labels; run `geojepa tasks` on the dataset first", folder)
    return pq.read_table(path)


def masked_dataset(dataset: str | Path, task: str, tasks_dir: str | Path | None = None) -> Path:
    """The masked variant of a dataset for a task."""
    folder = tasks_folder(dataset) if tasks_dir is None else Path(tasks_dir)
    return folder / MASKED_DIR / TASKS[task].mask


def select_tasks(names: Sequence[str] | None) -> list[Task]:
    """Tasks by name (all when None).

    Raises:
        GeoJepaError: An unknown task name.
    """
    if not names:
        return list(TASKS.values())
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise GeoJepaError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    return [TASKS[n] for n in names]


def stats_table(summary: TaskSummary) -> Table:
    """Label statistics per split as a rich table (``geojepa tasks`` prints it)."""
    table = Table(title=f"task labels in {summary.folder} ({summary.tiles:,} tiles)")
    for col in ("task", "split", "tiles", "mean", "median", "min", "max", "note"):
        table.add_column(col, justify="left" if col in ("task", "split", "note") else "right")
    for task in TASKS.values():
        for split, per_task in summary.stats.items():
            s = per_task[task.name]
            note = ""
            if task.kind == "binary":
                note = f"{s['positive']} positive"
            elif task.name == "max_speed":
                note = f"{s['no_road_speed']} without a road speed (= {NO_ROAD_SPEED:g})"
            table.add_row(task.name, split, f"{s['tiles']:,}", f"{s['mean']:.3g}",
                          f"{s['median']:g}", f"{s['min']:g}", f"{s['max']:g}", note)
        table.add_section()
    return table
