"""Web-Mercator tile maths, tile-local frames, minimum rotated boxes and box-frame shapes.

Conventions (SPEC section 2):

* Tiles are slippy-map tiles ``z/x/y`` (x east, y south, origin top-left).
* The tile-local frame has x east and y north and maps the tile onto ``[0, 1]^2``. Web-Mercator
  tiles are squares in projected metres, so the frame is metric up to one scale factor,
  :func:`tile_size_m`.
* A minimum rotated box is stored as 4 corners (8 numbers, counter-clockwise) in the tile frame.
* An entity's *shape* is its vertices in its own box frame, where the box spans ``[0, 1]^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray

EARTH_RADIUS_M = 6_378_137.0
"""WGS84 semi-major axis used by Web Mercator (EPSG:3857)."""
EARTH_CIRCUMFERENCE_M = 2.0 * math.pi * EARTH_RADIUS_M
"""Equatorial circumference, about 40 075 km."""
MERCATOR_HALF = math.pi * EARTH_RADIUS_M
"""Half the side of the Web-Mercator square, in projected metres."""
MAX_LATITUDE = 85.0511287798066
"""Latitude limit of the Web-Mercator square."""


@dataclass(frozen=True, order=True)
class Tile:
    """A slippy-map tile.

    Attributes:
        z: Zoom level.
        x: Column, 0 at longitude -180.
        y: Row, 0 at the northern edge.
    """

    z: int
    x: int
    y: int

    @property
    def name(self) -> str:
        """The tile as ``z_x_y``."""
        return f"{self.z}_{self.x}_{self.y}"

    def parent(self, zoom: int) -> Tile:
        """Return the ancestor tile at a coarser ``zoom``."""
        if zoom > self.z:
            raise ValueError(f"parent zoom {zoom} is finer than tile zoom {self.z}")
        shift = self.z - zoom
        return Tile(zoom, self.x >> shift, self.y >> shift)

    def bounds_mercator(self) -> tuple[float, float, float, float]:
        """Return ``(xmin, ymin, xmax, ymax)`` in EPSG:3857 metres."""
        return tile_bounds_mercator(self.z, self.x, self.y)

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """Return ``(west, south, east, north)`` in degrees."""
        return tile_bounds_lonlat(self.z, self.x, self.y)

    def size_m(self) -> float:
        """Return the ground side length of the tile in metres, at its centre latitude."""
        _west, south, _east, north = self.bounds_lonlat()
        return tile_size_m(self.z, (south + north) / 2.0)


def tile_span_mercator(zoom: int) -> float:
    """Return the side of a tile at ``zoom`` in projected Web-Mercator metres."""
    return 2.0 * MERCATOR_HALF / (1 << zoom)


def tile_size_m(zoom: int, lat: float) -> float:
    """Return the ground side of a tile at ``zoom`` and latitude ``lat`` in metres.

    ``40 075 km / 2^z * cos(lat)``: about 305 m in Helsinki and 490 m in California at z16.
    """
    return EARTH_CIRCUMFERENCE_M / (1 << zoom) * math.cos(math.radians(lat))


def lonlat_to_mercator(
    lon: NDArray[np.float64] | float, lat: NDArray[np.float64] | float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Project WGS84 degrees to EPSG:3857 metres (vectorised)."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.clip(np.asarray(lat, dtype=np.float64), -MAX_LATITUDE, MAX_LATITUDE)
    mx = np.radians(lon) * EARTH_RADIUS_M
    my = np.log(np.tan(np.pi / 4.0 + np.radians(lat) / 2.0)) * EARTH_RADIUS_M
    return mx, my


def mercator_to_lonlat(
    mx: NDArray[np.float64] | float, my: NDArray[np.float64] | float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unproject EPSG:3857 metres to WGS84 degrees (vectorised)."""
    mx = np.asarray(mx, dtype=np.float64)
    my = np.asarray(my, dtype=np.float64)
    lon = np.degrees(mx / EARTH_RADIUS_M)
    lat = np.degrees(2.0 * np.arctan(np.exp(my / EARTH_RADIUS_M)) - np.pi / 2.0)
    return lon, lat


def mercator_to_tile(
    mx: NDArray[np.float64] | float, my: NDArray[np.float64] | float, zoom: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return the column and row of the tiles holding projected points (vectorised)."""
    n = 1 << zoom
    span = tile_span_mercator(zoom)
    x = np.floor((np.asarray(mx) + MERCATOR_HALF) / span).astype(np.int64)
    y = np.floor((MERCATOR_HALF - np.asarray(my)) / span).astype(np.int64)
    return np.clip(x, 0, n - 1), np.clip(y, 0, n - 1)


def lonlat_to_tile(
    lon: NDArray[np.float64] | float, lat: NDArray[np.float64] | float, zoom: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return the column and row of the tiles holding WGS84 points (vectorised)."""
    return mercator_to_tile(*lonlat_to_mercator(lon, lat), zoom)


def tile_bounds_mercator(zoom: int, x: int, y: int) -> tuple[float, float, float, float]:
    """Return ``(xmin, ymin, xmax, ymax)`` of tile ``zoom/x/y`` in EPSG:3857 metres."""
    span = tile_span_mercator(zoom)
    xmin = -MERCATOR_HALF + x * span
    ymax = MERCATOR_HALF - y * span
    return xmin, ymax - span, xmin + span, ymax


def tile_bounds_lonlat(zoom: int, x: int, y: int) -> tuple[float, float, float, float]:
    """Return ``(west, south, east, north)`` of tile ``zoom/x/y`` in degrees."""
    xmin, ymin, xmax, ymax = tile_bounds_mercator(zoom, x, y)
    (west, east), (south, north) = mercator_to_lonlat(
        np.array([xmin, xmax]), np.array([ymin, ymax])
    )
    return float(west), float(south), float(east), float(north)


def tiles_in_bbox(
    bbox: tuple[float, float, float, float], zoom: int
) -> tuple[range, range]:
    """Return the column and row ranges of tiles that intersect a lon/lat ``bbox``.

    Args:
        bbox: ``(west, south, east, north)`` in degrees.
        zoom: Tile zoom.
    """
    west, south, east, north = bbox
    x0, y0 = lonlat_to_tile(west, north, zoom)
    x1, y1 = lonlat_to_tile(east, south, zoom)
    return range(int(x0), int(x1) + 1), range(int(y0), int(y1) + 1)


def minimum_rotated_boxes(
    geoms: NDArray[np.object_], min_side: float | NDArray[np.float64]
) -> NDArray[np.float64]:
    """Compute canonical minimum rotated bounding boxes (vectorised).

    Each box is returned as 4 counter-clockwise corners ``(x0, y0, ..., x3, y3)``. The first axis
    (corner 0 -> corner 1) has its angle in ``[0, pi/2)``, which makes the description unique.
    Sides shorter than ``min_side`` are widened symmetrically to ``min_side``, so points become
    axis-aligned squares and straight lines thin rectangles.

    Args:
        geoms: Array of shapely geometries (any type, not empty).
        min_side: Smallest allowed side, in the geometries' units; scalar or one per geometry.

    Returns:
        Array of shape ``(n, 8)``.
    """
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    if n == 0:
        return np.zeros((0, 8))
    env = shapely.oriented_envelope(geoms)
    coords, index = shapely.get_coordinates(env, return_index=True)
    starts = np.searchsorted(index, np.arange(n))
    counts = np.bincount(index, minlength=n)
    p0 = coords[starts]
    has1 = counts >= 2
    p1 = np.where(has1[:, None], coords[np.minimum(starts + 1, len(coords) - 1)], p0)
    has2 = counts >= 4  # a polygon ring: 5 coordinates
    p2 = np.where(has2[:, None], coords[np.minimum(starts + 2, len(coords) - 1)], p1)

    e1 = p1 - p0
    len1 = np.hypot(e1[:, 0], e1[:, 1])
    theta = np.where(len1 > 0, np.arctan2(e1[:, 1], e1[:, 0]), 0.0)
    e2 = p2 - p1
    len2 = np.hypot(e2[:, 0], e2[:, 1])
    center = np.where(has2[:, None], (p0 + p2) / 2.0, (p0 + p1) / 2.0)

    # Canonical orientation: angle in [0, pi/2); a quarter turn swaps the two sides.
    quarter = np.floor(theta / (np.pi / 2.0))
    theta = theta - quarter * (np.pi / 2.0)
    swap = (quarter.astype(np.int64) % 2) == 1
    side_a = np.where(swap, len2, len1)
    side_b = np.where(swap, len1, len2)
    min_side = np.broadcast_to(np.asarray(min_side, dtype=np.float64), (n,))
    side_a = np.maximum(side_a, min_side)
    side_b = np.maximum(side_b, min_side)

    axis_a = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    axis_b = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    half_a = axis_a * (side_a / 2.0)[:, None]
    half_b = axis_b * (side_b / 2.0)[:, None]
    corners = np.stack(
        [
            center - half_a - half_b,
            center + half_a - half_b,
            center + half_a + half_b,
            center - half_a + half_b,
        ],
        axis=1,
    )
    return corners.reshape(n, 8)


def to_box_frame(
    coords: NDArray[np.float64], index: NDArray[np.int64], boxes: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Express vertices in the frame of their entity's box, which spans ``[0, 1]^2``.

    Args:
        coords: ``(m, 2)`` vertices in the boxes' coordinate system.
        index: ``(m,)`` row of ``boxes`` that each vertex belongs to.
        boxes: ``(n, 8)`` boxes from :func:`minimum_rotated_boxes`.

    Returns:
        ``(m, 2)`` vertices, translated, rotated and scaled so their box is the unit square.
    """
    corners = boxes.reshape(-1, 4, 2)
    origin = corners[:, 0][index]
    axis_a = (corners[:, 1] - corners[:, 0])[index]
    axis_b = (corners[:, 3] - corners[:, 0])[index]
    rel = coords - origin
    u = np.einsum("ij,ij->i", rel, axis_a) / np.einsum("ij,ij->i", axis_a, axis_a)
    v = np.einsum("ij,ij->i", rel, axis_b) / np.einsum("ij,ij->i", axis_b, axis_b)
    return np.stack([u, v], axis=1)
