"""Tile maths, tile-frame size and minimum rotated boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely import affinity

from geojepa.tiles import (
    Tile,
    lonlat_to_tile,
    minimum_rotated_boxes,
    tile_bounds_lonlat,
    tile_size_m,
    tiles_in_bbox,
    to_box_frame,
)


def reference_tile(lon: float, lat: float, zoom: int) -> tuple[int, int]:
    """The slippy-map formula from the OSM wiki, written independently."""
    n = 2**zoom
    x = int((lon + 180.0) / 360.0 * n)
    lat_r = math.radians(lat)
    y = int((1.0 - math.asinh(math.tan(lat_r)) / math.pi) / 2.0 * n)
    return x, y


@pytest.mark.parametrize(
    ("lon", "lat", "zoom", "expected"),
    [
        (0.0, 0.0, 1, (1, 1)),
        (-179.99, 85.0, 2, (0, 0)),
        (179.99, -85.0, 3, (7, 7)),
        (24.9384, 60.1699, 16, (37307, 18969)),  # Helsinki centre
        (-122.4194, 37.7749, 16, (10482, 25331)),  # San Francisco
        (13.3777, 52.5163, 18, (140813, 85975)),  # Brandenburg Gate
    ],
)
def test_known_tile_ids(lon: float, lat: float, zoom: int, expected: tuple[int, int]) -> None:
    x, y = lonlat_to_tile(lon, lat, zoom)
    assert (int(x), int(y)) == expected == reference_tile(lon, lat, zoom)


def test_random_points_match_reference_and_lie_in_their_tile() -> None:
    rng = np.random.default_rng(0)
    lon = rng.uniform(-179, 179, 500)
    lat = rng.uniform(-80, 80, 500)
    for zoom in (3, 12, 16, 19):
        xs, ys = lonlat_to_tile(lon, lat, zoom)
        for lo, la, x, y in zip(lon, lat, xs, ys, strict=True):
            assert (x, y) == reference_tile(lo, la, zoom)
            w, s, e, n = tile_bounds_lonlat(zoom, int(x), int(y))
            assert w <= lo < e and s <= la < n


def test_metric_tile_size() -> None:
    helsinki = Tile(16, 37308, 18969).size_m()
    california = Tile(16, 10483, 25329).size_m()
    assert helsinki == pytest.approx(305, abs=3)
    assert california == pytest.approx(484, abs=6)
    assert tile_size_m(0, 0.0) == pytest.approx(40_075_016.7, rel=1e-6)
    assert tile_size_m(17, 60.0) == pytest.approx(tile_size_m(16, 60.0) / 2)


def test_tile_parent_and_bbox_ranges() -> None:
    tile = Tile(16, 37308, 18969)
    assert tile.parent(14) == Tile(14, 9327, 4742)
    assert tile.name == "16_37308_18969"
    xs, ys = tiles_in_bbox(tile.bounds_lonlat(), 16)
    assert 37308 in xs and 18969 in ys and len(xs) <= 2 and len(ys) <= 2
    with pytest.raises(ValueError):
        tile.parent(17)


def _corners(box: np.ndarray) -> np.ndarray:
    return box.reshape(4, 2)


def test_rotated_rectangle_box_is_exact() -> None:
    rect = affinity.rotate(shapely.box(0.2, 0.3, 0.6, 0.4), 30, origin="center")
    box = minimum_rotated_boxes(np.array([rect]), 0.001)[0]
    assert shapely.Polygon(_corners(box)).equals_exact(shapely.orient_polygons(rect), 1e-9) or (
        shapely.Polygon(_corners(box)).symmetric_difference(rect).area < 1e-12
    )
    sides = np.linalg.norm(np.diff(np.vstack([_corners(box), _corners(box)[:1]]), axis=0), axis=1)
    assert sorted(sides.round(6).tolist()) == [0.1, 0.1, 0.4, 0.4]
    # Canonical: first axis angle in [0, pi/2), corners counter-clockwise.
    a = _corners(box)[1] - _corners(box)[0]
    assert 0 <= math.atan2(a[1], a[0]) < math.pi / 2
    assert shapely.Polygon(_corners(box)).exterior.is_ccw


def test_boxes_of_points_lines_and_l_shape() -> None:
    point = shapely.Point(0.5, 0.5)
    line = shapely.LineString([(0.1, 0.1), (0.5, 0.5)])
    l_shape = shapely.Polygon([(0, 0), (0.4, 0), (0.4, 0.1), (0.1, 0.1), (0.1, 0.4), (0, 0.4)])
    boxes = minimum_rotated_boxes(np.array([point, line, l_shape]), 0.01)
    square = shapely.Polygon(_corners(boxes[0]))
    assert square.area == pytest.approx(0.01**2)
    assert square.centroid.equals_exact(point, 1e-12)
    thin = shapely.Polygon(_corners(boxes[1]))
    assert thin.area == pytest.approx(line.length * 0.01)
    assert shapely.Polygon(_corners(boxes[2])).area == pytest.approx(0.16)
    for box, geom in zip(boxes, [point, line, l_shape], strict=True):
        assert shapely.Polygon(_corners(box)).buffer(1e-9).contains(geom)


def test_box_frame_maps_box_to_unit_square() -> None:
    rect = affinity.rotate(shapely.box(0.2, 0.3, 0.6, 0.4), 55, origin="center")
    tri = shapely.Polygon([(0.1, 0.1), (0.3, 0.1), (0.1, 0.5)])
    geoms = np.array([rect, tri])
    boxes = minimum_rotated_boxes(geoms, 0.001)
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    uv = to_box_frame(coords, index, boxes)
    assert uv.min() == pytest.approx(0.0, abs=1e-9)
    assert uv.max() == pytest.approx(1.0, abs=1e-9)
    rect_uv = uv[index == 0][:4]
    assert sorted(map(tuple, rect_uv.round(9).tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # Shape is position-, rotation- and scale-free.
    moved = affinity.scale(affinity.rotate(affinity.translate(tri, 0.3, 0.2), 77), 0.5, 0.5)
    b2 = minimum_rotated_boxes(np.array([moved]), 0.001)
    c2, i2 = shapely.get_coordinates(np.array([moved]), return_index=True)
    uv2 = to_box_frame(c2, i2, b2)
    area = shapely.Polygon(uv[index == 1]).area
    assert shapely.Polygon(uv2).area == pytest.approx(area, rel=1e-6)
