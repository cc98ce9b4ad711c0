"""A small hand-made OSM file whose tiles and pieces are known by construction.

Coordinates are computed with the slippy-map formulas written out here (not with geojepa's own
tile maths), around tile ``16/X0/Y0`` in Helsinki:

* ``way 100`` (highway=primary, maxspeed=50, name, source) runs east, south and west through the
  four tiles around the corner shared by X0..X0+1, Y0..Y0+1 -> four pieces, full kept tags;
* ``relation 300`` (multipolygon, building=yes, name) from untagged ways 101 (outer) and 102
  (inner), inside tile X0/Y0 -> one polygon with one hole;
* ``relation 301`` (route=bus) has members way 100 and node 1;
* five tagged nodes in each of the four tiles, and two in the sparse tile X0+3/Y0.
"""

from __future__ import annotations

import math
from pathlib import Path

ZOOM = 16
X0, Y0 = 37308, 18969
SPARSE_TILE = (X0 + 3, Y0)


def tile_corner(x: float, y: float, zoom: int = ZOOM) -> tuple[float, float]:
    """Lon/lat of the (fractional) tile coordinate ``(x, y)``."""
    n = 2**zoom
    lon = x / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    return lon, lat


def write_fixture(path: Path) -> Path:
    """Write the fixture as ``.osm`` XML and return its path."""
    nodes: list[tuple[int, float, float, dict[str, str]]] = []
    nid = 1
    amenities = ["cafe", "bench", "waste_basket", "bicycle_parking", "post_box"]
    for tx, ty in [(X0, Y0), (X0 + 1, Y0), (X0, Y0 + 1), (X0 + 1, Y0 + 1)]:
        for k, amenity in enumerate(amenities):
            lon, lat = tile_corner(tx + 0.1 + 0.15 * k, ty + 0.2)
            tags = {"amenity": amenity, "name": f"Place {nid}", "addr:street": "Katu"}
            nodes.append((nid, lon, lat, tags))
            nid += 1
    for k in range(2):
        lon, lat = tile_corner(SPARSE_TILE[0] + 0.3 + 0.2 * k, SPARSE_TILE[1] + 0.5)
        nodes.append((nid, lon, lat, {"amenity": "bench"}))
        nid += 1
    # Way 100 path: (X0+0.5, Y0+0.6) -> (X0+1.5, Y0+0.6) -> (X0+1.5, Y0+1.4) -> (X0+0.5, Y0+1.4)
    path_pts = [(X0 + 0.5, Y0 + 0.6), (X0 + 1.5, Y0 + 0.6), (X0 + 1.5, Y0 + 1.4), (X0 + 0.5, Y0 + 1.4)]
    road = []
    for px, py in path_pts:
        lon, lat = tile_corner(px, py)
        nodes.append((nid, lon, lat, {}))
        road.append(nid)
        nid += 1
    # Building with a courtyard inside tile X0/Y0: outer square 0.2..0.4, inner 0.25..0.35.
    rings = []
    for lo, hi in [(0.2, 0.4), (0.25, 0.35)]:
        ring = []
        for fx, fy in [(lo, lo), (hi, lo), (hi, hi), (lo, hi)]:
            lon, lat = tile_corner(X0 + fx, Y0 + 0.3 + fy)
            nodes.append((nid, lon, lat, {}))
            ring.append(nid)
            nid += 1
        rings.append(ring + [ring[0]])
    ways = [
        (100, road, {"highway": "primary", "maxspeed": "50", "name": "Mannerheimintie", "source": "survey"}),
        (101, rings[0], {}),
        (102, rings[1], {}),
    ]
    relations = [
        (300, [("w", 101, "outer"), ("w", 102, "inner")],
         {"type": "multipolygon", "building": "yes", "name": "Courtyard House"}),
        (301, [("w", 100, ""), ("n", 1, "stop")], {"type": "route", "route": "bus", "ref": "55"}),
    ]
    return write_osm_xml(path, nodes, ways, relations)


Node = tuple[int, float, float, dict[str, str]]
Way = tuple[int, list[int], dict[str, str]]
Relation = tuple[int, list[tuple[str, int, str]], dict[str, str]]


def write_osm_xml(path: Path, nodes: list[Node], ways: list[Way], relations: list[Relation]) -> Path:
    """Write nodes ``(id, lon, lat, tags)``, ways ``(id, refs, tags)`` and relations
    ``(id, [(type, ref, role)], tags)`` as ``.osm`` XML."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="geojepa-tests">']
    for i, lon, lat, tags in nodes:
        body = "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        lines.append(f'<node id="{i}" version="1" lat="{lat:.9f}" lon="{lon:.9f}">{body}</node>')
    for i, refs, tags in ways:
        body = "".join(f'<nd ref="{r}"/>' for r in refs)
        body += "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        lines.append(f'<way id="{i}" version="1">{body}</way>')
    for i, members, tags in relations:
        body = "".join(f'<member type="{t}" ref="{r}" role="{role}"/>' for t, r, role in members)
        body += "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        lines.append(f'<relation id="{i}" version="1">{body}</relation>')
    lines.append("</osm>")
    path.write_text("\n".join(lines) + "\n")
    return path
