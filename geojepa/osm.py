"""Streaming OSM reading with pyosmium: objects with kept tags become entity records.

One file is read in two streaming passes:

1. relations only, to learn which ways and nodes are members of relations we keep;
2. everything, with a node-location index, yielding :class:`EntityBatch` es of entity records.

Untagged nodes are dropped on the C++ side (``EmptyTagFilter``), so the Python loop only sees
tagged nodes, ways and tagged relations. Geometry is carried as WKB made by pyosmium's
``WKBFactory`` and decoded later, vectorised, by :mod:`geojepa.tiling`.

Entity kinds (SPEC section 2): a tagged node is a *point*; an open way a *line*; a closed way a
*polygon* unless its tags describe something linear (a closed road, fence or stream loop, see
:func:`way_is_area`); a multipolygon relation a *polygon* with holes, assembled from its member
ways with GEOS ``BuildArea``; every other relation a *relation* whose geometry is the collection
of its members' geometries and which references its members.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import osmium
import shapely

from geojepa.errors import GeoJepaError
from geojepa.tags import TagFilter

NODE, WAY, RELATION = 0, 1, 2
"""OSM object types as stored."""
OSM_TYPE_NAMES = ("node", "way", "relation")

POINT, LINE, POLYGON, GROUP = 0, 1, 2, 3
"""Entity kinds as stored: point, line, polygon, relation (a group of members)."""
KIND_NAMES = ("point", "line", "polygon", "relation")

_TYPE_CODES = {"n": NODE, "w": WAY, "r": RELATION}

MULTIPOLYGON_TYPES = frozenset({"multipolygon", "boundary"})
"""Relation types assembled into polygons with holes."""

_LINEAR_KEYS = frozenset({"highway", "barrier", "railway", "waterway", "aerialway", "route"})
_LINEAR_VALUES = {
    "natural": frozenset({"coastline", "cliff", "ridge", "arete", "tree_row"}),
    "power": frozenset({"line", "minor_line", "cable"}),
    "man_made": frozenset({"embankment", "pipeline", "dyke"}),
}
_AREA_VALUES = {"waterway": frozenset({"riverbank", "dock", "boatyard"})}

SIZE_FOR_FILE_INDEX = 4 << 30
"""PBF size from which node locations are kept in a file-backed dense array, not in memory."""


def pack_ref(osm_type: int, osm_id: int) -> int:
    """Pack an OSM object reference into one signed 64-bit integer (``id * 4 + type``)."""
    return osm_id * 4 + osm_type


def way_is_area(closed: bool, tags: osmium.osm.TagList) -> bool:
    """Decide whether a way is a polygon (ours; mirrors common OSM area rules).

    A way is an area when it is closed, ``area`` is not ``no``, and either ``area=yes`` or none
    of its tags describes a linear feature (``highway``, ``barrier``, ``railway``, most
    ``waterway``, ``natural=coastline``, ``power=line``...).
    """
    if not closed:
        return False
    area = tags.get("area")
    if area == "no":
        return False
    if area == "yes":
        return True
    for key in _LINEAR_KEYS:
        value = tags.get(key)
        if value is not None and value not in _AREA_VALUES.get(key, ()):
            return False
    for key, values in _LINEAR_VALUES.items():
        if tags.get(key) in values:
            return False
    return True


@dataclass
class EntityBatch:
    """Columnar entity records, ready to be shipped to a worker process.

    Nodes carry ``lon``/``lat`` and ``wkb = None``; every other record carries WKB (lon/lat).
    ``members`` holds packed references (:func:`pack_ref`) for relations, else is empty.
    """

    osm_type: list[int] = field(default_factory=list)
    osm_id: list[int] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    wkb: list[bytes | str | None] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    members: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.osm_id)

    def add(
        self,
        osm_type: int,
        osm_id: int,
        kind: int,
        tags: list[str],
        wkb: bytes | str | None = None,
        lon: float = float("nan"),
        lat: float = float("nan"),
        members: list[int] | None = None,
    ) -> None:
        """Append one record."""
        self.osm_type.append(osm_type)
        self.osm_id.append(osm_id)
        self.kind.append(kind)
        self.tags.append(tags)
        self.wkb.append(wkb)
        self.lon.append(lon)
        self.lat.append(lat)
        self.members.append(members or [])


@dataclass
class ReadStats:
    """Counts gathered while reading one file."""

    nodes: int = 0
    ways: int = 0
    relations: int = 0
    no_kept_tags: int = 0
    no_geometry: int = 0
    broken_multipolygons: int = 0


def location_storage(path: Path) -> str:
    """Choose a node-location index suited to the file size.

    ``flex_mem`` (sparse for small extracts, dense for large ones, in memory) up to
    :data:`SIZE_FOR_FILE_INDEX`; beyond that a dense array in a temporary file beside the
    input, so that planet-scale files do not need the index in RAM.
    """
    size = path.stat().st_size
    if size < SIZE_FOR_FILE_INDEX:
        return "flex_mem"
    return f"dense_file_array,{path.with_name(path.name + f'.nodes-{os.getpid()}.tmp')}"


def _relation_members(path: Path, tag_filter: TagFilter) -> tuple[set[int], set[int]]:
    """First pass: ids of ways and nodes that are members of relations with kept tags.

    Python sets, not ``osmium.IdTracker``: the tracker's bitmaps grow with the largest id and
    cost far more time and memory for the scattered ids of real extracts.
    """
    ways: set[int] = set()
    nodes: set[int] = set()
    processor = osmium.FileProcessor(str(path), osmium.osm.RELATION).with_filter(
        osmium.filter.EmptyTagFilter()
    )
    for rel in processor:
        if not any(tag_filter.keep(t.k) for t in rel.tags if t.k != "type"):
            continue
        for m in rel.members:
            if m.type == "w":
                ways.add(m.ref)
            elif m.type == "n":
                nodes.add(m.ref)
    return ways, nodes


def _way_wkb(factory: osmium.geom.WKBFactory, way: osmium.osm.Way) -> str | bytes | None:
    """WKB linestring of a way; ways with nodes outside the extract keep their valid nodes."""
    try:
        return factory.create_linestring(way)
    except osmium.InvalidLocationError:
        coords = [(n.lon, n.lat) for n in way.nodes if n.location.valid()]
    except RuntimeError:  # fewer than two distinct locations
        return None
    if len(coords) < 2:
        return None
    return shapely.to_wkb(shapely.linestrings(coords))


def _relation_geometry(
    members: list[tuple[str, int]],
    is_multipolygon: bool,
    way_geoms: dict[int, str | bytes],
    node_points: dict[int, tuple[float, float]],
) -> tuple[shapely.Geometry | None, bool]:
    """Geometry of a relation from its members; returns ``(geometry, assembled_as_polygon)``."""
    lines = [way_geoms[ref] for kind, ref in members if kind == "w" and ref in way_geoms]
    parts = list(shapely.from_wkb(lines)) if lines else []
    if is_multipolygon and parts:
        area = shapely.build_area(shapely.multilinestrings(parts))
        if not area.is_empty and area.area > 0:
            return area, True
    parts += [shapely.Point(node_points[ref]) for kind, ref in members if kind == "n" and ref in node_points]
    if not parts:
        return None, False
    return shapely.GeometryCollection(parts), False


def read_entities(
    path: Path,
    tag_filter: TagFilter,
    batch_size: int = 20_000,
    stats: ReadStats | None = None,
) -> Iterator[EntityBatch]:
    """Stream the entities of one OSM file (``.osm.pbf``, ``.osm``, ``.osm.bz2``...) in batches.

    Args:
        path: The OSM file.
        tag_filter: Which tags are kept; objects left without kept tags are dropped.
        batch_size: Records per yielded batch.
        stats: Filled with counts while reading, when given.

    Yields:
        Batches of entity records in file order.

    Raises:
        GeoJepaError: The file is missing, unreadable or corrupt.
    """
    stats = stats if stats is not None else ReadStats()
    if not path.is_file():
        raise GeoJepaError("OSM file not found", path)
    storage = location_storage(path)
    try:
        member_ways, member_nodes = _relation_members(path, tag_filter)
        yield from _read_main_pass(
            path, storage, tag_filter, batch_size, stats, member_ways, member_nodes
        )
    except (RuntimeError, ValueError, OSError) as err:
        raise GeoJepaError(f"cannot read OSM data ({err})", path) from err
    finally:
        if storage.startswith("dense_file_array,"):
            Path(storage.split(",", 1)[1]).unlink(missing_ok=True)


def _read_main_pass(
    path: Path,
    storage: str,
    tag_filter: TagFilter,
    batch_size: int,
    stats: ReadStats,
    member_ways: set[int],
    member_nodes: set[int],
) -> Iterator[EntityBatch]:
    """Second pass over the file: every tagged object becomes a record."""
    factory = osmium.geom.WKBFactory()
    way_geoms: dict[int, str | bytes] = {}
    node_points: dict[int, tuple[float, float]] = {}
    keep = tag_filter.keep
    batch = EntityBatch()
    processor = (
        osmium.FileProcessor(str(path))
        .with_locations(storage)
        .with_filter(osmium.filter.EmptyTagFilter().enable_for(osmium.osm.NODE | osmium.osm.RELATION))
    )
    for obj in processor:
        if obj.is_node():
            stats.nodes += 1
            loc = obj.location
            if not loc.valid():
                stats.no_geometry += 1
                continue
            if obj.id in member_nodes:
                node_points[obj.id] = (loc.lon, loc.lat)
            tags = [f"{t.k}={t.v}" for t in obj.tags if keep(t.k)]
            if not tags:
                stats.no_kept_tags += 1
                continue
            batch.add(NODE, obj.id, POINT, tags, lon=loc.lon, lat=loc.lat)
        elif obj.is_way():
            stats.ways += 1
            tags = [f"{t.k}={t.v}" for t in obj.tags if keep(t.k)]
            is_member = obj.id in member_ways
            if not tags and not is_member:
                continue
            wkb = _way_wkb(factory, obj)
            if wkb is None:
                stats.no_geometry += 1
                continue
            if is_member:
                way_geoms[obj.id] = wkb
            if not tags:
                continue
            closed = len(obj.nodes) >= 4 and obj.nodes[0].ref == obj.nodes[-1].ref
            kind = POLYGON if way_is_area(closed, obj.tags) else LINE
            batch.add(WAY, obj.id, kind, tags, wkb=wkb)
        elif obj.is_relation():
            stats.relations += 1
            rel_type = obj.tags.get("type")
            is_mp = rel_type in MULTIPOLYGON_TYPES
            tags = [
                f"{t.k}={t.v}"
                for t in obj.tags
                if keep(t.k) and not (is_mp and t.k == "type")
            ]
            if all(t.startswith("type=") for t in tags):  # nothing but the relation type
                stats.no_kept_tags += 1
                continue
            refs = [(m.type, m.ref) for m in obj.members]
            geom, assembled = _relation_geometry(refs, is_mp, way_geoms, node_points)
            if geom is None:
                stats.no_geometry += 1
                continue
            if is_mp and not assembled:
                stats.broken_multipolygons += 1
            kind = POLYGON if assembled else GROUP
            packed = [] if assembled else [pack_ref(_TYPE_CODES[t], ref) for t, ref in refs]
            batch.add(RELATION, obj.id, kind, tags, wkb=shapely.to_wkb(geom), members=packed)
        if len(batch) >= batch_size:
            yield batch
            batch = EntityBatch()
    if len(batch):
        yield batch
