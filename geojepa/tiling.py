"""Cut entity geometries into per-tile pieces with their tile-frame box and box-frame shape.

Everything here is vectorised over a batch of entities with shapely 2 and numpy. An entity whose
bounds fall in one tile is kept whole; one that spans several tiles is assigned to tiles by a
quadtree descent from a coarse zoom (so a long diagonal road does not test every tile of its
bounding box, and a huge park inside which a whole cell lies gets that cell's tiles without any
clipping), then clipped to each tile it touches. Every piece keeps the full tags of its entity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import shapely
from numpy.typing import NDArray

from geojepa.osm import LINE, NODE, POLYGON, WAY, EntityBatch
from geojepa.tiles import (
    MERCATOR_HALF,
    lonlat_to_mercator,
    mercator_to_lonlat,
    minimum_rotated_boxes,
    tile_span_mercator,
    to_box_frame,
)

MIN_BOX_SIDE_M = 1.5
"""Side of the square box given to points and sub-metre objects, in ground metres."""
SHAPE_TOLERANCE_M = 0.1
"""Simplification tolerance of box-frame shapes, in ground metres."""

PIECE_SCHEMA = pa.schema(
    [
        ("tile_x", pa.int32()),
        ("tile_y", pa.int32()),
        ("osm_type", pa.int8()),
        ("osm_id", pa.int64()),
        ("kind", pa.int8()),
        ("tags", pa.list_(pa.string())),
        ("geometry", pa.binary()),
        ("local", pa.binary()),
        ("box", pa.list_(pa.float32(), 8)),
        ("shape_xy", pa.list_(pa.float32())),
        ("shape_parts", pa.list_(pa.int32())),
        ("members", pa.list_(pa.int64())),
    ]
)
"""One row per (entity, tile): the intermediate records of ``prepare``."""

_MULTI_TYPES = (4, 5, 6, 7)  # MultiPoint, MultiLineString, MultiPolygon, GeometryCollection


@dataclass(frozen=True)
class TileGrid:
    """The tiles a dataset is cut into.

    Attributes:
        zoom: Tile zoom.
        x_range: Inclusive ``(min, max)`` tile columns allowed (the ``--bbox``), or None.
        y_range: Inclusive ``(min, max)`` tile rows allowed, or None.
        max_entity_tiles: Entities that would cover more tiles are dropped (whole-country
            boundaries and the like).
    """

    zoom: int
    x_range: tuple[int, int] | None = None
    y_range: tuple[int, int] | None = None
    max_entity_tiles: int = 16_384


@dataclass
class PieceStats:
    """Counts from cutting one batch."""

    entities: int = 0
    pieces: int = 0
    outside: int = 0
    oversized: int = 0


def entity_geometries(batch: EntityBatch) -> tuple[NDArray[np.object_], NDArray[np.int8]]:
    """Decode a batch's geometries in lon/lat; closed area ways become polygons.

    Returns:
        Geometries and kinds; an area way whose ring cannot be closed (too few nodes inside the
        extract) is demoted to a line.
    """
    n = len(batch)
    geoms = np.empty(n, dtype=object)
    osm_type = np.asarray(batch.osm_type, dtype=np.int8)
    kind = np.asarray(batch.kind, dtype=np.int8)
    is_node = osm_type == NODE
    if is_node.any():
        geoms[is_node] = shapely.points(
            np.asarray(batch.lon)[is_node], np.asarray(batch.lat)[is_node]
        )
    rest = np.flatnonzero(~is_node)
    if len(rest):
        geoms[rest] = shapely.from_wkb([batch.wkb[i] for i in rest])
    ring_ways = np.flatnonzero((osm_type == WAY) & (kind == POLYGON))
    if len(ring_ways):
        geoms[ring_ways] = _rings_to_polygons(geoms[ring_ways])
        kind = kind.copy()
        kind[ring_ways[shapely.get_dimensions(geoms[ring_ways]) < 2]] = LINE
    return geoms, kind


def _rings_to_polygons(lines: NDArray[np.object_]) -> NDArray[np.object_]:
    """Turn closed linestrings into valid polygons; too short rings stay lines."""
    out = lines.copy()
    counts = shapely.get_num_coordinates(lines)
    ok = np.flatnonzero(counts >= 4)
    if len(ok) == 0:
        return out
    coords, index = shapely.get_coordinates(lines[ok], return_index=True)
    polys = shapely.polygons(shapely.linearrings(coords, indices=index))
    invalid = ~shapely.is_valid(polys)
    if invalid.any():
        polys[invalid] = shapely.make_valid(polys[invalid], method="structure", keep_collapsed=False)
    good = ~shapely.is_empty(polys) & (shapely.area(polys) > 0)
    out[ok[good]] = polys[good]
    return out


def _to_mercator(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    return shapely.transform(geoms, lambda c: np.column_stack(lonlat_to_mercator(c[:, 0], c[:, 1])))


def _tile_cells(
    geoms: NDArray[np.object_], grid: TileGrid
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """Assign merc geometries to the tiles they touch.

    Returns:
        ``(entity, x, y, full)``: one row per (entity, tile); ``full`` marks tiles that lie
        entirely inside a polygonal entity (no clipping needed).
    """
    zoom = grid.zoom
    span = tile_span_mercator(zoom)
    bounds = shapely.bounds(geoms)
    x0 = np.floor((bounds[:, 0] + MERCATOR_HALF) / span).astype(np.int64)
    x1 = np.floor((bounds[:, 2] + MERCATOR_HALF) / span).astype(np.int64)
    y0 = np.floor((MERCATOR_HALF - bounds[:, 3]) / span).astype(np.int64)
    y1 = np.floor((MERCATOR_HALF - bounds[:, 1]) / span).astype(np.int64)
    single = (x0 == x1) & (y0 == y1)
    ent = [np.flatnonzero(single)]
    xs = [x0[single]]
    ys = [y0[single]]
    full = [np.zeros(int(single.sum()), dtype=bool)]

    multi = np.flatnonzero(~single)
    if len(multi):
        extent = np.maximum(x1 - x0, y1 - y0)[multi] + 1
        levels = np.ceil(np.log2(extent)).astype(np.int64)
        shapely.prepare(geoms[multi])
        cand_e, cand_z = multi, zoom - levels
        cand_x, cand_y = x0[multi] >> levels, y0[multi] >> levels
        # Start with the 2x2 block of cells at the coarse level that covers the bounds.
        offs = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
        cand_e = np.repeat(cand_e, 4)
        cand_z = np.repeat(cand_z, 4)
        cand_x = np.repeat(cand_x, 4) + np.tile(offs[:, 0], len(multi))
        cand_y = np.repeat(cand_y, 4) + np.tile(offs[:, 1], len(multi))
        polygonal = shapely.get_dimensions(geoms) == 2
        while len(cand_e):
            shift = zoom - cand_z
            keep = _in_grid(cand_x, cand_y, shift, grid)
            cand_e, cand_z, cand_x, cand_y, shift = (
                a[keep] for a in (cand_e, cand_z, cand_x, cand_y, shift)
            )
            cell_span = span * (1 << shift).astype(np.float64)
            xmin = -MERCATOR_HALF + cand_x * cell_span
            ymax = MERCATOR_HALF - cand_y * cell_span
            cells = shapely.box(xmin, ymax - cell_span, xmin + cell_span, ymax)
            hit = shapely.intersects(geoms[cand_e], cells)
            inside = np.zeros(len(cand_e), dtype=bool)
            poly = hit & polygonal[cand_e]
            inside[poly] = shapely.contains_properly(geoms[cand_e[poly]], cells[poly])
            done = hit & (inside | (shift == 0))
            for e, x, y, s, f in zip(
                cand_e[done], cand_x[done], cand_y[done], shift[done], inside[done], strict=True
            ):
                n = 1 << int(s)
                gx, gy = np.meshgrid(np.arange(x * n, x * n + n), np.arange(y * n, y * n + n))
                ent.append(np.full(n * n, e))
                xs.append(gx.ravel())
                ys.append(gy.ravel())
                full.append(np.full(n * n, bool(f)))
            split = hit & ~done
            cand_e = np.repeat(cand_e[split], 4)
            cand_z = np.repeat(cand_z[split] + 1, 4)
            cand_x = np.repeat(cand_x[split] * 2, 4) + np.tile(offs[:, 0], int(split.sum()))
            cand_y = np.repeat(cand_y[split] * 2, 4) + np.tile(offs[:, 1], int(split.sum()))
    e, x, y, f = (np.concatenate(a) for a in (ent, xs, ys, full))
    keep = _in_grid(x, y, np.zeros_like(x), grid)
    return e[keep], x[keep], y[keep], f[keep]


def _in_grid(
    x: NDArray[np.int64], y: NDArray[np.int64], shift: NDArray[np.int64], grid: TileGrid
) -> NDArray[np.bool_]:
    """Cells (at ``zoom - shift``) that overlap the allowed tile ranges."""
    keep = np.ones(len(x), dtype=bool)
    for coord, rng in ((x, grid.x_range), (y, grid.y_range)):
        if rng is not None:
            lo = coord << shift
            hi = ((coord + 1) << shift) - 1
            keep &= (hi >= rng[0]) & (lo <= rng[1])
    return keep


def _clean_pieces(
    pieces: NDArray[np.object_], kinds: NDArray[np.int8]
) -> NDArray[np.object_]:
    """Drop what clipping left of lower dimension (a polygon touching a tile edge...)."""
    out = pieces.copy()
    dims = np.where(kinds == POLYGON, 2, np.where(kinds == LINE, 1, 0))
    mixed = np.flatnonzero(shapely.get_type_id(pieces) == 7)
    for i in mixed:
        if dims[i] == 0:
            continue
        sub = shapely.get_parts(pieces[i])
        parts = sub[shapely.get_dimensions(sub) >= dims[i]]
        out[i] = shapely.union_all(parts) if len(parts) else shapely.Point()
    measure = np.where(dims == 2, shapely.area(out), np.where(dims == 1, shapely.length(out), 1.0))
    out[shapely.is_empty(out) | (measure <= 0)] = None
    return out


def _simple_parts(
    geoms: NDArray[np.object_],
) -> tuple[NDArray[np.object_], NDArray[np.int64]]:
    """Explode geometries into points, linestrings and linear rings, in order per geometry."""
    parts = geoms
    owner = np.arange(len(geoms))
    while True:
        multi = np.isin(shapely.get_type_id(parts), _MULTI_TYPES)
        if not multi.any():
            break
        sub, idx = shapely.get_parts(parts, return_index=True)
        parts, owner = sub, owner[idx]
    is_poly = shapely.get_type_id(parts) == 3
    if is_poly.any():
        rings, ridx = shapely.get_rings(parts[is_poly], return_index=True)
        poly_pos = np.flatnonzero(is_poly)
        order_key = np.concatenate([np.flatnonzero(~is_poly), poly_pos[ridx]])
        parts = np.concatenate([parts[~is_poly], rings])
        owner = np.concatenate([owner[~is_poly], owner[poly_pos[ridx]]])
        order = np.lexsort((np.arange(len(parts)), order_key))
        parts, owner = parts[order], owner[order]
    return parts, owner


def _shapes(
    local: NDArray[np.object_], boxes: NDArray[np.float64], tolerance: NDArray[np.float64]
) -> tuple[pa.Array, pa.Array]:
    """Box-frame vertex lists and part offsets of each piece."""
    n = len(local)
    simple = shapely.simplify(local, tolerance, preserve_topology=True)
    parts, owner = _simple_parts(simple)
    counts = shapely.get_num_coordinates(parts)
    coords, cidx = shapely.get_coordinates(parts, return_index=True)
    xy = to_box_frame(coords, owner[cidx], boxes).astype(np.float32)
    per_piece = np.bincount(owner, weights=counts, minlength=n).astype(np.int64)
    xy_offsets = np.concatenate([[0], np.cumsum(per_piece)]) * 2
    shape_xy = pa.ListArray.from_arrays(pa.array(xy_offsets, pa.int32()), pa.array(xy.ravel()))
    # Part starts relative to their piece.
    part_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    piece_start = np.concatenate([[0], np.cumsum(per_piece)[:-1]])
    rel_start = (part_start - piece_start[owner]).astype(np.int32)
    parts_per_piece = np.bincount(owner, minlength=n)
    part_offsets = np.concatenate([[0], np.cumsum(parts_per_piece)]).astype(np.int32)
    shape_parts = pa.ListArray.from_arrays(pa.array(part_offsets), pa.array(rel_start))
    return shape_xy, shape_parts


def cut_batch(batch: EntityBatch, grid: TileGrid, stats: PieceStats | None = None) -> pa.Table:
    """Cut a batch of entities into per-tile pieces.

    Args:
        batch: Entity records from :func:`geojepa.osm.read_entities`.
        grid: The tiles to cut into.
        stats: Updated with counts, when given.

    Returns:
        A table with :data:`PIECE_SCHEMA`, one row per (entity, tile) piece.
    """
    stats = stats if stats is not None else PieceStats()
    stats.entities += len(batch)
    lonlat_geoms, batch_kinds = entity_geometries(batch)
    geoms = _to_mercator(lonlat_geoms)
    valid = ~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)
    ent, tx, ty, full = _tile_cells(np.where(valid, geoms, shapely.Point()), grid)
    # Drop the degenerate placeholder assignments of invalid geometries.
    ok = valid[ent]
    ent, tx, ty, full = ent[ok], tx[ok], ty[ok], full[ok]
    per_entity = np.bincount(ent, minlength=len(batch))
    oversized = per_entity > grid.max_entity_tiles
    stats.oversized += int(oversized.sum())
    stats.outside += int((valid & (per_entity == 0)).sum())
    keep = ~oversized[ent]
    ent, tx, ty, full = ent[keep], tx[keep], ty[keep], full[keep]

    span = tile_span_mercator(grid.zoom)
    xmin = -MERCATOR_HALF + tx * span
    ymin = MERCATOR_HALF - (ty + 1) * span
    tile_boxes = shapely.box(xmin, ymin, xmin + span, ymin + span)
    kinds = batch_kinds[ent]
    bounds = shapely.bounds(geoms[ent])
    inside_tile = (
        (bounds[:, 0] >= xmin) & (bounds[:, 2] <= xmin + span)
        & (bounds[:, 1] >= ymin) & (bounds[:, 3] <= ymin + span)
    )
    pieces = geoms[ent].copy()
    pieces[full] = tile_boxes[full]
    clip = ~inside_tile & ~full
    if clip.any():
        pieces[clip] = shapely.intersection(geoms[ent[clip]], tile_boxes[clip])
        pieces = _clean_pieces(pieces, kinds)
    good = ~shapely.is_missing(pieces)
    ent, tx, ty, pieces, kinds = ent[good], tx[good], ty[good], pieces[good], kinds[good]
    xmin, ymin = xmin[good], ymin[good]
    stats.pieces += len(ent)

    # Tile frame: metric, x east, y north, tile = [0, 1]^2.
    _, cidx = shapely.get_coordinates(pieces, return_index=True)
    origin = np.column_stack([xmin, ymin])[cidx]
    local = shapely.transform(pieces, lambda c: (c - origin) / span)
    lonlat = shapely.transform(pieces, lambda c: np.column_stack(mercator_to_lonlat(c[:, 0], c[:, 1])))
    _, centre_lat = mercator_to_lonlat(xmin + span / 2, ymin + span / 2)
    ground = span * np.cos(np.radians(centre_lat))  # metres per frame unit
    boxes = minimum_rotated_boxes(local, MIN_BOX_SIDE_M / ground)
    shape_xy, shape_parts = _shapes(local, boxes, SHAPE_TOLERANCE_M / ground)

    members = [batch.members[i] for i in ent]
    return pa.table(
        {
            "tile_x": pa.array(tx, pa.int32()),
            "tile_y": pa.array(ty, pa.int32()),
            "osm_type": pa.array(np.asarray(batch.osm_type, dtype=np.int8)[ent]),
            "osm_id": pa.array(np.asarray(batch.osm_id, dtype=np.int64)[ent]),
            "kind": pa.array(kinds),
            "tags": pa.array([batch.tags[i] for i in ent], pa.list_(pa.string())),
            "geometry": pa.array(shapely.to_wkb(lonlat), pa.binary()),
            "local": pa.array(shapely.to_wkb(local), pa.binary()),
            "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes.astype(np.float32).ravel()), 8),
            "shape_xy": shape_xy,
            "shape_parts": shape_parts,
            "members": pa.array(members, pa.list_(pa.int64())),
        },
        schema=PIECE_SCHEMA,
    )


def bbox_grid(
    zoom: int, bbox: tuple[float, float, float, float] | None, max_entity_tiles: int = 16_384
) -> TileGrid:
    """Build the :class:`TileGrid` for a zoom and an optional lon/lat bbox ``(w, s, e, n)``."""
    if bbox is None:
        return TileGrid(zoom, max_entity_tiles=max_entity_tiles)
    west, south, east, north = bbox
    mx, my = lonlat_to_mercator(np.array([west, east]), np.array([south, north]))
    span = tile_span_mercator(zoom)
    x_lo = math.floor((mx[0] + MERCATOR_HALF) / span)
    x_hi = math.floor((mx[1] + MERCATOR_HALF) / span)
    y_lo = math.floor((MERCATOR_HALF - my[1]) / span)
    y_hi = math.floor((MERCATOR_HALF - my[0]) / span)
    return TileGrid(zoom, (x_lo, x_hi), (y_lo, y_hi), max_entity_tiles)

