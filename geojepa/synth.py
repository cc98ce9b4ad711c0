"""A synthetic city: a real ``.osm.pbf`` plus a matching aerial-like GeoTIFF, with known answers.

The city serves three purposes: tests whose expected values are known exactly (the ground-truth
counts in the summary JSON), multimodal training without real imagery, and scale benchmarks (a
city of about a million tagged objects is written in a couple of minutes). Everything is
deterministic: the same :class:`SynthConfig` gives the same PBF content and the same image.

Generative model
----------------
All geometry is generated in metres in a local frame ``[0, S]^2`` (``S`` = ``size_km`` * 1000,
x east, y north) whose centre is the configured centre point projected to its UTM zone. Nodes
are converted to lon/lat with pyproj for the PBF; the image is written in the UTM CRS.

1. **Street grid.** ``round(S / block_size_m)`` blocks per axis; the straight north-south and
   east-west street lines have jittered spacing (``block_jitter``) and include the city edges.
   Each line has a class from a periodic hierarchy with a random phase: every 8th line is
   ``primary``, every 4th ``secondary``, every 2nd ``tertiary``, the rest ``residential``.
   Roads are ways that share their nodes at every intersection (a real network); a street line
   is cut into ways of 2-6 segments. The class sets ``maxspeed`` (70/50/40/30/20 km/h for
   primary/secondary/tertiary/residential/service; a share ``mph_fraction`` of the ways gives
   it in miles instead, e.g. ``"25 mph"``), ``lanes`` and ``surface``. Every intersection of
   two major streets (primary/secondary) is signalised, and so is a share of the junctions of
   a major and a tertiary street. As in real OSM data, a signalised junction is mapped either
   as one ``highway=traffic_signals`` node at the junction or with one such node on each
   approaching road a few metres before it, and some major-street blocks have a signalised
   pedestrian crossing halfway (``highway=crossing`` + ``crossing=traffic_signals``). The signal
   nodes are inserted into the road ways after those are split, from their own random stream,
   so the rest of the city does not depend on the signal settings. As in real aerial imagery,
   the image shows where the signals are: every road arm of a signalised junction has a zebra
   crossing painted across it just outside the junction, and so has every signalised
   pedestrian crossing (stripes of light paint 1 m wide, ``CROSSWALK_DEPTH_M`` deep).
   Some blocks have an east-west ``highway=service`` alley joined to the streets.
2. **River.** A sinusoidal centreline crosses the city from west to east (``waterway=river``).
   The water surface is a ``type=multipolygon`` relation (``natural=water``) whose outer ring is
   assembled from several untagged bank ways and whose inner rings are islands (the river
   widens smoothly around each island). Street nodes and segments too close to the water are
   removed. North-south streets cross the river: major streets (and some tertiary or
   residential ones) on car bridges, at least one on a footbridge (``highway=footway``), the
   rest end at the bank. A bridge is its own way with ``bridge=yes`` and ``layer=1``.
3. **Districts.** Jittered Voronoi seeds (one per ``district_size_m`` square) carry a district
   type drawn from the ``*_weight`` settings (commercial likelier near the centre, industrial
   towards the edge); every block takes the type of its nearest seed, which makes districts
   spatially coherent. Residential seeds are house or apartment districts
   (``apartment_fraction``). Blocks touching the river become riverside parks. Every built
   block is a ``landuse=*`` closed way (residential, commercial/retail, industrial).
4. **Blocks.** A built block is cut into a grid of lots (one row on each side of the street or
   alley it faces); each lot holds one rectangular building whose size and ``building=*``
   depend on the district: house/detached (front garden towards the street, some rotated, and
   often a ``shed``/``garage`` in the backyard), apartments, commercial/retail/office,
   industrial/warehouse. Large apartment and commercial buildings become ``type=multipolygon``
   relations with a courtyard (untagged outer and inner ways, tags on the relation;
   ``courtyard_fraction``). Buildings carry ``building:levels`` and sometimes
   ``addr:housenumber``. Point POIs (``shop=*``, ``amenity=*``, ``leisure=playground``) fitting
   the district sit inside buildings or parks. Park blocks are ``leisure=park`` closed ways,
   often crossed by a diagonal footway joined to the street corners. ``natural=tree`` nodes line
   the streets of most blocks (``street_tree_spacing_m``) and fill the parks
   (``park_tree_density``).
5. **Routes.** About ``bus_route_fraction`` of the major streets carry a ``type=route``
   ``route=bus`` relation over their ways, with ``highway=bus_stop`` platform nodes.
6. **Metadata.** Every tagged object carries ``source=geojepa-synth`` (an excluded metadata key
   that marks the data as synthetic); names and addresses exercise the other excluded keys.
   Untagged objects (way vertices, multipolygon member ways) stay untagged. Node, way and
   relation ids are positive and increasing, and the PBF is written sorted (nodes, ways,
   relations); its header names the generator as synthetic.
7. **Image.** An RGB uint8 GeoTIFF (deflate, tiled) in the UTM CRS covers the city plus a 40 m
   margin. Geometries are rasterised with :func:`rasterio.features.rasterize` into a material
   map, painted in this order: bare ground, block ground (yards, paving, industrial ground),
   parks, water (islands stay green), bridge decks, park paths, sidewalks, roads from minor to
   major (darker and wider for higher classes), tree crowns, roofs (a colour per building type
   with per-building variation; gable roofs of houses lit on one half and shaded on the other),
   courtyards. Colour = the material's colour + smooth texture (periodic value noise, strong
   on vegetation) + per-pixel noise. It is rendered in windows of 2048 pixels (compression
   overlapped in a second thread), so memory stays bounded at any city size.

The summary JSON holds the config, the model's derived parameters (UTM EPSG, frame origin,
bounds, street lines and classes, river, district blocks, material colours) and the
ground-truth ``counts``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import osmium
import pyproj
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from osmium.osm import mutable
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window

from geojepa.errors import GeoJepaError

__all__ = [
    "SOURCE_VALUE",
    "SynthConfig",
    "SynthResult",
    "config_for_entities",
    "write_synthetic_city",
]

SOURCE_VALUE = "geojepa-synth"
"""Value of the ``source`` tag on every tagged object of a synthetic city."""
PBF_NAME = "synthetic_city.osm.pbf"
IMAGE_NAME = "synthetic_city.tif"
SUMMARY_NAME = "synthetic_city.json"
GENERATOR = "geojepa-synth (synthetic city, not real OpenStreetMap data)"

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Tags = dict[str, str]
Member = tuple[str, int, str]


@dataclass(frozen=True)
class SynthConfig:
    """Settings of a synthetic city.

    Attributes:
        size_km: Side of the square city in kilometres.
        seed: Seed of every random choice; the same config always gives the same city.
        center_lon: Longitude of the city centre in degrees.
        center_lat: Latitude of the city centre in degrees (inside the UTM range, -79..83).
        pixel_size_m: Ground size of one image pixel in metres.
        with_image: Whether to write the GeoTIFF.
        block_size_m: Mean distance between neighbouring street lines.
        block_jitter: Relative jitter of the street spacing (0 = a regular grid).
        district_size_m: Typical side of a district (one Voronoi seed per such square).
        residential_weight: Relative share of residential districts.
        commercial_weight: Relative share of commercial districts.
        industrial_weight: Relative share of industrial districts.
        park_weight: Relative share of park districts.
        apartment_fraction: Share of residential districts built with apartment blocks.
        courtyard_fraction: Chance that a large apartment or commercial building is a
            multipolygon with a courtyard.
        river_width_m: Width of the river away from islands.
        mph_fraction: Share of road ways whose ``maxspeed`` is written in mph.
        bus_route_fraction: Share of major streets that carry a bus route relation.
        signal_tertiary_fraction: Share of the junctions of a major and a tertiary street that
            are signalised (junctions of two major streets always are).
        signal_approach_fraction: Share of the signalised junctions mapped with one signal node
            per approaching road instead of one node at the junction.
        signal_crossing_fraction: Chance that a block of a major street has a signalised
            pedestrian crossing halfway.
        street_tree_spacing_m: Mean distance between street trees (0 = no street trees).
        park_tree_density: Trees per 1000 square metres of park (0 = no park trees).
    """

    size_km: float = 2.0
    seed: int = 0
    center_lon: float = 24.94
    center_lat: float = 60.17
    pixel_size_m: float = 1.0
    with_image: bool = True
    block_size_m: float = 110.0
    block_jitter: float = 0.2
    district_size_m: float = 400.0
    residential_weight: float = 0.55
    commercial_weight: float = 0.18
    industrial_weight: float = 0.14
    park_weight: float = 0.13
    apartment_fraction: float = 0.3
    courtyard_fraction: float = 0.3
    river_width_m: float = 36.0
    mph_fraction: float = 0.1
    bus_route_fraction: float = 0.5
    signal_tertiary_fraction: float = 0.5
    signal_approach_fraction: float = 0.5
    signal_crossing_fraction: float = 0.25
    street_tree_spacing_m: float = 12.0
    park_tree_density: float = 4.0


@dataclass(frozen=True)
class SynthResult:
    """Files written by :func:`write_synthetic_city` and the city's ground truth.

    Attributes:
        pbf_path: The OSM PBF file.
        image_path: The GeoTIFF, or ``None`` when the config asked for no image.
        summary_path: The summary JSON (config, model parameters, counts).
        counts: Ground-truth counts, the ``counts`` section of the summary: ``nodes``, ``ways``,
            ``relations``, ``tagged_nodes``, ``tagged_ways``, ``entities`` (tagged nodes +
            tagged ways + relations), ``buildings`` (= ``building_ways`` +
            ``building_relations``), ``building_<type>``, ``highways`` (ways with ``highway``)
            and ``highway_<class>``, ``traffic_signals`` (``highway=traffic_signals`` nodes),
            ``signal_crossings`` (signalised crossing nodes), ``bridges`` (= ``car_bridges`` +
            ``foot_bridges``), ``maxspeed_ways``, ``maxspeed_mph``, ``waterways``,
            ``water_areas``, ``islands``, ``parks``, ``landuse``, ``trees``, ``pois``,
            ``bus_stops``, ``routes``, ``multipolygons``.
    """

    pbf_path: Path
    image_path: Path | None
    summary_path: Path
    counts: dict[str, int]


# --------------------------------------------------------------------------------------------
# Model tables
# --------------------------------------------------------------------------------------------

ROAD_CLASSES = ("primary", "secondary", "tertiary", "residential", "service", "footway")
"""Road classes, major first. Street lines use the first four."""
_PRIMARY, _SECONDARY, _TERTIARY, _RESIDENTIAL, _SERVICE, _FOOTWAY = range(6)
_MAJOR = (_PRIMARY, _SECONDARY)
MAJOR_CLASSES = frozenset({"primary", "secondary"})
CAR_CLASSES = frozenset({"primary", "secondary", "tertiary", "residential", "service"})
ROAD_WIDTH_M = (14.0, 11.0, 9.0, 7.0, 4.5, 2.5)
MAXSPEED_KMH = (70, 50, 40, 30, 20, 0)
MAXSPEED_MPH = {70: "45 mph", 50: "30 mph", 40: "25 mph", 30: "20 mph", 20: "15 mph"}
_LANES: tuple[tuple[tuple[str, float], ...], ...] = (
    (("4", 0.8), ("6", 0.2)),
    (("2", 0.6), ("4", 0.4)),
    (("2", 1.0),),
    (("2", 0.5), ("", 0.5)),
    (("1", 0.5), ("", 0.5)),
    (("", 1.0),),
)
_SURFACES: tuple[tuple[tuple[str, float], ...], ...] = (
    (("asphalt", 0.95), ("concrete", 0.05)),
    (("asphalt", 0.95), ("concrete", 0.05)),
    (("asphalt", 1.0),),
    (("asphalt", 0.8), ("paving_stones", 0.2)),
    (("asphalt", 0.6), ("gravel", 0.2), ("paving_stones", 0.2)),
    (("gravel", 0.5), ("compacted", 0.3), ("paving_stones", 0.2)),
)
SIDEWALK_M = 2.5
SETBACK_M = 2.0
ALLEY_GAP_M = ROAD_WIDTH_M[_SERVICE] + 2 * SETBACK_M
NODE_CLEARANCE_M = 16.0
"""Street intersections and segments keep at least this distance from the water."""
BANK_CLEARANCE_M = 10.0
"""Bridge ends (bank nodes) lie this far from the water's edge."""
SIGNAL_SETBACK_M = 12.0
"""Signals mapped per approach lie this far before the junction."""
CROSSWALK_DEPTH_M = 4.0
"""Length along the road of a painted zebra crossing."""
CROSSWALK_GAP_M = 1.0
"""Distance between a junction's edge (the crossing road's kerb) and its zebra crossings."""
PARK_BANK_CLEARANCE_M = 4.0
RIVER_OVERHANG_M = 25.0
IMAGE_MARGIN_M = 40.0
RIVER_STEP_M = 10.0
MAX_WAY_NODES = 1000

BUILDING_TYPES = (
    "house",
    "detached",
    "apartments",
    "commercial",
    "retail",
    "office",
    "industrial",
    "warehouse",
    "shed",
    "garage",
)
_BUILDING_LEVELS = ((1, 2), (1, 2), (3, 8), (2, 5), (1, 3), (3, 10), (1, 2), (1, 1), (1, 1),
                    (1, 1))
_GABLE_TYPES = (0, 1)
_COURTYARD_TYPES = (2, 3, 4, 5)
_SHED, _GARAGE = 8, 9

STYLES = ("houses", "apartments", "commercial", "industrial", "park", "riverside_park")
_HOUSES, _APARTMENTS, _COMMERCIAL, _INDUSTRIAL, _PARK, _RIVERSIDE = range(6)


@dataclass(frozen=True)
class _Style:
    lot_w: float
    lot_d: float
    fill: tuple[float, float]
    occupancy: float
    alley: float
    types: tuple[tuple[int, float], ...]
    ground: int
    landuse: tuple[tuple[str, float], ...]
    poi_rate: float
    pois: tuple[tuple[str, str], ...]
    street_trees: float


_HOME_POIS = (
    ("shop", "convenience"),
    ("shop", "bakery"),
    ("shop", "hairdresser"),
    ("amenity", "cafe"),
    ("amenity", "kindergarten"),
    ("amenity", "pharmacy"),
)
_PARK_POIS = (
    ("amenity", "bench"),
    ("amenity", "bench"),
    ("amenity", "drinking_water"),
    ("amenity", "toilets"),
    ("leisure", "playground"),
)
_UNNAMED_POIS = frozenset({"bench", "toilets", "drinking_water", "recycling", "playground"})

# Image materials (indices into the palette).
_M_GROUND, _M_PARK, _M_YARD, _M_PAVED, _M_INDUSTRIAL, _M_WATER, _M_SIDEWALK = range(7)
_M_ROAD = (7, 8, 9, 10, 11, 12)  # one per road class, footway last
_M_DECK, _M_ISLAND, _M_TREE = 13, 14, 15
_M_MARKING = _M_SIDEWALK  # road paint: the light concrete colour (all 256 materials are taken)
_M_ROOF0 = 16
_ROOF_VARIANTS = 12
_ROOF_SHADE = len(BUILDING_TYPES) * _ROOF_VARIANTS  # offset of the shaded roof colours

_STYLE_TABLE = {
    _HOUSES: _Style(
        18.0, 26.0, (0.5, 0.75), 0.92, 0.1, ((0, 0.7), (1, 0.3)), _M_YARD,
        (("residential", 1.0),), 0.01, _HOME_POIS, 0.8,
    ),
    _APARTMENTS: _Style(
        44.0, 34.0, (0.7, 0.9), 0.95, 0.2, ((2, 1.0),), _M_YARD, (("residential", 1.0),), 0.12,
        _HOME_POIS, 0.85,
    ),
    _COMMERCIAL: _Style(
        34.0, 30.0, (0.75, 0.95), 0.95, 0.5, ((3, 0.4), (4, 0.35), (5, 0.25)), _M_PAVED,
        (("commercial", 0.6), ("retail", 0.4)), 0.55,
        (
            ("shop", "supermarket"),
            ("shop", "clothes"),
            ("shop", "bakery"),
            ("shop", "convenience"),
            ("shop", "electronics"),
            ("amenity", "restaurant"),
            ("amenity", "cafe"),
            ("amenity", "bank"),
            ("amenity", "fast_food"),
            ("amenity", "pharmacy"),
        ),
        0.5,
    ),
    _INDUSTRIAL: _Style(
        58.0, 42.0, (0.55, 0.85), 0.85, 0.8, ((6, 0.6), (7, 0.4)), _M_INDUSTRIAL,
        (("industrial", 1.0),), 0.06,
        (("shop", "car_repair"), ("shop", "hardware"), ("amenity", "fuel"),
         ("amenity", "recycling")),
        0.15,
    ),
}
_PARK_STREET_TREES = 0.6

_MATERIAL_NAMES = {
    _M_GROUND: "bare_ground",
    _M_PARK: "park_vegetation",
    _M_YARD: "yard_vegetation",
    _M_PAVED: "paving",
    _M_INDUSTRIAL: "industrial_ground",
    _M_WATER: "water",
    _M_SIDEWALK: "sidewalk",
    **{m: f"road_{c}" for m, c in zip(_M_ROAD, ROAD_CLASSES)},
    _M_DECK: "bridge_deck",
    _M_ISLAND: "island_vegetation",
    _M_TREE: "tree_crown",
}


def _build_palette() -> tuple[NDArray[np.uint8], NDArray[np.int16], NDArray[np.int16]]:
    """Return the material colours (256, 3), per-pixel noise and texture amplitudes."""
    colour = np.zeros((256, 3), dtype=np.float64)
    noise = np.full(256, 4, dtype=np.int16)
    texture = np.zeros(256, dtype=np.int16)
    base = {
        _M_GROUND: ((158, 142, 116), 10, 14),
        _M_PARK: ((76, 122, 58), 12, 30),
        _M_YARD: ((100, 136, 76), 10, 18),
        _M_PAVED: ((172, 166, 156), 5, 5),
        _M_INDUSTRIAL: ((148, 145, 136), 8, 10),
        _M_WATER: ((38, 72, 112), 3, 6),
        _M_SIDEWALK: ((178, 175, 170), 4, 2),
        _M_ROAD[_PRIMARY]: ((62, 62, 68), 4, 2),
        _M_ROAD[_SECONDARY]: ((72, 72, 77), 4, 2),
        _M_ROAD[_TERTIARY]: ((82, 82, 86), 4, 2),
        _M_ROAD[_RESIDENTIAL]: ((92, 92, 96), 5, 3),
        _M_ROAD[_SERVICE]: ((112, 109, 104), 6, 4),
        _M_ROAD[_FOOTWAY]: ((196, 184, 158), 6, 4),
        _M_DECK: ((150, 150, 146), 3, 1),
        _M_ISLAND: ((80, 122, 62), 12, 30),
        _M_TREE: ((46, 88, 42), 14, 16),
    }
    for m, (rgb, amp, tex) in base.items():
        colour[m] = rgb
        noise[m] = amp
        texture[m] = tex
    roof_bases = (
        ((150, 74, 56), (102, 98, 100), (116, 84, 64), (128, 56, 48)),  # house
        ((84, 82, 86), (108, 76, 58), (70, 66, 64)),  # detached
        ((172, 170, 166), (142, 142, 148), (188, 182, 170)),  # apartments
        ((202, 202, 206), (182, 186, 192)),  # commercial
        ((216, 210, 198), (190, 180, 160)),  # retail
        ((122, 132, 148), (152, 162, 176)),  # office
        ((206, 210, 216), (176, 182, 186), (152, 156, 150)),  # industrial
        ((222, 224, 228), (160, 170, 182), (132, 142, 152)),  # warehouse
        ((120, 100, 80), (90, 90, 92)),  # shed
        ((140, 136, 130), (104, 100, 98)),  # garage
    )
    rng = np.random.default_rng(20240501)  # fixed: the palette never depends on the seed
    for t, bases in enumerate(roof_bases):
        for k in range(_ROOF_VARIANTS):
            rgb = np.asarray(bases[k % len(bases)], dtype=np.float64)
            rgb = rgb * rng.uniform(0.9, 1.1) + rng.normal(0.0, 5.0, 3)
            m = _M_ROOF0 + t * _ROOF_VARIANTS + k
            colour[m] = rgb
            colour[m + _ROOF_SHADE] = rgb * 0.72
            noise[m] = noise[m + _ROOF_SHADE] = 4
            texture[m] = texture[m + _ROOF_SHADE] = 2
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8), noise, texture


# --------------------------------------------------------------------------------------------
# City model containers
# --------------------------------------------------------------------------------------------


class _Nodes:
    """Node store: ids are 1-based positions in creation order; tags by reference."""

    def __init__(self) -> None:
        self._x: list[FloatArray] = []
        self._y: list[FloatArray] = []
        self._ref: list[NDArray[np.int32]] = []
        self.count = 0
        self.tag_table: list[Tags] = []
        self._set: dict[int, int] = {}

    def add(self, x: Any, y: Any, ref: Any = -1) -> IntArray:
        """Add nodes; ``ref`` indexes :attr:`tag_table` (-1 = untagged), scalar or per node."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        ids = np.arange(self.count + 1, self.count + 1 + len(x), dtype=np.int64)
        self._x.append(x)
        self._y.append(y)
        self._ref.append(np.broadcast_to(np.asarray(ref, dtype=np.int32), x.shape).copy())
        self.count += len(x)
        return ids

    def table(self, tags: Tags) -> int:
        """Register a tag dict (shared by every node that references it)."""
        self.tag_table.append(tags)
        return len(self.tag_table) - 1

    def add_one(self, x: float, y: float, tags: Tags | None = None) -> int:
        ref = -1 if not tags else self.table(tags)
        return int(self.add(x, y, ref)[0])

    def set_tags(self, nid: int, tags: Tags) -> None:
        """Tag an existing node."""
        self._set[nid] = self.table(tags)

    def arrays(self) -> tuple[FloatArray, FloatArray, NDArray[np.int32]]:
        if not self._x:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int32)
        ref = np.concatenate(self._ref)
        for nid, r in self._set.items():
            ref[nid - 1] = r
        return np.concatenate(self._x), np.concatenate(self._y), ref

    def tagged_count(self) -> int:
        return int((self.arrays()[2] >= 0).sum())


@dataclass
class _Buildings:
    """Buildings as arrays; each is one tagged way, or (courtyard) a relation of two ways."""

    corners: FloatArray  # (n, 4, 2) outer ring, counter-clockwise
    inner: FloatArray  # (n, 4, 2) courtyard ring (valid where courtyard)
    courtyard: NDArray[np.bool_]
    btype: IntArray
    levels: IntArray  # 0 = no tag
    housenumber: IntArray  # 0 = no tag
    first_node: IntArray  # node id of corner 0; courtyard corners follow the outer ones

    @property
    def count(self) -> int:
        return len(self.btype)


@dataclass
class _PolyBatch:
    """Polygons with the same vertex count (n, k, 2) and a material each."""

    polys: FloatArray
    material: NDArray[np.uint8]
    bbox: FloatArray = field(init=False)  # (4, n): xmin, ymin, xmax, ymax

    def __post_init__(self) -> None:
        p = self.polys
        if len(p):
            self.bbox = np.stack(
                [p[..., 0].min(1), p[..., 1].min(1), p[..., 0].max(1), p[..., 1].max(1)]
            )
        else:
            self.bbox = np.zeros((4, 0))


@dataclass
class _ShapeBatch:
    """A few irregular shapely polygons (water, riverside parks, islands)."""

    geoms: list[Any]
    material: list[int]


@dataclass
class _City:
    config: SynthConfig
    size_m: float
    epsg: int
    origin: tuple[float, float]  # UTM of local (0, 0)
    nodes: _Nodes
    ways: list[tuple[list[int], Tags]]
    buildings: _Buildings
    relations: list[tuple[list[Member], Tags]]
    batches: list[_PolyBatch | _ShapeBatch]
    counts: dict[str, int]
    model: dict[str, Any]

    @property
    def way_count(self) -> int:
        b = self.buildings
        return len(self.ways) + b.count + int(b.courtyard.sum())


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, options: tuple[tuple[Any, float], ...], n: int) -> Any:
    values = [o[0] for o in options]
    p = np.asarray([o[1] for o in options], dtype=np.float64)
    idx = rng.choice(len(values), size=n, p=p / p.sum())
    return [values[i] for i in idx]


def _pick(u: float, options: tuple[tuple[Any, float], ...]) -> Any:
    """Pick an option with a uniform draw ``u`` in [0, 1) (weights sum to 1)."""
    acc = 0.0
    for value, weight in options:
        acc += weight
        if u < acc:
            return value
    return options[-1][0]


def _segment_quads(
    ax: FloatArray, ay: FloatArray, bx: FloatArray, by: FloatArray, half: FloatArray
) -> FloatArray:
    """Rectangles of half-width ``half`` around segments, with square caps: (n, 4, 2)."""
    dx, dy = bx - ax, by - ay
    length = np.maximum(np.hypot(dx, dy), 1e-9)
    ux, uy = dx / length * half, dy / length * half
    nx, ny = -uy, ux
    quads = np.empty((len(ax), 4, 2))
    quads[:, 0] = np.stack([ax - ux + nx, ay - uy + ny], 1)
    quads[:, 1] = np.stack([ax - ux - nx, ay - uy - ny], 1)
    quads[:, 2] = np.stack([bx + ux - nx, by + uy - ny], 1)
    quads[:, 3] = np.stack([bx + ux + nx, by + uy + ny], 1)
    return quads


def _rect_quads(x0: FloatArray, y0: FloatArray, x1: FloatArray, y1: FloatArray) -> FloatArray:
    quads = np.empty((len(x0), 4, 2))
    quads[:, 0, 0], quads[:, 0, 1] = x0, y0
    quads[:, 1, 0], quads[:, 1, 1] = x1, y0
    quads[:, 2, 0], quads[:, 2, 1] = x1, y1
    quads[:, 3, 0], quads[:, 3, 1] = x0, y1
    return quads


def _crosswalk_stripes(crosswalks: FloatArray) -> FloatArray:
    """The painted stripes of zebra crossings: (n, 4, 2) rectangles.

    Args:
        crosswalks: ``(m, 4)``: centre x and y, 1 when the road runs north-south (0 east-west),
            and the road's half-width. Stripes are 1 m wide with 1 m gaps, run along the road
            for ``CROSSWALK_DEPTH_M`` and are centred across the road, at least 0.5 m from each kerb.
    """
    stripes = []
    for cx, cy, along_y, half in crosswalks:
        count = int(half)  # floor((2 * half - 1 + 1) / 2) stripes fit
        start = -(2 * count - 1) / 2.0 + np.arange(count) * 2.0  # stripe edges across the road
        across = np.stack([start, start + 1.0], 1)
        along = np.broadcast_to([-CROSSWALK_DEPTH_M / 2, CROSSWALK_DEPTH_M / 2], (count, 2))
        (xs, ys) = (across, along) if along_y else (along, across)
        stripes.append(_rect_quads(cx + xs[:, 0], cy + ys[:, 0], cx + xs[:, 1], cy + ys[:, 1]))
    return np.concatenate(stripes) if stripes else np.empty((0, 4, 2))


def _discs(x: FloatArray, y: FloatArray, r: FloatArray, k: int = 8) -> FloatArray:
    """Regular k-gons approximating discs: (n, k, 2)."""
    ang = np.linspace(0.0, 2.0 * math.pi, k, endpoint=False)
    out = np.empty((len(x), k, 2))
    out[..., 0] = x[:, None] + r[:, None] * np.cos(ang)[None]
    out[..., 1] = y[:, None] + r[:, None] * np.sin(ang)[None]
    return out


def _rotate(
    local: FloatArray, cx: FloatArray, cy: FloatArray, theta: FloatArray
) -> FloatArray:
    """Rotate (n, k, 2) local coordinates by ``theta`` and move them to ``(cx, cy)``."""
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    out = np.empty_like(local)
    out[..., 0] = cx[:, None] + local[..., 0] * cos - local[..., 1] * sin
    out[..., 1] = cy[:, None] + local[..., 0] * sin + local[..., 1] * cos
    return out


def _chunks(ids: list[int], limit: int = MAX_WAY_NODES) -> list[list[int]]:
    """Split a node list into pieces of at most ``limit`` nodes that share their end nodes."""
    if len(ids) <= limit:
        return [ids]
    out = []
    start = 0
    while start < len(ids) - 1:
        end = min(start + limit - 1, len(ids) - 1)
        out.append(ids[start : end + 1])
        start = end
    return out


def _utm_epsg(lon: float, lat: float) -> int:
    zone = math.floor((lon + 180.0) / 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def _validate(config: SynthConfig) -> None:
    checks = [
        (0.05 <= config.size_km <= 1000.0, "size_km must be between 0.05 and 1000"),
        (0.05 <= config.pixel_size_m <= 100.0, "pixel_size_m must be between 0.05 and 100"),
        (-180.0 <= config.center_lon <= 180.0, "center_lon must be between -180 and 180"),
        (-79.0 <= config.center_lat <= 83.0, "center_lat must lie in the UTM range (-79..83)"),
        (40.0 <= config.block_size_m <= 2000.0, "block_size_m must be between 40 and 2000"),
        (0.0 <= config.block_jitter <= 0.4, "block_jitter must be between 0 and 0.4"),
        (config.district_size_m > 0, "district_size_m must be positive"),
        (10.0 <= config.river_width_m <= 200.0, "river_width_m must be between 10 and 200"),
        (config.street_tree_spacing_m == 0 or config.street_tree_spacing_m >= 4,
         "street_tree_spacing_m must be 0 or at least 4"),
        (0.0 <= config.park_tree_density <= 20.0, "park_tree_density must be between 0 and 20"),
    ]
    weights = [
        config.residential_weight,
        config.commercial_weight,
        config.industrial_weight,
        config.park_weight,
    ]
    checks.append((min(weights) >= 0 and sum(weights) > 0, "district weights must be >= 0"))
    for name in ("apartment_fraction", "courtyard_fraction", "mph_fraction",
                 "bus_route_fraction", "signal_tertiary_fraction", "signal_approach_fraction",
                 "signal_crossing_fraction"):
        value = getattr(config, name)
        checks.append((0.0 <= value <= 1.0, f"{name} must be between 0 and 1"))
    for ok, message in checks:
        if not ok:
            raise GeoJepaError(f"invalid synthetic city config: {message}")


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def _signalised_junctions(
    cls_v: IntArray,
    cls_h: IntArray,
    node_kept: NDArray[np.bool_],
    h_present: NDArray[np.bool_],
    config: SynthConfig,
    rng: np.random.Generator,
) -> dict[tuple[int, int], bool]:
    """The signalised street junctions.

    Args:
        cls_v: Class of each north-south line.
        cls_h: Class of each east-west line.
        node_kept: ``[nx, ny]``, the grid nodes that exist.
        h_present: ``[ny, nx - 1]``, the east-west segments that exist.
        config: The city settings (``signal_*`` fractions).
        rng: The signals' random stream.

    Returns:
        ``{(i, j): per_approach}`` for every signalised grid junction: ``True`` when it is
        mapped with one signal node per approaching road, ``False`` for one node at the
        junction.
    """
    major_v = np.isin(cls_v, _MAJOR)[:, None]
    major_h = np.isin(cls_h, _MAJOR)[None, :]
    tertiary_v = (cls_v == _TERTIARY)[:, None]
    tertiary_h = (cls_h == _TERTIARY)[None, :]
    east_west = np.zeros(node_kept.shape, dtype=bool)  # an east-west street passes the node
    east_west[:-1] |= h_present.T
    east_west[1:] |= h_present.T
    u = rng.random(node_kept.shape + (2,))
    major_tertiary = (major_v & tertiary_h) | (tertiary_v & major_h)
    drawn = u[..., 0] < config.signal_tertiary_fraction
    signalised = (major_v & major_h) | (major_tertiary & drawn)
    signalised &= node_kept & east_west
    per_approach = u[..., 1] < config.signal_approach_fraction
    return {(int(i), int(j)): bool(per_approach[i, j]) for i, j in np.argwhere(signalised)}


@dataclass(frozen=True)
class _Streams:
    """The city's random streams, one per concern, so that one part's settings (e.g. the
    signals') leave the others' draws as they were."""

    grid: np.random.Generator
    river: np.random.Generator
    district: np.random.Generator
    roads: np.random.Generator
    lots: np.random.Generator
    tags: np.random.Generator
    poi: np.random.Generator
    park: np.random.Generator
    trees: np.random.Generator
    image: np.random.Generator
    signals: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> _Streams:
        streams = np.random.SeedSequence([seed, 0x5EED]).spawn(11)
        return cls(*(np.random.default_rng(s) for s in streams))


def _line_positions(size: float, config: SynthConfig, rng: np.random.Generator) -> FloatArray:
    """Jittered positions of one axis's street lines, from 0 to ``size`` inclusive."""
    n = max(2, round(size / config.block_size_m))
    d = 1.0 + config.block_jitter * rng.uniform(-1.0, 1.0, n)
    pos = np.concatenate([[0.0], np.cumsum(d / d.sum() * size)])
    pos[-1] = size
    return pos


def _line_classes(n: int, rng: np.random.Generator) -> IntArray:
    """Classes of ``n`` parallel street lines: a periodic hierarchy with a random phase."""
    k = (np.arange(n) - int(rng.integers(0, 8))) % 8
    cls = np.full(n, _RESIDENTIAL, dtype=np.int64)
    cls[k % 2 == 0] = _TERTIARY
    cls[k % 4 == 0] = _SECONDARY
    cls[k == 0] = _PRIMARY
    return cls


@dataclass(frozen=True)
class _River:
    """A sinusoidal river centreline, widening smoothly around its islands."""

    y0: float
    amplitude: float
    wavelength: float
    phase: float
    width: float
    island_x: FloatArray
    island_sigma: FloatArray

    @classmethod
    def draw(
        cls, config: SynthConfig, size: float, x: FloatArray, rng: np.random.Generator
    ) -> _River:
        """The river of a city of side ``size`` whose north-south street lines are at ``x``:
        islands in the middle of block columns away from the edges, spread along it."""
        w0 = config.river_width_m
        wavelength = min(rng.uniform(0.7, 1.3) * size, rng.uniform(3000.0, 6000.0))
        amplitude = min(rng.uniform(0.03, 0.06) * wavelength, 0.1 * size)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        y0 = rng.uniform(0.38, 0.62) * size
        ncx = len(x) - 1
        n_islands = max(1, int(size // 2500))
        inner_cols = np.arange(1, ncx - 1) if ncx >= 3 else np.arange(ncx)
        picks = np.sort(rng.choice(inner_cols, size=min(n_islands, len(inner_cols)), replace=False))
        return cls(
            y0,
            amplitude,
            wavelength,
            phase,
            w0,
            (x[picks] + x[picks + 1]) / 2.0,
            np.minimum((x[picks + 1] - x[picks]) / 4.0, 1.2 * w0),
        )

    def y(self, x: Any) -> Any:
        """Centreline y at ``x``."""
        return self.y0 + self.amplitude * np.sin(
            2.0 * math.pi * np.asarray(x) / self.wavelength + self.phase
        )

    def w(self, x: Any) -> FloatArray:
        """Width at ``x``."""
        x = np.asarray(x, dtype=np.float64)
        w = np.full(x.shape, self.width)
        for xi, si in zip(self.island_x, self.island_sigma):
            w = w + 1.2 * self.width * np.exp(-(((x - xi) / si) ** 2))
        return w


@dataclass(frozen=True)
class _Grid:
    """The street lines, their classes, and what of them the river leaves."""

    x: FloatArray  # north-south lines
    y: FloatArray  # east-west lines
    cls_v: IntArray
    cls_h: IntArray
    node_kept: NDArray[np.bool_]  # (nx, ny) junctions clear of the water
    h_present: NDArray[np.bool_]  # (ny, nx - 1) east-west segments clear of the water
    riverside: NDArray[np.bool_]  # (nx - 1, ny - 1) blocks touching the river
    bank_y: FloatArray  # the river's centre on each north-south line
    bank_hw: FloatArray  # and its half width there

    @classmethod
    def clear_of(
        cls, x: FloatArray, y: FloatArray, cls_v: IntArray, cls_h: IntArray, river: _River
    ) -> _Grid:
        """The grid with the river's clearances; samples per block column are shared by the
        segment and riverside tests, so the two agree."""
        t = np.linspace(0.0, 1.0, 33)
        col_xs = x[:-1, None] + (x[1:] - x[:-1])[:, None] * t[None, :]
        col_yc = river.y(col_xs)
        col_hw = river.w(col_xs) / 2.0
        col_lo = (col_yc - col_hw).min(1)
        col_hi = (col_yc + col_hw).max(1)
        seg_dist = (np.abs(y[:, None, None] - col_yc[None]) - col_hw[None]).min(2)  # (ny, ncx)
        vy = river.y(x)
        vhw = river.w(x) / 2.0
        node_kept = np.abs(y[None, :] - vy[:, None]) >= vhw[:, None] + NODE_CLEARANCE_M
        h_present = (seg_dist >= NODE_CLEARANCE_M) & node_kept[:-1, :].T & node_kept[1:, :].T
        riverside = (y[None, 1:] > col_lo[:, None] - NODE_CLEARANCE_M) & (
            y[None, :-1] < col_hi[:, None] + NODE_CLEARANCE_M
        )
        return cls(x, y, cls_v, cls_h, node_kept, h_present, riverside, vy, vhw)


@dataclass(frozen=True)
class _Blocks:
    """Each block's style and its interior (inside sidewalks and setbacks), ``(nx-1, ny-1)``."""

    style: IntArray
    x0: FloatArray
    x1: FloatArray
    y0: FloatArray
    y1: FloatArray

    @property
    def w(self) -> FloatArray:
        return self.x1 - self.x0

    @property
    def h(self) -> FloatArray:
        return self.y1 - self.y0


def _block_styles(
    config: SynthConfig, size: float, grid: _Grid, rng: np.random.Generator
) -> IntArray:
    """Each block's style: that of its nearest jittered district seed, riverside by the river."""
    D = config.district_size_m
    ng = math.ceil(size / D) + 1
    gx, gy = np.meshgrid(np.arange(ng), np.arange(ng), indexing="ij")
    sx = (gx + rng.uniform(0.1, 0.9, gx.shape)) * D
    sy = (gy + rng.uniform(0.1, 0.9, gy.shape)) * D
    r = np.hypot(sx - size / 2, sy - size / 2) / (size / 2)
    wts = np.stack(
        [
            np.full(r.shape, config.residential_weight),
            config.commercial_weight * (1.0 + 2.5 * np.exp(-((r / 0.45) ** 2))),
            config.industrial_weight * (0.4 + 1.2 * np.minimum(r, 1.5)),
            np.full(r.shape, config.park_weight),
        ],
        -1,
    )
    cum = np.cumsum(wts / wts.sum(-1, keepdims=True), -1)
    seed_district = (rng.random(r.shape)[..., None] > cum).sum(-1).clip(0, 3)
    apartments = rng.random(r.shape) < config.apartment_fraction
    seed_style = np.select(
        [seed_district == 0, seed_district == 1, seed_district == 2],
        [np.where(apartments, _APARTMENTS, _HOUSES), _COMMERCIAL, _INDUSTRIAL],
        _PARK,
    )
    CX, CY = np.meshgrid(
        (grid.x[:-1] + grid.x[1:]) / 2.0, (grid.y[:-1] + grid.y[1:]) / 2.0, indexing="ij"
    )
    lx = np.clip((CX // D).astype(np.int64), 0, ng - 1)
    ly = np.clip((CY // D).astype(np.int64), 0, ng - 1)
    best = np.full(CX.shape, np.inf)
    style = np.zeros(CX.shape, dtype=np.int64)
    for ox in (-1, 0, 1):
        for oy in (-1, 0, 1):
            ix = np.clip(lx + ox, 0, ng - 1)
            iy = np.clip(ly + oy, 0, ng - 1)
            d2 = (sx[ix, iy] - CX) ** 2 + (sy[ix, iy] - CY) ** 2
            better = d2 < best
            best = np.where(better, d2, best)
            style = np.where(better, seed_style[ix, iy], style)
    style[grid.riverside] = _RIVERSIDE
    land = ~grid.riverside
    if (
        config.courtyard_fraction > 0
        and land.any()
        and not np.isin(style[land], (_APARTMENTS, _COMMERCIAL)).any()
    ):
        # Guarantee courtyard candidates: the most central land block becomes commercial.
        dist = np.where(land, np.hypot(CX - size / 2, CY - size / 2), np.inf)
        style[np.unravel_index(np.argmin(dist), dist.shape)] = _COMMERCIAL
    return style


def _blocks(style: IntArray, grid: _Grid) -> _Blocks:
    """The blocks' interiors, inside the sidewalks and setbacks of their four streets."""
    width = np.asarray(ROAD_WIDTH_M)
    mv = width[grid.cls_v] / 2 + SIDEWALK_M + SETBACK_M
    mh = width[grid.cls_h] / 2 + SIDEWALK_M + SETBACK_M
    shape = style.shape
    return _Blocks(
        style,
        np.broadcast_to((grid.x[:-1] + mv[:-1])[:, None], shape),
        np.broadcast_to((grid.x[1:] - mv[1:])[:, None], shape),
        np.broadcast_to((grid.y[:-1] + mh[:-1])[None, :], shape),
        np.broadcast_to((grid.y[1:] - mh[1:])[None, :], shape),
    )


@dataclass(frozen=True)
class _Lots:
    """The built lots: size, south-west corner, style, and whether the front faces south."""

    w: FloatArray
    d: FloatArray
    x0: FloatArray
    y0: FloatArray
    style: IntArray
    front_low: NDArray[np.bool_]


def _lots(blocks: _Blocks, rng: np.random.Generator) -> tuple[_Lots, dict[tuple[int, int], float]]:
    """Cut the built blocks into lots: one row facing each side of a band (street or alley), any
    rest backyard. Returns the lots and the y of each block's alley, by block."""
    tab = _STYLE_TABLE
    built = (
        np.isin(blocks.style, (_HOUSES, _APARTMENTS, _COMMERCIAL, _INDUSTRIAL))
        & (blocks.w >= 10)
        & (blocks.h >= 10)
    )
    bi, bj = np.nonzero(built)
    bst = blocks.style[bi, bj]
    nb_cells = len(bi)
    lw_mean = np.array([tab[s].lot_w for s in range(4)])[bst] * rng.uniform(0.85, 1.15, nb_cells)
    ld_mean = np.array([tab[s].lot_d for s in range(4)])[bst] * rng.uniform(0.85, 1.15, nb_cells)
    W_ = blocks.w[bi, bj]
    H_ = blocks.h[bi, bj]
    alley = (rng.random(nb_cells) < np.array([tab[s].alley for s in range(4)])[bst]) & (
        H_ >= 2 * 0.7 * ld_mean + ALLEY_GAP_M
    )
    nbands = 1 + alley.astype(np.int64)
    gap = np.where(alley, ALLEY_GAP_M, 0.0)
    band_h = (H_ - gap) / nbands
    rows = np.clip(np.floor(band_h / ld_mean), 1, 2).astype(np.int64)
    cols = np.maximum(1, np.floor(W_ / lw_mean)).astype(np.int64)
    nlots = cols * rows * nbands
    cell_of = np.repeat(np.arange(nb_cells), nlots)
    start = np.cumsum(nlots) - nlots
    k = np.arange(int(nlots.sum())) - start[cell_of]
    col = k % cols[cell_of]
    rr = k // cols[cell_of]
    band = rr // rows[cell_of]
    kr = rr % rows[cell_of]
    lot_w = W_[cell_of] / cols[cell_of]
    lot_d = np.minimum(band_h[cell_of] / rows[cell_of], 1.3 * ld_mean[cell_of])
    lot_x0 = blocks.x0[bi, bj][cell_of] + col * lot_w
    band_y0 = blocks.y0[bi, bj][cell_of] + band * (band_h[cell_of] + gap[cell_of])
    front_low = kr == 0  # the lot's front (street or alley side) is its southern edge
    lot_y0 = band_y0 + np.where(front_low, 0.0, band_h[cell_of] - lot_d)
    lot_style = bst[cell_of]
    occ = np.array([tab[s].occupancy for s in range(4)])[lot_style]
    keep = (rng.random(len(k)) < occ) & (lot_w >= 9.0) & (lot_d >= 9.0)
    lots = _Lots(
        lot_w[keep], lot_d[keep], lot_x0[keep], lot_y0[keep], lot_style[keep], front_low[keep]
    )
    alley_y = {
        (int(i), int(j)): float((blocks.y0[i, j] + blocks.y1[i, j]) / 2.0)
        for i, j, a in zip(bi, bj, alley)
        if a
    }
    return lots, alley_y


@dataclass(frozen=True)
class _Shapes:
    """Building footprints: outer and courtyard rings, type, rotation, size, centre, style."""

    corners: FloatArray
    inner: FloatArray
    courtyard: NDArray[np.bool_]
    inset: FloatArray
    btype: IntArray
    theta: FloatArray
    bw: FloatArray
    bd: FloatArray
    bcx: FloatArray
    bcy: FloatArray
    style: IntArray


_UNIT_SQUARE = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


def _main_buildings(
    config: SynthConfig, lots: _Lots, rng: np.random.Generator
) -> tuple[_Shapes, FloatArray]:
    """One building per lot, sized and typed by its style; houses a front garden away from the
    street, some rotated; big apartment and commercial blocks with a courtyard. Returns the
    shapes and each lot's backyard depth."""
    tab = _STYLE_TABLE
    nlot = len(lots.w)
    btype = np.zeros(nlot, dtype=np.int64)
    for s in range(4):
        sel = np.nonzero(lots.style == s)[0]
        if len(sel):
            btype[sel] = _choice(rng, tab[s].types, len(sel))
    fill_lo = np.array([tab[s].fill[0] for s in range(4)])[lots.style]
    fill_hi = np.array([tab[s].fill[1] for s in range(4)])[lots.style]
    bw = np.maximum(lots.w * rng.uniform(fill_lo, fill_hi), 5.0)
    bd = np.maximum(lots.d * rng.uniform(fill_lo * 0.8, fill_hi * 0.8), 5.0)
    gable = np.isin(btype, _GABLE_TYPES)
    bd = np.where(gable, np.minimum(bd, 14.0), bd)
    theta = np.where(gable & (rng.random(nlot) < 0.3), np.radians(rng.uniform(-15, 15, nlot)), 0.0)
    c, s_ = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    ex = bw * c + bd * s_
    ey = bw * s_ + bd * c
    shrink = np.minimum(1.0, np.minimum((lots.w - 1.0) / ex, (lots.d - 1.0) / ey))
    bw, bd, ex, ey = bw * shrink, bd * shrink, ex * shrink, ey * shrink
    bcx = lots.x0 + lots.w / 2 + rng.uniform(-0.3, 0.3, nlot) * (lots.w - ex)
    centred = lots.y0 + lots.d / 2 + rng.uniform(-0.3, 0.3, nlot) * (lots.d - ey)
    front = np.minimum(rng.uniform(2.0, 5.0, nlot), np.maximum(lots.d - ey, 0.0) / 2)
    fronted = np.where(lots.front_low, lots.y0 + front + ey / 2, lots.y0 + lots.d - front - ey / 2)
    bcy = np.where(gable, fronted, centred)

    def place(w: FloatArray, d: FloatArray) -> FloatArray:
        return _rotate(_UNIT_SQUARE[None] * np.stack([w, d], -1)[:, None, :], bcx, bcy, theta)

    minside = np.minimum(bw, bd)
    court_ok = np.isin(btype, _COURTYARD_TYPES) & (theta == 0.0)
    courtyard = court_ok & (minside >= 26.0) & (rng.random(nlot) < config.courtyard_fraction)
    inset = np.minimum(rng.uniform(8.0, 11.0, nlot), (minside - 6.0) / 2.0)
    if config.courtyard_fraction > 0 and not courtyard.any():
        cand = np.nonzero(court_ok & (minside >= 18.0))[0]
        if len(cand):
            big = cand[np.argmax((bw * bd)[cand])]
            courtyard[big] = True
            inset[big] = 0.3 * minside[big]
    inner = place(np.maximum(bw - 2 * inset, 1.0), np.maximum(bd - 2 * inset, 1.0))
    shapes = _Shapes(
        place(bw, bd), inner, courtyard, inset, btype, theta, bw, bd, bcx, bcy, lots.style
    )
    return shapes, lots.d - front - ey


def _with_sheds(
    shapes: _Shapes, lots: _Lots, back: FloatArray, rng: np.random.Generator
) -> _Shapes:
    """``shapes`` followed by sheds and garages in the backyards of houses."""
    sheds = np.nonzero((lots.style == _HOUSES) & (back >= 7.0) & (rng.random(len(lots.w)) < 0.6))[0]
    sw = rng.uniform(3.0, 6.0, len(sheds))
    sd = rng.uniform(3.0, 5.0, len(sheds))
    scx = lots.x0[sheds] + 1 + sw / 2 + rng.random(len(sheds)) * (lots.w[sheds] - 2 - sw)
    scy = np.where(
        lots.front_low[sheds],
        lots.y0[sheds] + lots.d[sheds] - 1.0 - sd / 2,
        lots.y0[sheds] + 1.0 + sd / 2,
    )
    shed_type = np.where(rng.random(len(sheds)) < 0.6, _SHED, _GARAGE)
    quads = _rect_quads(scx - sw / 2, scy - sd / 2, scx + sw / 2, scy + sd / 2)
    none = np.zeros(len(sheds))
    added = _Shapes(
        quads,
        quads,
        none.astype(bool),
        none,
        shed_type,
        none,
        sw,
        sd,
        scx,
        scy,
        np.full(len(sheds), _HOUSES),
    )
    return _Shapes(
        *(
            np.concatenate([getattr(shapes, f.name), getattr(added, f.name)])
            for f in fields(_Shapes)
        )
    )


def _building_tag_values(btype: IntArray, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """``building:levels`` and ``addr:housenumber`` of each building (0: no tag)."""
    n = len(btype)
    lv_lo = np.array([a for a, _ in _BUILDING_LEVELS])[btype]
    lv_hi = np.array([b for _, b in _BUILDING_LEVELS])[btype]
    levels = rng.integers(lv_lo, lv_hi + 1)
    levels = np.where(np.isin(btype, (0, 1, _SHED, _GARAGE)) & (rng.random(n) < 0.5), 0, levels)
    housenumber = np.where((rng.random(n) < 0.4) & (btype < _SHED), rng.integers(1, 200, n), 0)
    return levels, housenumber


def _river_crossings(cls_v: IntArray, rng: np.random.Generator) -> NDArray[np.object_]:
    """How each north-south line crosses the river: ``car``, ``foot`` or ``none``; at least one
    footbridge, and one car bridge where another line is left."""
    nx = len(cls_v)
    u = rng.random(nx)
    crossing = np.full(nx, "none", dtype=object)
    crossing[np.isin(cls_v, _MAJOR)] = "car"
    crossing[(cls_v == _TERTIARY) & (u < 0.6)] = "car"
    crossing[(cls_v == _RESIDENTIAL) & (u < 0.1)] = "car"
    crossing[(cls_v == _RESIDENTIAL) & (u >= 0.1) & (u < 0.3)] = "foot"
    if not (crossing == "foot").any():
        minor = np.nonzero(cls_v >= _TERTIARY)[0]
        pool = minor if len(minor) else np.arange(nx)
        crossing[pool[int(rng.integers(0, len(pool)))]] = "foot"
    if not (crossing == "car").any():
        others = np.nonzero(crossing != "foot")[0]
        if len(others):
            crossing[others[int(rng.integers(0, len(others)))]] = "car"
    return crossing


_SIGNAL_TAGS: dict[str, Tags] = {
    "signal": {"highway": "traffic_signals", "source": SOURCE_VALUE},
    "crossing": {"highway": "crossing", "crossing": "traffic_signals", "source": SOURCE_VALUE},
}


@dataclass(frozen=True)
class _Water:
    """The river's water surface: its outer ring alone, with islands, and the islands' rings."""

    outer: Any
    area: Any
    islands: list[FloatArray]


class _CityPlanner:
    """Generates one city in memory (geometry in local metres, tags, image shapes), stage by
    stage; each stage draws from its own streams, in the order :meth:`plan` calls them."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self.size = config.size_km * 1000.0
        self.rng = _Streams.from_seed(config.seed)
        self.nodes = _Nodes()
        self.ways: list[tuple[list[int], Tags]] = []
        self.relations: list[tuple[list[Member], Tags]] = []
        self.made: dict[str, int] = dict.fromkeys(
            (
                "bridges",
                "car_bridges",
                "foot_bridges",
                "signal",
                "crossing",
                "waterways",
                "parks",
                "landuse",
                "pois",
                "trees",
                "bus_stops",
                "routes",
            ),
            0,
        )
        self.road_xy: dict[int, tuple[float, float]] = {}  # road node -> position
        # Road segments for the image: (ax, ay, bx, by, class, is_bridge).
        self.segs: list[tuple[float, float, float, float, int, bool]] = []
        self.crosswalks: list[tuple[float, float, bool, float]] = []  # centre, along y, half-width
        self.line_ways: dict[tuple[str, int], list[int]] = {}  # way indices along a line (routes)
        self.line_segments: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.per_approach: set[int] = set()  # junctions with a signal on each approach
        self.kerb: dict[int, tuple[float, float]] = {}

    def plan(self, with_shapes: bool) -> _City:
        """The whole city; ``with_shapes``: also the image's shapes."""
        config, size, rng = self.config, self.size, self.rng
        x, y = _line_positions(size, config, rng.grid), _line_positions(size, config, rng.grid)
        cls_v, cls_h = _line_classes(len(x), rng.grid), _line_classes(len(y), rng.grid)
        river = _River.draw(config, size, x, rng.river)
        grid = _Grid.clear_of(x, y, cls_v, cls_h, river)
        blocks = _blocks(_block_styles(config, size, grid, rng.district), grid)
        lots, alley_y = _lots(blocks, rng.lots)
        shapes, back = _main_buildings(config, lots, rng.lots)
        shapes = _with_sheds(shapes, lots, back, rng.lots)
        levels, housenumber = _building_tag_values(shapes.btype, rng.tags)
        node_id, crossing = self._roads(grid, alley_y)
        park_rects, park_paths = self._parks(blocks, node_id)
        water = self._river(river)
        riverside_polys = _riverside_parks(blocks, water.outer)
        self._park_ways(park_rects, riverside_polys)
        ground, ground_style = self._landuse(blocks)
        buildings = self._building_nodes(shapes, levels, housenumber)
        self._pois(shapes, [shapely.Polygon(r_) for r_ in park_rects] + riverside_polys)
        trees = self._trees(blocks, alley_y, park_rects, park_paths, riverside_polys)
        self._bus_routes(grid)
        counts = self._counts(buildings, len(water.islands))
        epsg = _utm_epsg(config.center_lon, config.center_lat)
        to_utm = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
        ce, cn = to_utm.transform(config.center_lon, config.center_lat)
        origin = (float(ce) - size / 2.0, float(cn) - size / 2.0)
        model = _model_summary(epsg, origin, size, grid, crossing, river, blocks)
        batches: list[_PolyBatch | _ShapeBatch] = []
        if with_shapes:
            batches = _image_batches(
                ground=ground,
                ground_style=ground_style,
                park_rects=park_rects,
                riverside_polys=riverside_polys,
                water=water.area,
                island_rings=water.islands,
                segs=np.asarray(self.segs, dtype=np.float64).reshape(-1, 6),
                crosswalks=np.asarray(self.crosswalks, dtype=np.float64).reshape(-1, 4),
                trees=trees,
                buildings=buildings,
                theta=shapes.theta,
                bw=shapes.bw,
                bd=shapes.bd,
                bcx=shapes.bcx,
                bcy=shapes.bcy,
                b_style=shapes.style,
                rng=rng.image,
            )
        return _City(
            config,
            size,
            epsg,
            origin,
            self.nodes,
            self.ways,
            buildings,
            self.relations,
            batches,
            counts,
            model,
        )

    # ---- road network -----------------------------------------------------------------------

    def _roads(
        self, grid: _Grid, alley_y: dict[tuple[int, int], float]
    ) -> tuple[IntArray, NDArray[np.object_]]:
        """Every road: the street lines (bridges, signals), then the alleys. Returns the grid
        junctions' node ids ``(nx, ny)`` and each north-south line's river crossing."""
        nx, ny = len(grid.x), len(grid.y)
        node_id = np.zeros((nx, ny), dtype=np.int64)
        ki, kj = np.nonzero(grid.node_kept)
        node_id[ki, kj] = self.nodes.add(grid.x[ki], grid.y[kj])
        self.road_xy.update(
            {
                int(n): (float(grid.x[i]), float(grid.y[j]))
                for n, i, j in zip(node_id[ki, kj], ki, kj)
            }
        )
        crossing = _river_crossings(grid.cls_v, self.rng.roads)
        junction_ys: dict[int, set[float]] = {}  # alley junctions on the north-south lines
        for (i, _), y in alley_y.items():
            junction_ys.setdefault(i, set()).add(y)
            junction_ys.setdefault(i + 1, set()).add(y)
        self._signals(grid, node_id)
        junction_id: dict[tuple[int, float], int] = {}
        for i in range(nx):
            self._north_south(
                i, grid, node_id, crossing[i], sorted(junction_ys.get(i, ())), junction_id
            )
        for j in range(ny):
            self._east_west(j, grid, node_id)
        for (i, _), y in alley_y.items():
            a, b = junction_id[(i, y)], junction_id[(i + 1, y)]
            tags = self._road_tags(_SERVICE, None)
            self.ways.append(
                (
                    [a, b],
                    {
                        "highway": "service",
                        "service": "alley",
                        **{k_: v for k_, v in tags.items() if k_ != "highway"},
                    },
                )
            )
            self._add_segments([a, b], _SERVICE, False)
        return node_id, crossing

    def _signals(self, grid: _Grid, node_id: IntArray) -> None:
        """Choose the signalised junctions; tag those mapped with one node at the junction, and
        note the others and every such junction's kerb distances for :meth:`_with_signals`."""
        plan = _signalised_junctions(
            grid.cls_v, grid.cls_h, grid.node_kept, grid.h_present, self.config, self.rng.signals
        )
        self.per_approach = {int(node_id[i, j]) for (i, j), approach in plan.items() if approach}
        for (i, j), approach in plan.items():
            if not approach:
                self.nodes.set_tags(int(node_id[i, j]), _SIGNAL_TAGS["signal"])
        self.made["signal"] = len(plan) - len(self.per_approach)
        # Per junction node: half the width of the road crossing a north-south arm (the
        # east-west street) and of the road crossing an east-west arm.
        self.kerb = {
            int(node_id[i, j]): (
                ROAD_WIDTH_M[grid.cls_h[j]] / 2.0,
                ROAD_WIDTH_M[grid.cls_v[i]] / 2.0,
            )
            for i, j in plan
        }

    def _road_node(self, x: float, y: float, tags: Tags | None = None) -> int:
        nid = self.nodes.add_one(x, y, tags)
        self.road_xy[nid] = (x, y)
        return nid

    def _north_south(
        self,
        i: int,
        grid: _Grid,
        node_id: IntArray,
        crossing: str,
        junction_ys: list[float],
        junction_id: dict[tuple[int, float], int],
    ) -> None:
        """The ways of north-south line ``i``: runs split at the river, and its bridge."""
        cls = int(grid.cls_v[i])
        name = f"Synth Avenue {i + 1}"
        xi = float(grid.x[i])
        stations: list[tuple[float, int, str]] = [
            (float(grid.y[j]), int(node_id[i, j]), "node") for j in np.nonzero(grid.node_kept[i])[0]
        ]
        ys = float(grid.bank_y[i] - grid.bank_hw[i] - BANK_CLEARANCE_M)
        yn = float(grid.bank_y[i] + grid.bank_hw[i] + BANK_CLEARANCE_M)
        for y, kind in ((ys, "bank_s"), (yn, "bank_n")):
            stations.append((y, self._road_node(xi, y), kind))
        for y in junction_ys:
            junction_id[(i, y)] = nid = self._road_node(xi, y)
            stations.append((y, nid, "junction"))
        stations.sort()
        where = {nid: (y, kind) for y, nid, kind in stations}
        ids = [st[1] for st in stations]
        kinds = [st[2] for st in stations]
        runs: list[list[int]] = [[ids[0]]]
        crossing_seg: tuple[int, int] | None = None
        for a in range(len(ids) - 1):
            if kinds[a] == "bank_s" and kinds[a + 1] == "bank_n":
                crossing_seg = (ids[a], ids[a + 1])
                runs.append([ids[a + 1]])
            else:
                runs[-1].append(ids[a + 1])
        key = ("v", i)
        self.line_ways[key] = []
        self.line_segments[key] = []
        for run_index, run in enumerate(runs):
            if run_index == 1 and crossing_seg is not None and crossing != "none":
                self._bridge(crossing_seg, crossing, cls, name, key)
            for piece in self._split_run(run):
                self._add_road(self._with_signals(piece, where, xi, True, cls), cls, name, key)
                self.line_segments[key].extend(itertools.pairwise(piece))
        if crossing != "car":
            self.line_ways[key] = []  # a bus route needs a continuous street

    def _bridge(
        self, ends: tuple[int, int], crossing: str, cls: int, name: str, key: tuple[str, int]
    ) -> None:
        """A car bridge or footbridge between the river banks."""
        if crossing == "car":
            tags = self._road_tags(cls, name)
            self.made["car_bridges"] += 1
            bcls = cls
        else:
            tags = {"highway": "footway", "surface": "wood", "source": SOURCE_VALUE}
            self.made["foot_bridges"] += 1
            bcls = _FOOTWAY
        self.made["bridges"] += 1
        self.ways.append(([*ends], {**tags, "bridge": "yes", "layer": "1"}))
        self.line_ways[key].append(len(self.ways) - 1)
        self._add_segments([*ends], bcls, True)

    def _add_road(self, road: list[int], cls: int, name: str, key: tuple[str, int] | None) -> None:
        """A road way of ``cls``, counted on its line ``key`` (for bus routes) unless None."""
        self.ways.append((road, self._road_tags(cls, name)))
        if key is not None:
            self.line_ways[key].append(len(self.ways) - 1)
        self._add_segments(road, cls, False)

    def _east_west(self, j: int, grid: _Grid, node_id: IntArray) -> None:
        """The ways of east-west line ``j``: its runs of segments clear of the water."""
        cls = int(grid.cls_h[j])
        name = f"Synth Street {j + 1}"
        key = ("h", j)
        self.line_ways[key] = []
        self.line_segments[key] = []
        runs: list[list[int]] = []
        run: list[int] = []
        for i in range(len(grid.x) - 1):
            if grid.h_present[j, i]:
                if not run:
                    run = [int(node_id[i, j])]
                run.append(int(node_id[i + 1, j]))
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        where = {
            int(node_id[i, j]): (float(grid.x[i]), "node")
            for i in np.nonzero(grid.node_kept[:, j])[0]
        }
        for run in runs:
            for piece in self._split_run(run):
                road = self._with_signals(piece, where, float(grid.y[j]), False, cls)
                self._add_road(road, cls, name, key if len(runs) == 1 else None)
                self.line_segments[key].extend(itertools.pairwise(piece))

    def _road_tags(self, cls: int, name: str | None) -> Tags:
        """Tags of a road of class ``cls``: maxspeed (sometimes in mph), lanes, surface, name."""
        rng = self.rng.tags
        tags: Tags = {"highway": ROAD_CLASSES[cls]}
        kmh = MAXSPEED_KMH[cls]
        if kmh and not (cls == _SERVICE and rng.random() < 0.5):
            if rng.random() < self.config.mph_fraction:
                tags["maxspeed"] = MAXSPEED_MPH[kmh]
            else:
                tags["maxspeed"] = str(kmh)
        lanes = _pick(rng.random(), _LANES[cls])
        if lanes:
            tags["lanes"] = lanes
        tags["surface"] = _pick(rng.random(), _SURFACES[cls])
        if name:
            tags["name"] = name
        tags["source"] = SOURCE_VALUE
        return tags

    def _split_run(self, run: list[int]) -> list[list[int]]:
        """A run of a street line's nodes cut into ways of 2-6 segments (no 1-segment tail)."""
        out = []
        at = 0
        while at < len(run) - 1:
            end = min(at + int(self.rng.roads.integers(2, 7)), len(run) - 1)
            if len(run) - 1 - end == 1:
                end += 1
            out.append(run[at : end + 1])
            at = end
        return out

    def _with_signals(
        self,
        piece: list[int],
        where: dict[int, tuple[float, str]],
        fixed: float,
        vertical: bool,
        cls: int,
    ) -> list[int]:
        """A road way's nodes with its approach signals and signalised crossings inserted.

        ``where`` maps the line's nodes to their coordinate along the line and their kind
        (``"node"`` for a grid junction); ``fixed`` is the line's other coordinate. The zebra
        crossings of the way's signalised junction arms and crossings go to ``crosswalks``.
        """
        out = piece[:1]
        half = ROAD_WIDTH_M[cls] / 2.0
        for a, b in itertools.pairwise(piece):
            (ca, ka), (cb, kb) = where[a], where[b]
            extra: list[tuple[float, str]] = []
            if cb - ca > 3 * SIGNAL_SETBACK_M:
                if a in self.per_approach:
                    extra.append((ca + SIGNAL_SETBACK_M, "signal"))
                if b in self.per_approach:
                    extra.append((cb - SIGNAL_SETBACK_M, "signal"))
            if (
                cls in _MAJOR
                and ka == kb == "node"
                and cb - ca > 4 * SIGNAL_SETBACK_M
                and self.rng.signals.random() < self.config.signal_crossing_fraction
            ):
                extra.append(((ca + cb) / 2.0, "crossing"))
            painted = [c for c, kind in extra if kind == "crossing"]
            for node, c, sign in ((a, ca, 1.0), (b, cb, -1.0)):
                if node in self.kerb:
                    offset = self.kerb[node][0 if vertical else 1] + CROSSWALK_GAP_M
                    if cb - ca > 2 * (offset + CROSSWALK_DEPTH_M):
                        painted.append(c + sign * (offset + CROSSWALK_DEPTH_M / 2.0))
            self.crosswalks.extend(
                ((fixed, c) if vertical else (c, fixed)) + (vertical, half) for c in painted
            )
            for c, kind in sorted(extra):
                xy = (fixed, c) if vertical else (c, fixed)
                out.append(self._road_node(*xy, _SIGNAL_TAGS[kind]))
                self.made[kind] += 1
            out.append(b)
        return out

    def _add_segments(self, ids: list[int], cls: int, bridge: bool) -> None:
        for a, b in itertools.pairwise(ids):
            self.segs.append((*self.road_xy[a], *self.road_xy[b], cls, bridge))

    # ---- parks, water, landuse --------------------------------------------------------------

    def _parks(
        self, blocks: _Blocks, node_id: IntArray
    ) -> tuple[list[FloatArray], list[tuple[int, int] | None]]:
        """The park blocks' rectangles and each one's diagonal footway, if any (ways now)."""
        park_rects: list[FloatArray] = []
        park_paths: list[tuple[int, int] | None] = []
        for i, j in np.argwhere(blocks.style == _PARK):
            x0, x1 = float(blocks.x0[i, j] - SETBACK_M), float(blocks.x1[i, j] + SETBACK_M)
            y0, y1 = float(blocks.y0[i, j] - SETBACK_M), float(blocks.y1[i, j] + SETBACK_M)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            park_rects.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
            path: tuple[int, int] | None = None
            if self.rng.park.random() < 0.7:
                if self.rng.park.random() < 0.5:
                    path = (int(node_id[i, j]), int(node_id[i + 1, j + 1]))
                else:
                    path = (int(node_id[i + 1, j]), int(node_id[i, j + 1]))
                self.ways.append(([path[0], path[1]], self._road_tags(_FOOTWAY, None)))
                self._add_segments([path[0], path[1]], _FOOTWAY, False)
            park_paths.append(path)
        return park_rects, park_paths

    def _river(self, river: _River) -> _Water:
        """The river's centreline ways and its water multipolygon (bank ways, island rings)."""
        size, nodes, ways = self.size, self.nodes, self.ways
        rx = np.arange(-RIVER_OVERHANG_M, size + RIVER_OVERHANG_M + RIVER_STEP_M / 2, RIVER_STEP_M)
        rx[-1] = size + RIVER_OVERHANG_M
        ry = river.y(rx)
        rw = river.w(rx) / 2.0
        for piece in _chunks(nodes.add(rx, ry).tolist()):
            ways.append(
                (piece, {"waterway": "river", "name": "Synth River", "source": SOURCE_VALUE})
            )
            self.made["waterways"] += 1
        south_ids = nodes.add(rx, ry - rw).tolist()
        north_ids = nodes.add(rx, ry + rw).tolist()
        members: list[Member] = []
        for part in (south_ids + [north_ids[-1]], north_ids[::-1] + [south_ids[0]]):
            for piece in _chunks(part):
                ways.append((piece, {}))
                members.append(("w", len(ways), "outer"))
        island_rings: list[FloatArray] = []
        ang = np.linspace(0.0, 2.0 * math.pi, 24, endpoint=False)
        for xi, si in zip(river.island_x, river.island_sigma):
            rot = math.atan(float(river.y(xi + 1.0) - river.y(xi - 1.0)) / 2.0)
            ex_, ey_ = 1.1 * si * np.cos(ang), 0.5 * river.width * np.sin(ang)
            px = xi + ex_ * math.cos(rot) - ey_ * math.sin(rot)
            py = float(river.y(xi)) + ex_ * math.sin(rot) + ey_ * math.cos(rot)
            ids = nodes.add(px, py).tolist()
            ways.append((ids + [ids[0]], {}))
            members.append(("w", len(ways), "inner"))
            island_rings.append(np.stack([px, py], 1))
        self.relations.append(
            (
                members,
                {
                    "type": "multipolygon",
                    "natural": "water",
                    "water": "river",
                    "name": "Synth River",
                    "source": SOURCE_VALUE,
                },
            )
        )
        outer_ring = np.concatenate(
            [np.stack([rx, ry - rw], 1), np.stack([rx[::-1], (ry + rw)[::-1]], 1)]
        )
        return _Water(
            shapely.Polygon(outer_ring), shapely.Polygon(outer_ring, island_rings), island_rings
        )

    def _park_ways(self, park_rects: list[FloatArray], riverside_polys: list[Any]) -> None:
        """The parks as ``leisure=park`` closed ways: the park blocks, then the riverside ones."""
        for ring in park_rects:
            ids = self.nodes.add(ring[:, 0], ring[:, 1]).tolist()
            self.ways.append((ids + [ids[0]], {"leisure": "park", "source": SOURCE_VALUE}))
            self.made["parks"] += 1
        for poly in riverside_polys:
            coords = np.asarray(poly.exterior.coords)[:-1]
            ids = self.nodes.add(coords[:, 0], coords[:, 1]).tolist()
            self.ways.append(
                (
                    ids + [ids[0]],
                    {
                        "leisure": "park",
                        "name": f"Synth Riverside {self.made['parks']}",
                        "source": SOURCE_VALUE,
                    },
                )
            )
            self.made["parks"] += 1

    def _landuse(self, blocks: _Blocks) -> tuple[FloatArray, IntArray]:
        """A ``landuse=*`` closed way per built block; returns every built block's ground quad
        and style (for the image)."""
        gi, gj = np.nonzero(np.isin(blocks.style, (_HOUSES, _APARTMENTS, _COMMERCIAL, _INDUSTRIAL)))
        ground = _rect_quads(
            blocks.x0[gi, gj] - SETBACK_M,
            blocks.y0[gi, gj] - SETBACK_M,
            blocks.x1[gi, gj] + SETBACK_M,
            blocks.y1[gi, gj] + SETBACK_M,
        )
        ok = (blocks.w[gi, gj] > 0) & (blocks.h[gi, gj] > 0)
        for q, st in zip(ground[ok], blocks.style[gi, gj][ok]):
            ids = self.nodes.add(q[:, 0], q[:, 1]).tolist()
            value = _pick(self.rng.tags.random(), _STYLE_TABLE[int(st)].landuse)
            self.ways.append((ids + [ids[0]], {"landuse": value, "source": SOURCE_VALUE}))
            self.made["landuse"] += 1
        return ground, blocks.style[gi, gj]

    # ---- buildings, POIs, trees, routes -----------------------------------------------------

    def _building_nodes(
        self, shapes: _Shapes, levels: IntArray, housenumber: IntArray
    ) -> _Buildings:
        """The buildings' nodes, one block of ids each: outer corners, then courtyard corners."""
        per = np.where(shapes.courtyard, 8, 4)
        flat = np.concatenate([shapes.corners, shapes.inner], 1)[
            np.arange(8)[None, :] < per[:, None]
        ]
        first = self.nodes.count + 1 + np.cumsum(per) - per
        self.nodes.add(flat[:, 0], flat[:, 1])
        return _Buildings(
            shapes.corners, shapes.inner, shapes.courtyard, shapes.btype, levels, housenumber, first
        )

    def _poi_tags(self, kind: tuple[str, str]) -> Tags:
        tags = {kind[0]: kind[1]}
        if kind[1] not in _UNNAMED_POIS and self.rng.poi.random() < 0.5:
            tags["name"] = f"Synth {kind[1].replace('_', ' ').title()}"
        tags["source"] = SOURCE_VALUE
        return tags

    def _pois(self, shapes: _Shapes, park_shapes: list[Any]) -> None:
        """Point POIs fitting the district inside buildings (at the centre, or in the middle of
        a courtyard's southern wing), and park POIs inside the parks."""
        rng = self.rng.poi
        rate = np.array([_STYLE_TABLE[s].poi_rate for s in range(4)])[shapes.style]
        has_poi = (rng.random(len(shapes.btype)) < rate) & (shapes.btype < _SHED)
        corners = shapes.corners
        pcx = corners[:, :, 0].mean(1)
        pcy = np.where(
            shapes.courtyard, corners[:, 0, 1] + shapes.inset / 2.0, corners[:, :, 1].mean(1)
        )
        for b in np.nonzero(has_poi)[0]:
            options = _STYLE_TABLE[int(shapes.style[b])].pois
            self.nodes.add_one(
                float(pcx[b]),
                float(pcy[b]),
                self._poi_tags(options[int(rng.integers(0, len(options)))]),
            )
            self.made["pois"] += 1
        for poly in park_shapes:
            n = int(min(6, rng.poisson(poly.area / 4000.0)))
            if n == 0:
                continue
            x0, y0, x1, y1 = poly.bounds
            px = rng.uniform(x0, x1, 8 * n)
            py = rng.uniform(y0, y1, 8 * n)
            inside = shapely.contains_xy(poly, px, py)
            for x, y in list(zip(px[inside], py[inside]))[:n]:
                kind = _PARK_POIS[int(rng.integers(0, len(_PARK_POIS)))]
                self.nodes.add_one(float(x), float(y), self._poi_tags(kind))
                self.made["pois"] += 1

    def _trees(
        self,
        blocks: _Blocks,
        alley_y: dict[tuple[int, int], float],
        park_rects: list[FloatArray],
        park_paths: list[tuple[int, int] | None],
        riverside_polys: list[Any],
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Street and park trees (``natural=tree`` nodes); returns their x, y and crown radius."""
        tree_refs = [
            self.nodes.table({"natural": "tree", "source": SOURCE_VALUE}),
            self.nodes.table(
                {"natural": "tree", "leaf_type": "broadleaved", "source": SOURCE_VALUE}
            ),
            self.nodes.table(
                {"natural": "tree", "leaf_type": "needleleaved", "source": SOURCE_VALUE}
            ),
        ]
        rng = self.rng.trees
        tx, ty, tr = _street_trees(
            self.config, blocks.style, blocks.x0, blocks.x1, blocks.y0, blocks.y1, alley_y, rng
        )
        paths = [
            None if p_ is None else (self.road_xy[p_[0]], self.road_xy[p_[1]]) for p_ in park_paths
        ]
        px_, py_, pr_ = _park_trees(self.config, park_rects, paths, riverside_polys, rng)
        tx, ty, tr = np.concatenate([tx, px_]), np.concatenate([ty, py_]), np.concatenate([tr, pr_])
        kind_u = rng.random(len(tx))
        tree_ref = np.where(
            kind_u < 0.7, tree_refs[0], np.where(kind_u < 0.94, tree_refs[1], tree_refs[2])
        )
        self.nodes.add(tx, ty, tree_ref)
        self.made["trees"] = len(tx)
        return tx, ty, tr

    def _bus_routes(self, grid: _Grid) -> None:
        """Bus route relations over some continuous major streets, with platform nodes."""
        rng = self.rng.roads
        major_keys = [("v", i) for i in range(len(grid.x)) if grid.cls_v[i] in _MAJOR] + [
            ("h", j) for j in range(len(grid.y)) if grid.cls_h[j] in _MAJOR
        ]
        major_keys = [k_ for k_ in major_keys if self.line_ways[k_]]
        chosen = [k_ for k_ in major_keys if rng.random() < self.config.bus_route_fraction]
        if not chosen and major_keys and self.config.bus_route_fraction > 0:
            chosen = [major_keys[int(rng.integers(0, len(major_keys)))]]
        for key in chosen:
            orient, li = key
            cls = int(grid.cls_v[li] if orient == "v" else grid.cls_h[li])
            off = ROAD_WIDTH_M[cls] / 2 + SIDEWALK_M / 2
            stops: list[Member] = []
            for a, b in self.line_segments[key][1::3]:
                (ax, ay), (bx, by) = self.road_xy[a], self.road_xy[b]
                length = math.hypot(bx - ax, by - ay)
                if length < 20:
                    continue
                mx, my = (ax + bx) / 2, (ay + by) / 2
                sid = self.nodes.add_one(
                    mx + (by - ay) / length * off,
                    my - (bx - ax) / length * off,
                    {
                        "highway": "bus_stop",
                        "public_transport": "platform",
                        "bus": "yes",
                        "source": SOURCE_VALUE,
                    },
                )
                stops.append(("n", sid, "platform"))
                self.made["bus_stops"] += 1
            self.made["routes"] += 1
            routes = self.made["routes"]
            self.relations.append(
                (
                    stops + [("w", w + 1, "") for w in self.line_ways[key]],
                    {
                        "type": "route",
                        "route": "bus",
                        "ref": str(routes),
                        "name": f"Synth bus {routes}",
                        "source": SOURCE_VALUE,
                    },
                )
            )

    # ---- summary ----------------------------------------------------------------------------

    def _counts(self, buildings: _Buildings, islands: int) -> dict[str, int]:
        """The ground-truth counts of the summary JSON."""
        made, ways, nodes = self.made, self.ways, self.nodes
        nbld = buildings.count
        btype = buildings.btype
        n_court = int(buildings.courtyard.sum())
        highway_counts = {c_: 0 for c_ in ROAD_CLASSES}
        maxspeed_ways = mph_ways = 0
        for _, tags in ways:
            h = tags.get("highway")
            if h is not None:
                highway_counts[h] += 1
            ms = tags.get("maxspeed")
            if ms is not None:
                maxspeed_ways += 1
                mph_ways += ms.endswith("mph")
        tagged_nodes = nodes.tagged_count()
        tagged_ways = sum(1 for _, tags in ways if tags) + nbld - n_court
        n_relations = len(self.relations) + n_court
        return {
            "nodes": nodes.count,
            "ways": len(ways) + nbld + n_court,
            "relations": n_relations,
            "tagged_nodes": tagged_nodes,
            "tagged_ways": tagged_ways,
            "entities": tagged_nodes + tagged_ways + n_relations,
            "buildings": nbld,
            "building_ways": nbld - n_court,
            "building_relations": n_court,
            **{
                f"building_{name}": int((btype == t_).sum())
                for t_, name in enumerate(BUILDING_TYPES)
            },
            "highways": sum(highway_counts.values()),
            **{f"highway_{c_}": v for c_, v in highway_counts.items()},
            "traffic_signals": made["signal"],
            "signal_crossings": made["crossing"],
            "crosswalks": len(self.crosswalks),
            "bridges": made["bridges"],
            "car_bridges": made["car_bridges"],
            "foot_bridges": made["foot_bridges"],
            "maxspeed_ways": maxspeed_ways,
            "maxspeed_mph": mph_ways,
            "waterways": made["waterways"],
            "water_areas": 1,
            "islands": islands,
            "parks": made["parks"],
            "landuse": made["landuse"],
            "trees": made["trees"],
            "pois": made["pois"],
            "bus_stops": made["bus_stops"],
            "routes": made["routes"],
            "multipolygons": 1 + n_court,
        }


def _riverside_parks(blocks: _Blocks, water_outer: Any) -> list[Any]:
    """Riverside park polygons: each riverside block minus the (buffered) water."""
    water_buffer = water_outer.buffer(PARK_BANK_CLEARANCE_M)
    polys: list[Any] = []
    for i, j in np.argwhere(blocks.style == _RIVERSIDE):
        x0, x1 = float(blocks.x0[i, j] - SETBACK_M), float(blocks.x1[i, j] + SETBACK_M)
        y0, y1 = float(blocks.y0[i, j] - SETBACK_M), float(blocks.y1[i, j] + SETBACK_M)
        if x1 - x0 < 8 or y1 - y0 < 8:
            continue
        rest = shapely.box(x0, y0, x1, y1).difference(water_buffer)
        for piece in getattr(rest, "geoms", [rest]):
            if piece.geom_type != "Polygon" or piece.area < 150.0:
                continue
            piece = shapely.Polygon(piece.exterior).simplify(0.5)
            if not piece.is_empty and piece.area >= 150.0:
                polys.append(piece)
    return polys


def _model_summary(
    epsg: int,
    origin: tuple[float, float],
    size: float,
    grid: _Grid,
    crossing: NDArray[np.object_],
    river: _River,
    blocks: _Blocks,
) -> dict[str, Any]:
    """The generative model's derived parameters, for the summary JSON."""
    return {
        "utm_epsg": epsg,
        "local_origin_utm": list(origin),
        "size_m": size,
        "streets": {
            "north_south_x_m": grid.x.round(3).tolist(),
            "east_west_y_m": grid.y.round(3).tolist(),
            "north_south_class": [ROAD_CLASSES[c_] for c_ in grid.cls_v],
            "east_west_class": [ROAD_CLASSES[c_] for c_ in grid.cls_h],
            "north_south_river_crossing": crossing.tolist(),
            "road_width_m": dict(zip(ROAD_CLASSES, ROAD_WIDTH_M)),
            "maxspeed_kmh": dict(zip(ROAD_CLASSES[:5], MAXSPEED_KMH[:5])),
            "maxspeed_mph_strings": {str(k_): v for k_, v in MAXSPEED_MPH.items()},
            "crosswalk_depth_m": CROSSWALK_DEPTH_M,
            "crosswalk_gap_m": CROSSWALK_GAP_M,
        },
        "river": {
            "center_y_m": river.y0,
            "amplitude_m": river.amplitude,
            "wavelength_m": river.wavelength,
            "phase_rad": river.phase,
            "width_m": river.width,
            "island_x_m": river.island_x.tolist(),
        },
        "blocks": {name: int((blocks.style == k_).sum()) for k_, name in enumerate(STYLES)},
        "block_styles": {
            STYLES[k_]: {
                "lot_width_m": st.lot_w,
                "lot_depth_m": st.lot_d,
                "building_fill": list(st.fill),
                "lot_occupancy": st.occupancy,
                "alley_probability": st.alley,
                "building_types": {BUILDING_TYPES[t_]: p_ for t_, p_ in st.types},
                "landuse": dict(st.landuse),
                "poi_rate": st.poi_rate,
                "pois": [f"{a}={b}" for a, b in st.pois],
                "street_tree_probability": st.street_trees,
            }
            for k_, st in _STYLE_TABLE.items()
        },
        "building_types": list(BUILDING_TYPES),
        "building_levels": {BUILDING_TYPES[t_]: list(v) for t_, v in enumerate(_BUILDING_LEVELS)},
        "park_pois": [f"{a}={b}" for a, b in _PARK_POIS],
    }


def _plan_city(config: SynthConfig, with_shapes: bool = True) -> _City:
    """Generate the whole city in memory (geometry in local metres, tags, image shapes)."""
    _validate(config)
    return _CityPlanner(config).plan(with_shapes)


def _street_trees(
    config: SynthConfig,
    style: IntArray,
    IX0: FloatArray,
    IX1: FloatArray,
    IY0: FloatArray,
    IY1: FloatArray,
    alley_y: dict[tuple[int, int], float],
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Trees along the sidewalks around blocks: x, y and crown radius."""
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    if config.street_tree_spacing_m <= 0:
        return empty
    prob = np.array([_STYLE_TABLE[s].street_trees for s in range(4)] + [_PARK_STREET_TREES, 0.0])
    has = (rng.random(style.shape) < prob[style]) & (IX1 - IX0 > 20) & (IY1 - IY0 > 20)
    ci, cj = np.nonzero(has)
    if not len(ci):
        return empty
    off = SETBACK_M + SIDEWALK_M / 2  # sidewalk centre line
    x0, x1 = IX0[ci, cj] - off, IX1[ci, cj] + off
    y0, y1 = IY0[ci, cj] - off, IY1[ci, cj] + off
    # Four sides per block: start point, unit direction, length.
    sx = np.stack([x0, x0, x0, x1], 1).ravel()
    sy = np.stack([y0, y1, y0, y0], 1).ravel()
    horizontal = np.tile([True, True, False, False], len(ci))
    length = np.stack([x1 - x0, x1 - x0, y1 - y0, y1 - y0], 1).ravel()
    spacing = np.repeat(config.street_tree_spacing_m * rng.uniform(0.85, 1.15, len(ci)), 4)
    margin = 9.0  # keep clear of intersections
    n = np.maximum(0, np.floor((length - 2 * margin) / spacing).astype(np.int64) + 1)
    n = np.where(length > 2 * margin, n, 0)
    side = np.repeat(np.arange(len(sx)), n)
    k = np.arange(int(n.sum())) - (np.cumsum(n) - n)[side]
    along = margin + k * spacing[side] + rng.uniform(-1.0, 1.0, len(side))
    tx = np.where(horizontal[side], sx[side] + along, sx[side])
    ty = np.where(horizontal[side], sy[side], sy[side] + along)
    # No trees across the mouth of an alley.
    keep = np.ones(len(tx), dtype=bool)
    alley_at = np.full(len(ci), np.nan)
    for b, (i, j) in enumerate(zip(ci.tolist(), cj.tolist())):
        alley_at[b] = alley_y.get((i, j), np.nan)
    ay = alley_at[side // 4]
    keep &= ~(~horizontal[side] & (np.abs(ty - ay) < 6.0))
    radius = rng.uniform(2.2, 3.6, len(tx))
    return tx[keep], ty[keep], radius[keep]


def _park_trees(
    config: SynthConfig,
    park_rects: list[FloatArray],
    park_paths: list[tuple[tuple[float, float], tuple[float, float]] | None],
    riverside_polys: list[Any],
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Trees scattered over parks, clear of the diagonal paths: x, y and crown radius."""
    xs: list[FloatArray] = []
    ys: list[FloatArray] = []
    if config.park_tree_density <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    polys = [shapely.Polygon(r) for r in park_rects] + list(riverside_polys)
    paths = list(park_paths) + [None] * len(riverside_polys)
    for poly, path in zip(polys, paths):
        n = int(rng.poisson(poly.area / 1000.0 * config.park_tree_density * rng.uniform(0.5, 1.5)))
        if n == 0:
            continue
        x0, y0, x1, y1 = poly.bounds
        px = rng.uniform(x0, x1, 2 * n)
        py = rng.uniform(y0, y1, 2 * n)
        inside = shapely.contains_xy(poly.buffer(-3.0), px, py)
        if path is not None:
            (ax, ay), (bx, by) = path
            dx, dy = bx - ax, by - ay
            t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
            inside &= np.hypot(px - ax - t * dx, py - ay - t * dy) > 5.0
        xs.append(px[inside][:n])
        ys.append(py[inside][:n])
    if not xs:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    return x, y, rng.uniform(2.5, 5.0, len(x))


def _image_batches(
    *,
    ground: FloatArray,
    ground_style: IntArray,
    park_rects: list[FloatArray],
    riverside_polys: list[Any],
    water: Any,
    island_rings: list[FloatArray],
    segs: FloatArray,
    crosswalks: FloatArray,
    trees: tuple[FloatArray, FloatArray, FloatArray],
    buildings: _Buildings,
    theta: FloatArray,
    bw: FloatArray,
    bd: FloatArray,
    bcx: FloatArray,
    bcy: FloatArray,
    b_style: IntArray,
    rng: np.random.Generator,
) -> list[_PolyBatch | _ShapeBatch]:
    """Build the image's shapes in drawing order (later shapes paint over earlier ones)."""
    u8 = np.uint8
    batches: list[_PolyBatch | _ShapeBatch] = []
    ground_mat = np.array([_STYLE_TABLE[s].ground for s in range(4)], dtype=u8)
    batches.append(_PolyBatch(ground, ground_mat[ground_style]))
    if park_rects:
        batches.append(_PolyBatch(np.stack(park_rects), np.full(len(park_rects), _M_PARK, u8)))
    batches.append(
        _ShapeBatch(
            list(riverside_polys) + [water] + [shapely.Polygon(r) for r in island_rings],
            [_M_PARK] * len(riverside_polys) + [_M_WATER] + [_M_ISLAND] * len(island_rings),
        )
    )

    ax, ay, bx, by = segs[:, 0], segs[:, 1], segs[:, 2], segs[:, 3]
    cls = segs[:, 4].astype(np.int64)
    bridge = segs[:, 5] > 0
    half = np.asarray(ROAD_WIDTH_M)[cls] / 2.0

    def quads(mask: NDArray[np.bool_], extra: float, mat: Any) -> _PolyBatch:
        q = _segment_quads(ax[mask], ay[mask], bx[mask], by[mask], half[mask] + extra)
        return _PolyBatch(q, np.broadcast_to(np.asarray(mat, dtype=u8), (len(q),)).copy())

    # Bridge decks, park paths, sidewalks; then roads from minor to major.
    batches.append(quads(bridge, SIDEWALK_M + 1.0, _M_DECK))
    foot = (cls == _FOOTWAY) & ~bridge
    batches.append(quads(foot, 0.0, _M_ROAD[_FOOTWAY]))
    batches.append(quads(cls <= _RESIDENTIAL, SIDEWALK_M, _M_SIDEWALK))
    order = np.nonzero(~foot)[0]
    order = order[np.argsort(-cls[order], kind="stable")]
    q = _segment_quads(ax[order], ay[order], bx[order], by[order], half[order])
    batches.append(_PolyBatch(q, np.asarray(_M_ROAD, dtype=u8)[cls[order]]))
    stripes = _crosswalk_stripes(crosswalks)
    batches.append(_PolyBatch(stripes, np.full(len(stripes), _M_MARKING, u8)))

    tx, ty, tr = trees
    if len(tx):
        batches.append(_PolyBatch(_discs(tx, ty, tr), np.full(len(tx), _M_TREE, u8)))

    # Roofs: a colour variant per building; gable roofs as a lit and a shaded half.
    n = buildings.count
    variant = rng.integers(0, _ROOF_VARIANTS, n)
    roof = (_M_ROOF0 + buildings.btype * _ROOF_VARIANTS + variant).astype(u8)
    gable = np.isin(buildings.btype, _GABLE_TYPES)
    batches.append(_PolyBatch(buildings.corners[~gable], roof[~gable]))
    g = np.nonzero(gable)[0]
    along_x = bw[g] >= bd[g]
    hw_, hd_ = bw[g] / 2, bd[g] / 2
    zero = np.zeros(len(g))
    lit = (-hw_, -hd_, np.where(along_x, hw_, zero), np.where(along_x, zero, hd_))
    shaded = (np.where(along_x, -hw_, zero), np.where(along_x, zero, -hd_), hw_, hd_)
    halves = [_rotate(_rect_quads(*h), bcx[g], bcy[g], theta[g]) for h in (lit, shaded)]
    batches.append(
        _PolyBatch(
            np.concatenate(halves), np.concatenate([roof[g], roof[g] + _ROOF_SHADE]).astype(u8)
        )
    )
    c = np.nonzero(buildings.courtyard)[0]
    court_mat = np.where(b_style[c] == _APARTMENTS, _M_YARD, _M_PAVED).astype(u8)
    batches.append(_PolyBatch(buildings.inner[c], court_mat))
    return batches


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _Progress:
    """A thin wrapper over rich's progress display that does nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """Add a task and return its ``advance(step)`` function."""
        if self._progress is None:
            return lambda step: None
        task_id = self._progress.add_task(description, total=total)

        def advance(step: int) -> None:
            self._progress.update(task_id, advance=step)

        return advance


def _atomic(final: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _building_tags(btype: str, levels: int, housenumber: int) -> Tags:
    tags = {"building": btype}
    if levels:
        tags["building:levels"] = str(levels)
    if housenumber:
        tags["addr:housenumber"] = str(housenumber)
    tags["source"] = SOURCE_VALUE
    return tags


_CHUNK = 1 << 16


def _write_pbf(city: _City, path: Path, progress: _Progress) -> None:
    """Write nodes, ways and relations, each sorted by id, with pyosmium's SimpleWriter."""
    to_ll = pyproj.Transformer.from_crs(city.epsg, 4326, always_xy=True)
    x, y, ref = city.nodes.arrays()
    lon, lat = to_ll.transform(x + city.origin[0], y + city.origin[1])
    del x, y
    header = osmium.io.Header()
    header.set("generator", GENERATOR)
    header.add_box(
        osmium.osm.Box(float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))
    )
    table = city.nodes.tag_table
    Node, Way, Relation = mutable.Node, mutable.Way, mutable.Relation
    with osmium.SimpleWriter(
        osmium.io.File(str(path), "pbf"), header=header, overwrite=True
    ) as writer:
        add_node = writer.add_node
        advance = progress.task("nodes", len(lon))
        for s in range(0, len(lon), _CHUNK):
            e = min(s + _CHUNK, len(lon))
            for nid, a, b, r in zip(
                range(s + 1, e + 1), lon[s:e].tolist(), lat[s:e].tolist(), ref[s:e].tolist()
            ):
                if r < 0:
                    add_node(Node(id=nid, location=(a, b)))
                else:
                    add_node(Node(id=nid, location=(a, b), tags=table[r]))
            advance(e - s)

        add_way = writer.add_way
        advance = progress.task("ways", city.way_count)
        wid = 0
        for nodes_, tags in city.ways:
            wid += 1
            add_way(Way(id=wid, nodes=nodes_, tags=tags) if tags else Way(id=wid, nodes=nodes_))
        advance(wid)
        bld = city.buildings
        court_way: list[int] = []
        for s in range(0, bld.count, _CHUNK):
            e = min(s + _CHUNK, bld.count)
            before = wid
            for n0, court, t, lv, hn in zip(
                bld.first_node[s:e].tolist(),
                bld.courtyard[s:e].tolist(),
                bld.btype[s:e].tolist(),
                bld.levels[s:e].tolist(),
                bld.housenumber[s:e].tolist(),
            ):
                wid += 1
                ring = [n0, n0 + 1, n0 + 2, n0 + 3, n0]
                if court:
                    court_way.append(wid)
                    add_way(Way(id=wid, nodes=ring))
                    wid += 1
                    add_way(Way(id=wid, nodes=[n0 + 4, n0 + 5, n0 + 6, n0 + 7, n0 + 4]))
                else:
                    add_way(Way(id=wid, nodes=ring, tags=_building_tags(BUILDING_TYPES[t], lv, hn)))
            advance(wid - before)

        add_relation = writer.add_relation
        rid = 0
        for members, tags in city.relations:
            rid += 1
            add_relation(Relation(id=rid, members=members, tags=tags))
        for k, w in zip(np.nonzero(bld.courtyard)[0].tolist(), court_way):
            rid += 1
            tags = {
                "type": "multipolygon",
                **_building_tags(
                    BUILDING_TYPES[int(bld.btype[k])], int(bld.levels[k]), int(bld.housenumber[k])
                ),
            }
            add_relation(
                Relation(id=rid, members=[("w", w, "outer"), ("w", w + 1, "inner")], tags=tags)
            )


def _image_grid(city: _City) -> tuple[float, float, int, int]:
    """Return the image's top-left corner in local metres and its width and height in pixels.

    The pixel grid is aligned to multiples of the pixel size in UTM.
    """
    px = city.config.pixel_size_m
    ox, oy = city.origin
    ux0 = math.floor((ox - IMAGE_MARGIN_M) / px) * px
    uy1 = math.ceil((oy + city.size_m + IMAGE_MARGIN_M) / px) * px
    width = math.ceil((ox + city.size_m + IMAGE_MARGIN_M - ux0) / px)
    height = math.ceil((uy1 - (oy - IMAGE_MARGIN_M)) / px)
    return ux0 - ox, uy1 - oy, width, height


def _north_up(west: float, north: float, px: float) -> Affine:
    """The affine transform of a north-up grid with square pixels."""
    return Affine(px, 0.0, west, 0.0, -px, north)


def _hash_unit(ix: IntArray, iy: IntArray, seed: int) -> NDArray[np.float32]:
    """A stateless hash of integer lattice points to [-1, 1)."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        )
        h ^= np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return ((h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)) * 2.0 - 1.0


def _periodic_noise(size: int, cell: int, seed: int) -> NDArray[np.float32]:
    """Smooth value noise on a ``size`` x ``size`` tile that wraps around (size % cell == 0)."""
    period = size // cell
    t = (np.arange(size) + 0.5) / cell
    i0 = np.floor(t).astype(np.int64)
    f = (t - i0).astype(np.float32)
    f = f * f * (3 - 2 * f)
    g = np.arange(period)
    lattice = _hash_unit(g[None, :], g[:, None], seed)  # (period, period), wraps
    a, b = i0 % period, (i0 + 1) % period
    rows = lattice[:, a] * (1 - f) + lattice[:, b] * f
    return rows[a] * (1 - f)[:, None] + rows[b] * f[:, None]


def _window_shapes(
    batches: list[_PolyBatch | _ShapeBatch], bounds: tuple[float, ...], margin: float
) -> list[tuple[Any, int]]:
    """GeoJSON-like shapes (in drawing order) that touch a window."""
    wx0, wy0, wx1, wy1 = bounds
    shapes: list[tuple[Any, int]] = []
    for batch in batches:
        if isinstance(batch, _PolyBatch):
            bb = batch.bbox
            sel = np.nonzero((bb[2] >= wx0) & (bb[0] <= wx1) & (bb[3] >= wy0) & (bb[1] <= wy1))[0]
            if not len(sel):
                continue
            p = batch.polys[sel]
            rings = np.concatenate([p, p[:, :1]], 1).tolist()
            shapes.extend(
                ({"type": "Polygon", "coordinates": [ring]}, v)
                for ring, v in zip(rings, batch.material[sel].tolist())
            )
        else:
            for geom, v in zip(batch.geoms, batch.material):
                clipped = shapely.clip_by_rect(
                    geom, wx0 - margin, wy0 - margin, wx1 + margin, wy1 + margin
                )
                if not clipped.is_empty:
                    shapes.append((clipped.__geo_interface__, v))
    return shapes


def _write_image(city: _City, path: Path, progress: _Progress) -> None:
    """Render the material map window by window and write the RGB GeoTIFF."""
    px = city.config.pixel_size_m
    x0, y1, width, height = _image_grid(city)
    ox, oy = city.origin
    cell = max(2, round(8.0 / px))
    tile = cell * 4 * max(1, round(2048 / (cell * 4)))  # window = texture period
    block = 512 if min(width, height) >= 1024 else 256
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS.from_epsg(city.epsg),
        "transform": _north_up(x0 + ox, y1 + oy, px),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "zlevel": 1,
        "predictor": 2,
        "photometric": "RGB",
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    colour, noise_amp, tex_amp = _build_palette()
    # Colour look-up per (material, clipped offset): out = LUT[material * 256 + offset + 128].
    offsets = np.arange(-128, 128, dtype=np.int16)
    luts = [
        np.clip(colour[:, b].astype(np.int16)[:, None] + offsets[None, :], 0, 255)
        .astype(np.uint8)
        .ravel()
        for b in range(3)
    ]
    seed = int(np.random.SeedSequence([city.config.seed, 0x7E7]).generate_state(1)[0])
    texture = 0.65 * _periodic_noise(tile, cell, seed) + 0.35 * _periodic_noise(
        tile, cell * 4, seed + 1
    )
    texture = np.rint(texture * 128).astype(np.int16)
    raw = np.frombuffer(np.random.default_rng(seed).bytes(tile * tile), np.uint8).reshape(
        tile, tile
    )
    grain = (raw & 15).astype(np.int16) + (raw >> 4).astype(np.int16) - 15  # triangular
    del raw
    n_rows, n_cols = math.ceil(height / tile), math.ceil(width / tile)
    advance = progress.task("image", n_rows * n_cols)
    cache = rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024)  # bounds the dirty blocks held
    with cache, rasterio.open(path, "w", **profile) as dst, ThreadPoolExecutor(1) as pool:
        pending: Future[None] | None = None
        for wr in range(n_rows):
            for wc in range(n_cols):
                r0, c0 = wr * tile, wc * tile
                h, w = min(tile, height - r0), min(tile, width - c0)
                wx0, wy1 = x0 + c0 * px, y1 - r0 * px
                shapes = _window_shapes(city.batches, (wx0, wy1 - h * px, wx0 + w * px, wy1), px)
                if shapes:
                    mat = rasterize(
                        shapes,
                        out_shape=(h, w),
                        transform=_north_up(wx0, wy1, px),
                        fill=_M_GROUND,
                        dtype="uint8",
                    )
                else:
                    mat = np.full((h, w), _M_GROUND, dtype=np.uint8)
                delta = (grain[:h, :w] * noise_amp[mat]) >> 3
                delta += (texture[:h, :w] * tex_amp[mat]) >> 7
                np.clip(delta, -128, 127, out=delta)
                index = mat.astype(np.int32) << 8
                index += delta
                index += 128
                rgb = np.stack([lut[index] for lut in luts])
                if pending is not None:
                    pending.result()
                pending = pool.submit(dst.write, rgb, window=Window(c0, r0, w, h))
                advance(1)
        if pending is not None:
            pending.result()


def _summary(city: _City, files: dict[str, str | None]) -> dict[str, Any]:
    colour, _, _ = _build_palette()
    x0, y1, width, height = _image_grid(city)
    px = city.config.pixel_size_m
    ox, oy = city.origin
    model = dict(city.model)
    model["materials_rgb"] = {name: colour[m].tolist() for m, name in _MATERIAL_NAMES.items()}
    model["image"] = {
        "crs": f"EPSG:{city.epsg}",
        "bounds_utm": [x0 + ox, y1 + oy - height * px, x0 + ox + width * px, y1 + oy],
        "width": width,
        "height": height,
        "pixel_size_m": px,
    }
    return {
        "generator": GENERATOR,
        "synthetic": True,
        "source_tag": {"source": SOURCE_VALUE},
        "files": files,
        "config": asdict(city.config),
        "model": model,
        "counts": city.counts,
    }


def write_synthetic_city(
    out_dir: Path, config: SynthConfig = SynthConfig(), progress: bool = False
) -> SynthResult:
    """Generate a synthetic city and write its PBF, GeoTIFF and summary JSON.

    Files (each written atomically through a temporary file in ``out_dir``):
    ``synthetic_city.osm.pbf``, ``synthetic_city.tif`` (when ``config.with_image``) and
    ``synthetic_city.json`` (config, model parameters and ground-truth counts), written last.

    Args:
        out_dir: Folder to write into; created if missing.
        config: The city's settings.
        progress: Show progress bars on stderr.

    Returns:
        The paths written and the ground-truth counts.

    Raises:
        GeoJepaError: If the config is invalid or ``out_dir`` cannot be used.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GeoJepaError("output folder is a file", out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoJepaError(f"cannot create the output folder ({exc.strerror})", out_dir) from exc
    pbf_path = out_dir / PBF_NAME
    image_path = out_dir / IMAGE_NAME if config.with_image else None
    summary_path = out_dir / SUMMARY_NAME
    with _Progress(progress) as bar:
        advance = bar.task("plan", 1)
        city = _plan_city(config, with_shapes=config.with_image)
        advance(1)
        _atomic(pbf_path, lambda p: _write_pbf(city, p, bar))
        if image_path is not None:
            _atomic(image_path, lambda p: _write_image(city, p, bar))
    summary = _summary(
        city, {"pbf": PBF_NAME, "image": IMAGE_NAME if image_path is not None else None}
    )

    def write_json(p: Path) -> None:
        p.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    _atomic(summary_path, write_json)
    return SynthResult(pbf_path, image_path, summary_path, dict(city.counts))


def config_for_entities(n_entities: int, seed: int = 0) -> SynthConfig:
    """Choose ``size_km`` so that the city has about ``n_entities`` tagged objects.

    The entity density is measured on planned cities (nothing is written): at the candidate
    size for cities up to 4 km, and on a 4 km probe for larger ones, whose density is nearly
    the same.

    Args:
        n_entities: Wanted number of entities (tagged nodes, tagged ways and relations).
        seed: Seed of the returned config.

    Returns:
        A default :class:`SynthConfig` with the chosen ``size_km`` and ``seed``.

    Raises:
        GeoJepaError: If ``n_entities`` is not positive.
    """
    if n_entities <= 0:
        raise GeoJepaError(f"n_entities must be positive, got {n_entities}")
    base = SynthConfig(seed=seed)
    min_size, probe_max = 0.3, 4.0
    size = max(min_size, math.sqrt(n_entities / 2500.0))
    for _ in range(4):
        probe = min(size, probe_max)
        count = _plan_city(replace(base, size_km=probe), with_shapes=False).counts["entities"]
        new = max(min_size, probe * math.sqrt(n_entities / count))
        done = abs(new - size) <= 0.01 * size or (probe == probe_max and new >= probe_max)
        size = new
        if done:
            break
    return replace(base, size_km=round(size, 3))
