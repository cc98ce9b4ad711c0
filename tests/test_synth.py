"""Tests of the synthetic city generator: PBF ground truth, image content, determinism."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import osmium
import pyproj
import pytest
import rasterio
import shapely

from geojepa import synth
from geojepa.errors import GeoJepaError
from geojepa.synth import (
    CAR_CLASSES,
    MAJOR_CLASSES,
    SOURCE_VALUE,
    SynthConfig,
    SynthResult,
    config_for_entities,
    write_synthetic_city,
)

CONFIG = SynthConfig(size_km=0.9, seed=3)


@dataclass
class Osm:
    """The content of a PBF, in file order."""

    order: list[tuple[str, int]] = field(default_factory=list)
    nodes: dict[int, tuple[float, float, dict[str, str]]] = field(default_factory=dict)
    ways: dict[int, tuple[list[int], dict[str, str]]] = field(default_factory=dict)
    relations: dict[int, tuple[list[tuple[str, int, str]], dict[str, str]]] = field(
        default_factory=dict
    )

    def way_coords(self, wid: int) -> np.ndarray:
        return np.array([self.nodes[n][:2] for n in self.ways[wid][0]])


def read_osm(path: Path) -> Osm:
    osm = Osm()
    for obj in osmium.FileProcessor(str(path)):
        tags = {t.k: t.v for t in obj.tags}
        if obj.is_node():
            osm.order.append(("n", obj.id))
            osm.nodes[obj.id] = (obj.location.lon, obj.location.lat, tags)
        elif obj.is_way():
            osm.order.append(("w", obj.id))
            osm.ways[obj.id] = ([n.ref for n in obj.nodes], tags)
        else:
            osm.order.append(("r", obj.id))
            osm.relations[obj.id] = ([(m.type, m.ref, m.role) for m in obj.members], tags)
    return osm


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return write_synthetic_city(tmp_path_factory.mktemp("city"), CONFIG)


@pytest.fixture(scope="module")
def osm(city: SynthResult) -> Osm:
    return read_osm(city.pbf_path)


@pytest.fixture(scope="module")
def summary(city: SynthResult) -> dict[str, Any]:
    return json.loads(city.summary_path.read_text())


@pytest.fixture(scope="module")
def image(city: SynthResult) -> tuple[np.ndarray, Any, Any]:
    assert city.image_path is not None
    with rasterio.open(city.image_path) as src:
        return src.read(), src.transform, src.profile


@pytest.fixture(scope="module")
def to_utm(summary: dict[str, Any]) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(4326, summary["model"]["utm_epsg"], always_xy=True)


def pixels(image: tuple[np.ndarray, Any, Any], to_utm: pyproj.Transformer,
           lonlat: np.ndarray) -> np.ndarray:
    """RGB values (n, 3) of the pixels under lon/lat points."""
    arr, transform, _ = image
    x, y = to_utm.transform(lonlat[:, 0], lonlat[:, 1])
    rows, cols = rasterio.transform.rowcol(transform, x, y)
    return arr[:, np.asarray(rows), np.asarray(cols)].T.astype(int)


def bluish(rgb: np.ndarray) -> np.ndarray:
    return (rgb[:, 2] > rgb[:, 0] + 25) & (rgb[:, 2] > rgb[:, 1] + 10)


def greenish(rgb: np.ndarray) -> np.ndarray:
    return (rgb[:, 1] > rgb[:, 0]) & (rgb[:, 1] > rgb[:, 2])


# ---- files and summary ---------------------------------------------------------------------


def test_files_and_summary(city: SynthResult, summary: dict[str, Any]) -> None:
    folder = city.pbf_path.parent
    assert city.pbf_path.name == "synthetic_city.osm.pbf"
    assert city.image_path is not None and city.image_path.is_file()
    assert sorted(p.name for p in folder.iterdir()) == [
        "synthetic_city.json", "synthetic_city.osm.pbf", "synthetic_city.tif"
    ]
    assert summary["synthetic"] is True
    assert summary["config"]["seed"] == CONFIG.seed
    assert summary["config"]["size_km"] == CONFIG.size_km
    assert summary["counts"] == city.counts
    header = osmium.io.Reader(str(city.pbf_path)).header()
    assert "synthetic" in header.get("generator")


def test_ids_positive_sorted_nodes_ways_relations(osm: Osm) -> None:
    kinds = [k for k, _ in osm.order]
    assert kinds == sorted(kinds, key="nwr".index)
    for kind in "nwr":
        ids = [i for k, i in osm.order if k == kind]
        assert ids and ids[0] >= 1
        assert all(b > a for a, b in zip(ids, ids[1:]))


def test_references_resolve(osm: Osm) -> None:
    for refs, _ in osm.ways.values():
        assert len(refs) >= 2
        assert all(r in osm.nodes for r in refs)
    for members, _ in osm.relations.values():
        for kind, ref, _ in members:
            assert ref in {"n": osm.nodes, "w": osm.ways, "r": osm.relations}[kind]


def test_counts_match_pbf(city: SynthResult, osm: Osm) -> None:
    counts = city.counts
    node_tags = [t for *_, t in osm.nodes.values()]
    way_tags = [t for _, t in osm.ways.values()]
    rel_tags = [t for _, t in osm.relations.values()]
    highways = [t for t in way_tags if "highway" in t]
    bridges = [t for t in way_tags if t.get("bridge") == "yes"]
    expected = {
        "nodes": len(osm.nodes),
        "ways": len(osm.ways),
        "relations": len(osm.relations),
        "tagged_nodes": sum(1 for t in node_tags if t),
        "tagged_ways": sum(1 for t in way_tags if t),
        "entities": sum(1 for t in node_tags + way_tags if t) + len(rel_tags),
        "buildings": sum(1 for t in way_tags + rel_tags if "building" in t),
        "building_ways": sum(1 for t in way_tags if "building" in t),
        "building_relations": sum(1 for t in rel_tags if "building" in t),
        "highways": len(highways),
        "highway_primary": sum(1 for t in highways if t["highway"] == "primary"),
        "highway_footway": sum(1 for t in highways if t["highway"] == "footway"),
        "traffic_signals": sum(1 for t in node_tags if t.get("highway") == "traffic_signals"),
        "signal_crossings": sum(1 for t in node_tags if t.get("crossing") == "traffic_signals"),
        "bridges": len(bridges),
        "car_bridges": sum(1 for t in bridges if t.get("highway") in CAR_CLASSES),
        "foot_bridges": sum(1 for t in bridges if t.get("highway") == "footway"),
        "maxspeed_ways": sum(1 for t in way_tags if "maxspeed" in t),
        "maxspeed_mph": sum(1 for t in way_tags if t.get("maxspeed", "").endswith(" mph")),
        "waterways": sum(1 for t in way_tags if t.get("waterway") == "river"),
        "water_areas": sum(1 for t in way_tags + rel_tags if t.get("natural") == "water"),
        "parks": sum(1 for t in way_tags if t.get("leisure") == "park"),
        "landuse": sum(1 for t in way_tags if "landuse" in t),
        "trees": sum(1 for t in node_tags if t.get("natural") == "tree"),
        "pois": sum(1 for t in node_tags if {"shop", "amenity", "leisure"} & t.keys()),
        "bus_stops": sum(1 for t in node_tags if t.get("highway") == "bus_stop"),
        "routes": sum(1 for t in rel_tags if t.get("type") == "route"),
        "multipolygons": sum(1 for t in rel_tags if t.get("type") == "multipolygon"),
    }
    assert {k: counts[k] for k in expected} == expected
    # The city exercises every feature the tests and tasks rely on.
    for key in ("building_relations", "traffic_signals", "signal_crossings", "car_bridges",
                "foot_bridges",
                "maxspeed_mph", "parks", "trees", "pois", "routes", "islands"):
        assert counts[key] > 0, key
    assert counts["bridges"] == counts["car_bridges"] + counts["foot_bridges"]
    assert counts["buildings"] == sum(counts[f"building_{t}"] for t in synth.BUILDING_TYPES)


def test_tagged_objects_are_marked_synthetic(osm: Osm) -> None:
    tagged = [t for *_, t in osm.nodes.values() if t] + [t for _, t in osm.ways.values() if t]
    tagged += [t for _, t in osm.relations.values()]
    assert all(t.get("source") == SOURCE_VALUE for t in tagged)
    # Untagged ways are exactly the members of multipolygons.
    members = {ref for ms, t in osm.relations.values() if t["type"] == "multipolygon"
               for kind, ref, _ in ms if kind == "w"}
    assert {w for w, (_, t) in osm.ways.items() if not t} == members


def test_maxspeed_values(osm: Osm) -> None:
    values = {t["maxspeed"] for _, t in osm.ways.values() if "maxspeed" in t}
    assert values <= {"70", "50", "40", "30", "20", "45 mph", "30 mph", "25 mph", "20 mph",
                      "15 mph"}
    assert any(v.endswith(" mph") for v in values)
    by_class = {t["highway"]: t["maxspeed"] for _, t in osm.ways.values()
                if "maxspeed" in t and not t["maxspeed"].endswith("mph")}
    assert by_class.get("primary", "70") == "70" and by_class.get("residential", "30") == "30"


# ---- network ---------------------------------------------------------------------------------


def test_traffic_signals_are_mapped_like_real_junctions(
    osm: Osm, to_utm: pyproj.Transformer
) -> None:
    # A signalised junction is one signal node where two streets cross, one of them major, or
    # one signal node on each approaching road, SIGNAL_SETBACK_M before such a junction.
    # Signalised pedestrian crossings sit on a major street, away from junctions.
    streets: dict[int, set[tuple[str, str]]] = {}  # node -> (street, class) of its road ways
    for wid, (nodes, tags) in osm.ways.items():
        if tags.get("highway") in CAR_CLASSES:
            for n in nodes:
                streets.setdefault(n, set()).add((tags.get("name", f"way {wid}"), tags["highway"]))

    def is_junction(n: int) -> bool:
        names = {name for name, _ in streets.get(n, ())}
        return len(names) >= 2 and any(c in MAJOR_CLASSES for _, c in streets[n])

    def xy(n: int) -> np.ndarray:
        return np.array(to_utm.transform(*osm.nodes[n][:2]))

    junctions = np.array([xy(n) for n in streets if is_junction(n)])
    signals = [n for n, (*_, t) in osm.nodes.items() if t.get("highway") == "traffic_signals"]
    at_junction = [n for n in signals if is_junction(n)]
    approach = [n for n in signals if not is_junction(n)]
    assert at_junction and approach
    for n in approach:
        assert len({name for name, _ in streets[n]}) == 1
        gap = np.linalg.norm(junctions - xy(n), axis=1).min()
        assert gap == pytest.approx(synth.SIGNAL_SETBACK_M, abs=0.5)
    crossings = [n for n, (*_, t) in osm.nodes.items() if t.get("crossing") == "traffic_signals"]
    assert crossings
    for n in crossings:
        assert osm.nodes[n][2]["highway"] == "crossing"
        ((_, cls),) = streets[n]
        assert cls in MAJOR_CLASSES
        assert np.linalg.norm(junctions - xy(n), axis=1).min() > 2 * synth.SIGNAL_SETBACK_M


def test_roads_form_a_network(osm: Osm) -> None:
    use: dict[int, int] = {}
    for nodes, tags in osm.ways.values():
        if tags.get("highway") in CAR_CLASSES:
            for n in set(nodes):
                use[n] = use.get(n, 0) + 1
    shared = sum(1 for v in use.values() if v >= 2)
    assert shared >= 0.5 * len(use)
    # Service alleys and park paths start on street nodes.
    for nodes, tags in osm.ways.values():
        if tags.get("service") == "alley" or (tags.get("highway") == "footway"
                                               and "bridge" not in tags):
            assert use.get(nodes[0], 0) >= 1 and use.get(nodes[-1], 0) >= 1


def test_multipolygons_have_holes_and_assemble(city: SynthResult, osm: Osm) -> None:
    multipolygons = {r: (m, t) for r, (m, t) in osm.relations.items()
                     if t["type"] == "multipolygon"}
    for members, tags in multipolygons.values():
        roles = [role for _, _, role in members]
        assert "outer" in roles and "inner" in roles
        assert "building" in tags or tags.get("natural") == "water"
    holes: dict[int, int] = {}
    for area in osmium.FileProcessor(str(city.pbf_path)).with_areas():
        if area.is_area() and not area.from_way():
            outers = list(area.outer_rings())
            holes[area.orig_id()] = sum(len(list(area.inner_rings(o))) for o in outers)
    assert set(holes) == set(multipolygons)
    assert all(n >= 1 for n in holes.values())
    water = [r for r, (_, t) in multipolygons.items() if t.get("natural") == "water"]
    assert len(water) == 1 and holes[water[0]] == city.counts["islands"]


def test_bridges_cross_the_water(osm: Osm, to_utm: pyproj.Transformer) -> None:
    def utm_line(wid: int) -> shapely.LineString:
        ll = osm.way_coords(wid)
        return shapely.LineString(np.column_stack(to_utm.transform(ll[:, 0], ll[:, 1])))

    centrelines = [utm_line(w) for w, (_, t) in osm.ways.items() if t.get("waterway") == "river"]
    river = shapely.union_all(centrelines)
    bridges = [(w, t) for w, (_, t) in osm.ways.items() if t.get("bridge") == "yes"]
    assert any(t["highway"] in CAR_CLASSES for _, t in bridges)
    assert any(t["highway"] == "footway" for _, t in bridges)
    for w, tags in bridges:
        assert tags["layer"] == "1"
        assert utm_line(w).intersects(river)
    # No other road crosses the river.
    for w, (_, tags) in osm.ways.items():
        if "highway" in tags and "bridge" not in tags:
            assert not utm_line(w).intersects(river)


# ---- image -----------------------------------------------------------------------------------


def test_image_format_and_extent(image: tuple[np.ndarray, Any, Any], summary: dict[str, Any],
                                 osm: Osm, to_utm: pyproj.Transformer) -> None:
    arr, transform, profile = image
    assert arr.dtype == np.uint8 and arr.shape[0] == 3
    crs = profile["crs"]
    assert crs.is_projected and crs.to_epsg() == summary["model"]["utm_epsg"]
    assert profile["tiled"] and profile["compress"] == "deflate"
    ll = np.array([n[:2] for n in osm.nodes.values()])
    x, y = to_utm.transform(ll[:, 0], ll[:, 1])
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * arr.shape[2], top + transform.e * arr.shape[1]
    assert left <= x.min() and x.max() <= right and bottom <= y.min() and y.max() <= top
    assert [left, bottom, right, top] == pytest.approx(summary["model"]["image"]["bounds_utm"])


def test_image_shows_water_bridges_and_vegetation(
    image: tuple[np.ndarray, Any, Any], osm: Osm, to_utm: pyproj.Transformer
) -> None:
    def utm(ll: np.ndarray) -> np.ndarray:
        return np.column_stack(to_utm.transform(ll[:, 0], ll[:, 1]))

    # Along the river centreline: water, except on islands (green) and under bridges.
    centre = np.concatenate([osm.way_coords(w) for w, (_, t) in osm.ways.items()
                             if t.get("waterway") == "river"])[1:-1]  # ends: on the edge
    bridges = [w for w, (_, t) in osm.ways.items() if t.get("bridge") == "yes"]
    decks = shapely.union_all([shapely.LineString(utm(osm.way_coords(w))) for w in bridges])
    water = next(m for m, t in osm.relations.values() if t.get("natural") == "water")
    islands = shapely.union_all([shapely.Polygon(utm(osm.way_coords(ref)))
                                 for _, ref, role in water if role == "inner"])
    points = shapely.points(utm(centre))
    under_deck = shapely.dwithin(decks, points, 15.0)
    on_island = shapely.contains(islands.buffer(-2.0), points)
    rgb = pixels(image, to_utm, centre)
    assert on_island.any() and under_deck.any()
    assert bluish(rgb[~under_deck & ~on_island]).mean() > 0.97
    assert greenish(rgb[on_island]).mean() > 0.9
    # Car bridges: a deck over the water, with water on both sides (bridges run north-south).
    car_bridges = [w for w in bridges if osm.ways[w][1]["highway"] in CAR_CLASSES]
    mids = np.array([osm.way_coords(w).mean(0) for w in car_bridges])
    assert not bluish(pixels(image, to_utm, mids)).any()
    x, y = to_utm.transform(mids[:, 0], mids[:, 1])
    back = pyproj.Transformer.from_crs(to_utm.target_crs, 4326, always_xy=True)
    for dx in (-13.0, 13.0):
        side = np.column_stack(back.transform(np.asarray(x) + dx, np.asarray(y)))
        assert bluish(pixels(image, to_utm, side)).all()
    # Trees and parks are green.
    trees = np.array([n[:2] for n in osm.nodes.values() if n[2].get("natural") == "tree"])
    assert greenish(pixels(image, to_utm, trees)).mean() > 0.95
    probes = []
    for w, (_, tags) in osm.ways.items():
        if tags.get("leisure") == "park":
            ring = osm.way_coords(w)[:-1]
            if "name" in tags:  # riverside park
                probes.append(shapely.Polygon(ring).point_on_surface().coords[0])
            else:  # a block: probe off the diagonal paths
                probes.append(ring.mean(0) + 0.3 * ((ring[0] + ring[1]) / 2 - ring.mean(0)))
    assert greenish(pixels(image, to_utm, np.array(probes))).mean() > 0.8


def test_image_separates_buildings_from_roads(
    image: tuple[np.ndarray, Any, Any], osm: Osm, to_utm: pyproj.Transformer
) -> None:
    roofs = np.array([osm.way_coords(w)[:-1].mean(0) for w, (_, t) in osm.ways.items()
                      if t.get("building") in {"apartments", "commercial", "retail", "office",
                                               "industrial", "warehouse"}])
    houses = np.array([osm.way_coords(w)[:-1].mean(0) for w, (_, t) in osm.ways.items()
                       if t.get("building") in {"house", "detached"}])
    junctions = np.array([osm.nodes[n][:2] for w, (nodes, t) in osm.ways.items()
                          if t.get("highway") in CAR_CLASSES and "bridge" not in t
                          for n in nodes])
    road = pixels(image, to_utm, junctions)
    # Asphalt is a dark, nearly neutral grey.
    assert (road.max(1) < 125).mean() > 0.95 and (np.ptp(road, 1) < 20).mean() > 0.95
    road_mean = road.mean(0)
    flat = pixels(image, to_utm, roofs)
    assert (np.abs(flat - road_mean).max(1) > 30).mean() > 0.9
    # House roofs: some are dark grey like asphalt, most are not.
    assert (np.abs(pixels(image, to_utm, houses) - road_mean).max(1) > 12).mean() > 0.8


def test_image_paints_zebra_crossings_at_signals_only(
    image: tuple[np.ndarray, Any, Any], osm: Osm, to_utm: pyproj.Transformer,
    summary: dict[str, Any],
) -> None:
    # Every long enough arm of a signalised junction, and every signalised pedestrian crossing,
    # has light stripes across its asphalt; arms of unsignalised junctions have none.
    arr, transform, _ = image
    width = summary["model"]["streets"]["road_width_m"]
    xy = {n: np.array(to_utm.transform(lon, lat)) for n, (lon, lat, _) in osm.nodes.items()}
    signal = {n for n, (*_, t) in osm.nodes.items() if t.get("highway") == "traffic_signals"}
    crossings = [n for n, (*_, t) in osm.nodes.items() if t.get("crossing") == "traffic_signals"]
    signal_xy = np.array([xy[n] for n in signal])
    arms: dict[int, list[tuple[np.ndarray, float]]] = {}  # node -> (unit vector, half-width)
    streets: dict[int, set[str]] = {}
    half_of: dict[int, float] = {}
    for nodes, tags in osm.ways.values():
        if tags.get("highway") not in CAR_CLASSES or "bridge" in tags:
            continue
        half = width[tags["highway"]] / 2
        for k, n in enumerate(nodes):
            streets.setdefault(n, set()).add(tags.get("name", ""))
            half_of[n] = half
            for step in (-1, 1):
                m = k + step
                while 0 <= m + step < len(nodes) and nodes[m] in signal:
                    m += step  # look past approach signals to the arm's next junction
                if 0 <= m < len(nodes) and np.linalg.norm(xy[nodes[m]] - xy[n]) > 30:
                    d = xy[nodes[m]] - xy[n]
                    arms.setdefault(n, []).append((d / np.linalg.norm(d), half))

    def stripes(at: np.ndarray, along: np.ndarray, half: float, reach: np.ndarray) -> bool:
        """Whether a line across the road, at some distance in ``reach``, crosses 2+ stripes."""
        across = np.array([-along[1], along[0]])
        offsets = np.arange(-(half - 1), half - 1 + 1e-9, 0.5)
        for t in reach:
            pts = at + t * along + offsets[:, None] * across
            rows, cols = rasterio.transform.rowcol(transform, pts[:, 0], pts[:, 1])
            if (arr[:, np.asarray(rows), np.asarray(cols)].min(0) > 150).sum() >= 2:
                return True
        return False

    reach = np.arange(2.0, 14.5, 0.5)
    junctions = [n for n, names in streets.items() if len(names) >= 2 and n in arms]
    near = {n: np.linalg.norm(signal_xy - xy[n], axis=1).min() for n in junctions}
    signalised = [n for n in junctions if near[n] < synth.SIGNAL_SETBACK_M + 1]
    plain = [n for n in junctions if near[n] > 2 * synth.SIGNAL_SETBACK_M]
    assert len(signalised) >= 3 and len(plain) >= 10
    for n in signalised:
        assert all(stripes(xy[n], u, half, reach) for u, half in arms[n]), n
    for n in plain:
        assert not any(stripes(xy[n], u, half, reach) for u, half in arms[n]), n
    assert crossings
    for n in crossings:
        u, _ = arms[n][0]
        assert stripes(xy[n], u, half_of[n], np.array([0.0])), n
    assert summary["counts"]["crosswalks"] >= len(crossings) + 3 * len(signalised)


# ---- determinism, sizing, errors -------------------------------------------------------------


def test_same_seed_same_city_other_seed_other_city(
    tmp_path: Path, city: SynthResult, osm: Osm, image: tuple[np.ndarray, Any, Any]
) -> None:
    again = write_synthetic_city(tmp_path / "again", CONFIG)
    assert again.counts == city.counts
    assert read_osm(again.pbf_path) == osm
    assert again.image_path is not None
    with rasterio.open(again.image_path) as src:
        assert np.array_equal(src.read(), image[0])
    other = write_synthetic_city(tmp_path / "other", replace(CONFIG, seed=CONFIG.seed + 1))
    assert read_osm(other.pbf_path) != osm
    assert other.image_path is not None
    with rasterio.open(other.image_path) as src:
        assert not np.array_equal(src.read(), image[0])


def test_config_for_entities(tmp_path: Path) -> None:
    config = config_for_entities(3000, seed=5)
    assert config.seed == 5
    result = write_synthetic_city(tmp_path, replace(config, with_image=False))
    assert result.image_path is None
    assert not (tmp_path / "synthetic_city.tif").exists()
    assert abs(result.counts["entities"] - 3000) <= 0.25 * 3000
    bigger = config_for_entities(12000, seed=5)
    assert bigger.size_km == pytest.approx(2 * config.size_km, rel=0.25)


def test_progress_goes_to_stderr_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_city(tmp_path, SynthConfig(size_km=0.3, seed=2), progress=True)
    assert capsys.readouterr().out == ""


def test_invalid_settings(tmp_path: Path) -> None:
    with pytest.raises(GeoJepaError):
        write_synthetic_city(tmp_path, SynthConfig(size_km=-1.0))
    with pytest.raises(GeoJepaError):
        write_synthetic_city(tmp_path, SynthConfig(center_lat=89.0))
    with pytest.raises(GeoJepaError):
        config_for_entities(0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GeoJepaError):
        write_synthetic_city(blocker, SynthConfig(size_km=0.3))


def test_failed_write_leaves_no_partial_files(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(city: Any, path: Path, progress: Any) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_image", broken)
    with pytest.raises(RuntimeError):
        write_synthetic_city(tmp_path, SynthConfig(size_km=0.4, seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_city.osm.pbf"]
