"""Downstream-task labels and masked inputs on a hand-made OSM file with known answers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import osmium
import pyarrow.parquet as pq
import pytest
from osm_fixture import Node, Relation, Way, tile_corner, write_osm_xml

from geojepa.cli import main
from geojepa.dataset.loader import TileStream
from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError
from geojepa.prepare import PrepareConfig, prepare
from geojepa.tasks import (
    MASKS,
    NO_ROAD_SPEED,
    TASKS,
    batch_labels,
    build_tasks,
    load_labels,
    masked_dataset,
    parse_maxspeed,
)

ZOOM = 16
X0, Y0 = 37308, 18969
A, B, C = (X0, Y0), (X0 + 1, Y0), (X0, Y0 + 1)

EXPECTED = {
    #    building_count, max_speed, traffic_signals, bridge, car_bridge
    A: (3, 30 * 1.609, 2, 1, 0),
    B: (1, NO_ROAD_SPEED, 0, 1, 0),
    C: (0, 60.0, 1, 1, 1),
}


class _Osm:
    """Builds nodes, ways and relations at fractional tile coordinates."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.ways: list[Way] = []
        self.relations: list[Relation] = []
        self.next_id = 1

    def node(self, tile: tuple[int, int], fx: float, fy: float, **tags: str) -> int:
        lon, lat = tile_corner(tile[0] + fx, tile[1] + fy)
        nid = self.next_id
        self.next_id += 1
        self.nodes.append((nid, lon, lat, tags))
        return nid

    def way(self, tile: tuple[int, int], points: list[tuple[float, float]], closed: bool = False,
            **tags: str) -> int:
        refs = [self.node(tile, fx, fy) for fx, fy in points]
        if closed:
            refs.append(refs[0])
        wid = 1000 + len(self.ways)
        self.ways.append((wid, refs, tags))
        return wid

    def square(self, tile: tuple[int, int], x: float, y: float, size: float = 0.05, **tags: str) -> int:
        pts = [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]
        return self.way(tile, pts, closed=True, **tags)


def write_task_osm(path: Path) -> Path:
    """Three tiles whose labels are :data:`EXPECTED`."""
    o = _Osm()
    # Tile A: 3 buildings (+ building=no, a building:part), two roads (30 mph > 40 km/h),
    # 2 signalised nodes (+ crossing:signals=no and a railway signal), a footbridge.
    for k in range(3):
        o.square(A, 0.1 + 0.1 * k, 0.1, building="yes", amenity="school" if k == 0 else "shop")
    o.square(A, 0.5, 0.1, building="no", landuse="grass")
    o.square(A, 0.6, 0.1, **{"building:part": "yes", "roof:shape": "flat"})
    o.way(A, [(0.1, 0.5), (0.9, 0.5)], highway="residential", maxspeed="30 mph", surface="asphalt")
    o.way(A, [(0.1, 0.6), (0.9, 0.6)], highway="primary", maxspeed="40", lanes="2")
    o.node(A, 0.3, 0.5, highway="traffic_signals", **{"traffic_signals:sound": "yes"})
    o.node(A, 0.4, 0.5, highway="crossing", crossing="traffic_signals")
    o.node(A, 0.5, 0.5, highway="crossing", **{"crossing:signals": "no"})
    o.node(A, 0.6, 0.7, railway="signal")
    o.way(A, [(0.2, 0.8), (0.4, 0.8)], highway="footway", bridge="yes", layer="1")
    # Tile B: no road, one multipolygon building, a bridge outline tagged only man_made=bridge.
    for k in range(5):
        o.node(B, 0.1 + 0.15 * k, 0.9, amenity="bench")
    outer = o.square(B, 0.2, 0.2, size=0.2)
    inner = o.square(B, 0.25, 0.25, size=0.05)
    o.relations.append((500, [("w", outer, "outer"), ("w", inner, "inner")],
                        {"type": "multipolygon", "building": "apartments"}))
    o.square(B, 0.6, 0.6, size=0.1, man_made="bridge")
    # Tile C: a car bridge (60), a service road in an urban zone (50), a track, a signal that is
    # a member of a bus route, five cafes.
    car = o.way(C, [(0.1, 0.3), (0.9, 0.3)], highway="secondary", bridge="yes", layer="1", maxspeed="60")
    o.way(C, [(0.1, 0.5), (0.9, 0.5)], highway="service", maxspeed="FI:urban")
    o.way(C, [(0.1, 0.7), (0.9, 0.7)], highway="track")
    signal = o.node(C, 0.5, 0.4, highway="traffic_signals")
    cafes = [o.node(C, 0.1 + 0.15 * k, 0.9, amenity="cafe") for k in range(5)]
    o.relations.append((501, [("w", car, ""), ("n", signal, "stop"), ("n", cafes[0], "platform")],
                        {"type": "route", "route": "bus"}))
    return write_osm_xml(path, o.nodes, o.ways, o.relations)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    osm = write_task_osm(root / "tasks.osm")
    out = root / "ds"
    prepare([osm], out, config=PrepareConfig(zoom=ZOOM, workers=0), progress=False)
    build_tasks(out, progress=False)
    return out


def _labels(dataset: Path) -> dict[tuple[int, int], tuple]:
    table = load_labels(dataset).to_pylist()
    return {(r["x"], r["y"]): tuple(r[t] for t in TASKS) for r in table}


def test_labels_match_the_hand_made_answers(dataset: Path) -> None:
    labels = _labels(dataset)
    assert set(labels) == set(EXPECTED)
    for tile, expected in EXPECTED.items():
        got = labels[tile]
        assert got[0] == expected[0], f"building_count of {tile}"
        assert got[1] == pytest.approx(expected[1], abs=1e-6), f"max_speed of {tile}"
        assert got[2:] == expected[2:], f"signals / bridge / car_bridge of {tile}"


def test_labels_keep_the_tile_split_and_group(dataset: Path) -> None:
    labels = load_labels(dataset).to_pylist()
    tiles = {(t["x"], t["y"]): t for t in TileDataset(dataset).iter_tiles(columns=["x", "y", "split", "group_x"])}
    for row in labels:
        tile = tiles[(row["x"], row["y"])]
        assert (row["split"], row["group_x"]) == (tile["split"], tile["group_x"])


@pytest.mark.parametrize(
    ("value", "kmh"),
    [("50", 50.0), ("30 mph", 48.27), ("20mph", 32.18), ("10 knots", 18.52), ("30;50", 50.0),
     ("FI:urban", 50.0), ("DE:rural", 100.0), ("RU:living_street", 20.0), ("walk", 7.0),
     ("none", None), ("signals", None), ("variable", None), ("", None)],
)
def test_parse_maxspeed(value: str, kmh: float | None) -> None:
    assert parse_maxspeed(value) == (None if kmh is None else pytest.approx(kmh))


LABEL_BEARING = {
    "building": lambda tag: tag.split("=", 1)[0].startswith("building"),
    "maxspeed": lambda tag: "maxspeed" in tag.split("=", 1)[0],
    "signals": lambda tag: "signals" in tag,
    "bridge": lambda tag: re.match(r"^(bridge|layer)", tag) is not None or "bridge" in tag.split("=", 1)[1],
}


def _entities(folder: Path) -> dict[tuple[int, int], list[dict]]:
    return {(t["x"], t["y"]): t["entities"] for t in TileDataset(folder).iter_tiles()}


@pytest.mark.parametrize("mask", MASKS)
def test_masked_inputs_lack_every_label_bearing_tag(dataset: Path, mask: str) -> None:
    folder = dataset / "tasks" / "masked" / mask
    masked = _entities(folder)
    original = _entities(dataset)
    assert set(masked) == set(original)
    bearing = LABEL_BEARING[mask]
    for tile, entities in masked.items():
        assert all(not bearing(tag) for e in entities for tag in e["tags"])
        assert all(e["tags"] for e in entities), "an entity left without tags must be dropped"
        before = {(e["osm_type"], e["osm_id"]): e for e in original[tile]}
        for e in entities:  # everything else is untouched
            src = before[(e["osm_type"], e["osm_id"])]
            assert e["tags"] == [t for t in src["tags"] if not bearing(t)]
            assert e["geometry"] == src["geometry"] and e["box"] == src["box"]
    vocab = TileDataset(folder).vocabulary().column("tag").to_pylist()
    assert vocab and not any(bearing(t) for t in vocab)


def test_masks_remove_label_bearing_entities(dataset: Path) -> None:
    def ids(mask: str, tile: tuple[int, int]) -> set[tuple[int, int]]:
        return {(e["osm_type"], e["osm_id"]) for e in _entities(dataset / "tasks" / "masked" / mask)[tile]}

    original = _entities(dataset)
    buildings = {(e["osm_type"], e["osm_id"]) for e in original[A]
                 if any(t.startswith("building") for t in e["tags"])}
    assert len(buildings) == 5  # three buildings, building=no and building:part
    assert not buildings & ids("building", A)
    signal_nodes = {(e["osm_type"], e["osm_id"]) for t in (A, C) for e in original[t]
                    if e["osm_type"] == 0 and any("signals" in tag for tag in e["tags"])}
    assert len(signal_nodes) == 4  # two signals in A, crossing:signals=no, the signal in C
    assert not signal_nodes & (ids("signals", A) | ids("signals", C))
    outline = [e for e in original[B] if e["tags"] == ["man_made=bridge"]]
    assert len(outline) == 1
    assert (outline[0]["osm_type"], outline[0]["osm_id"]) not in ids("bridge", B)
    assert (0, 0) not in ids("bridge", B)  # the rest of B is all there
    assert len(ids("bridge", B)) == len(original[B]) - 1


@pytest.mark.parametrize("task", list(TASKS))
def test_a_masked_variant_hides_its_label(dataset: Path, task: str) -> None:
    """Labels recomputed from a task's masked input are all 'absent'."""
    folder = masked_dataset(dataset, task)
    for batch in TileDataset(folder).iter_batches(columns=["entities"]):
        values = batch_labels(batch)[task]
        empty = NO_ROAD_SPEED if task == "max_speed" else 0
        assert np.all(values == empty)


def test_relation_members_renumbered_after_masking(dataset: Path) -> None:
    def members(folder: Path) -> set[tuple[int, int]]:
        ents = _entities(folder)[C]
        route = next(e for e in ents if e["osm_type"] == 2 and "route=bus" in e["tags"])
        return {(ents[i]["osm_type"], ents[i]["osm_id"]) for i in route["members"]}

    before = members(dataset)
    after = members(dataset / "tasks" / "masked" / "signals")
    assert len(before) == 3
    assert len(after) == 2 and after < before  # the signal node is gone, the rest still point right


def test_masked_variants_are_complete_datasets(dataset: Path) -> None:
    for mask in MASKS:
        folder = dataset / "tasks" / "masked" / mask
        ds = TileDataset(folder)
        assert ds.num_tiles() == TileDataset(dataset).num_tiles()
        stored = sum(t["n_entities"] for t in ds.iter_tiles(columns=["n_entities"]))
        counted = sum(len(t["entities"]) for t in ds.iter_tiles(columns=["entities"]))
        assert stored == counted == sum(c["entities"] for c in ds.manifest.counts.values())
        assert ds.manifest.extra["masked"]["mask"] == mask
        batches = list(TileStream(folder, splits=None, batch_size=8, shuffle=False))
        assert sum(b.size for b in batches) == ds.num_tiles()


def test_tasks_refuses_a_dataset_without_label_keys(tmp_path: Path) -> None:
    osm = write_task_osm(tmp_path / "t.osm")
    out = tmp_path / "ds"
    prepare([osm], out, config=PrepareConfig(zoom=ZOOM, workers=0, excluded_tags=("maxspeed",)),
            progress=False)
    with pytest.raises(GeoJepaError, match="maxspeed"):
        build_tasks(out, progress=False)
    assert not (out / "tasks").exists()


def test_cli_tasks_prints_statistics(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "t"
    assert main(["tasks", str(dataset), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "building_count" in text and "car_bridge" in text
    assert pq.read_table(out / "labels.parquet").num_rows == 3
    assert main(["tasks", str(dataset), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err


class _SignalCounter(osmium.SimpleHandler):
    """Independent count of signalised nodes per z17 tile, straight from the PBF."""

    def __init__(self, tiles: set[tuple[int, int]]) -> None:
        super().__init__()
        self.tiles = tiles
        self.count: dict[tuple[int, int], int] = {}

    def node(self, n: osmium.osm.Node) -> None:
        tags = dict(n.tags)
        signal = (tags.get("highway") == "traffic_signals" or tags.get("crossing") == "traffic_signals"
                  or tags.get("traffic_signals", "no") != "no" or tags.get("crossing:signals", "no") != "no")
        if not signal:
            return
        lon, lat = n.location.lon, n.location.lat
        n2 = 2.0**17
        x = int((lon + 180.0) / 360.0 * n2)
        y = int((1.0 - np.arcsinh(np.tan(np.radians(lat))) / np.pi) / 2.0 * n2)
        if (x, y) in self.tiles:
            self.count[(x, y)] = self.count.get((x, y), 0) + 1


def test_helsinki_signal_labels_match_an_independent_pass(helsinki_pbf: Path, tmp_path: Path) -> None:
    out = tmp_path / "hel"
    prepare([helsinki_pbf], out, config=PrepareConfig(zoom=17, workers=0), progress=False)
    build_tasks(out, progress=False)
    labels = {(r["x"], r["y"]): r for r in load_labels(out).to_pylist()}
    counter = _SignalCounter(set(labels))
    counter.apply_file(str(helsinki_pbf))
    got = {t: r["traffic_signals"] for t, r in labels.items() if r["traffic_signals"]}
    assert got == counter.count
    assert sum(got.values()) > 100
