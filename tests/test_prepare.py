"""``prepare`` on a hand-made OSM file with known answers, and its failure modes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError
from geojepa.osm import GROUP, LINE, POINT, POLYGON, RELATION, WAY
from geojepa.prepare import PrepareConfig, prepare
from geojepa.tiles import Tile
from osm_fixture import SPARSE_TILE, X0, Y0, tile_corner


def prepare_fixture_dataset(out: Path) -> Path:
    """Prepare the hand-made OSM file of :mod:`osm_fixture` into ``out``."""
    from osm_fixture import write_fixture

    osm = write_fixture(out.parent / "fixture.osm")
    prepare([osm], out, config=PrepareConfig(workers=0), progress=False)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> TileDataset:
    return TileDataset(prepare_fixture_dataset(tmp_path_factory.mktemp("prep") / "ds"))


def _entities(ds: TileDataset) -> dict[tuple[int, int], list[dict]]:
    return {(t["x"], t["y"]): t["entities"] for t in ds.iter_tiles()}


def test_way_crossing_four_tiles_is_four_pieces_with_full_tags(dataset: TileDataset) -> None:
    tiles = _entities(dataset)
    assert set(tiles) == {(X0, Y0), (X0 + 1, Y0), (X0, Y0 + 1), (X0 + 1, Y0 + 1)}
    pieces = []
    for (x, y), entities in tiles.items():
        road = [e for e in entities if e["osm_type"] == WAY and e["osm_id"] == 100]
        assert len(road) == 1
        assert road[0]["kind"] == LINE
        assert road[0]["tags"] == ["highway=primary", "maxspeed=50"]
        geom = shapely.from_wkb(road[0]["geometry"])
        w, s, e, n = Tile(16, x, y).bounds_lonlat()
        assert shapely.box(w, s, e, n).buffer(1e-9).contains(geom)
        local = shapely.from_wkb(road[0]["local"])
        assert np.all(shapely.get_coordinates(local) >= -1e-9)
        assert np.all(shapely.get_coordinates(local) <= 1 + 1e-9)
        pieces.append(local)
    # In tile units each piece is 0.5 + 0.4 (or 0.4 + 0.5, 0.5, ...): total 1 + 0.8 + 1 = 2.8.
    assert sum(p.length for p in pieces) == pytest.approx(2.8, rel=1e-5)


def test_multipolygon_with_hole_stays_one_polygon(dataset: TileDataset) -> None:
    entities = _entities(dataset)[(X0, Y0)]
    house = [e for e in entities if e["osm_type"] == RELATION and e["osm_id"] == 300]
    assert len(house) == 1
    assert house[0]["kind"] == POLYGON
    assert house[0]["tags"] == ["building=yes"]
    local = shapely.from_wkb(house[0]["local"])
    assert local.geom_type == "Polygon"
    assert len(local.interiors) == 1
    assert local.area == pytest.approx(0.2**2 - 0.1**2, rel=1e-4)  # OSM stores 1e-7 degrees
    # The member ways carry no tags and are not entities themselves.
    assert not any(e["osm_id"] in (101, 102) and e["osm_type"] == WAY for e in entities)
    # Box is the outer square; the shape has two rings (parts).
    corners = np.asarray(house[0]["box"]).reshape(4, 2)
    assert shapely.Polygon(corners).area == pytest.approx(0.04, rel=1e-4)
    assert house[0]["shape_parts"] == [0, 5]
    xy = np.asarray(house[0]["shape_xy"]).reshape(-1, 2)
    assert xy.min() == pytest.approx(0, abs=1e-6) and xy.max() == pytest.approx(1, abs=1e-6)


def test_relation_references_members_in_tile(dataset: TileDataset) -> None:
    entities = _entities(dataset)[(X0, Y0)]
    route = [e for e in entities if e["osm_type"] == RELATION and e["osm_id"] == 301][0]
    assert route["kind"] == GROUP
    members = {(entities[i]["osm_type"], entities[i]["osm_id"]) for i in route["members"]}
    assert members == {(WAY, 100), (0, 1)}
    other = _entities(dataset)[(X0 + 1, Y0)]
    route2 = [e for e in other if e["osm_id"] == 301][0]
    assert [(other[i]["osm_type"], other[i]["osm_id"]) for i in route2["members"]] == [(WAY, 100)]


def test_excluded_tags_are_gone(dataset: TileDataset) -> None:
    vocab = dataset.vocabulary().column("tag").to_pylist()
    assert vocab
    assert not [t for t in vocab if t.startswith(("name", "source", "addr:"))]
    assert "amenity=cafe" in vocab and "type=route" in vocab
    assert "type=multipolygon" not in vocab


def test_sparse_tile_is_dropped_and_reported(dataset: TileDataset) -> None:
    tiles = _entities(dataset)
    assert SPARSE_TILE not in tiles
    assert dataset.manifest.report["sparse_tiles_dropped"] == 1
    assert all(len(e) >= 5 for e in tiles.values())


def test_points_get_metric_square_boxes(dataset: TileDataset) -> None:
    entities = _entities(dataset)[(X0, Y0)]
    cafe = [e for e in entities if e["kind"] == POINT and "amenity=cafe" in e["tags"]][0]
    side = 1.5 / Tile(16, X0, Y0).size_m()
    corners = np.asarray(cafe["box"]).reshape(4, 2)
    assert shapely.Polygon(corners).area == pytest.approx(side**2, rel=1e-3)
    lon, lat = tile_corner(X0 + 0.1, Y0 + 0.2)
    assert shapely.from_wkb(cafe["geometry"]).equals_exact(shapely.Point(lon, lat), 1e-7)
    assert cafe["shape_xy"] == [0.5, 0.5]


def test_capping_keeps_a_seeded_sample(fixture_osm: Path, tmp_path: Path) -> None:
    cfg = PrepareConfig(workers=0, max_entities=6, min_entities=1)
    prepare([fixture_osm], tmp_path / "a", config=cfg, progress=False)
    ds = TileDataset(tmp_path / "a")
    tiles = {(t["x"], t["y"]): t for t in ds.iter_tiles()}
    assert tiles[(X0, Y0)]["n_entities"] == 6 and tiles[(X0, Y0)]["n_capped"] == 2
    assert ds.manifest.report["capped_tiles"] >= 1
    assert tiles[SPARSE_TILE]["n_entities"] == 2


def test_same_inputs_give_same_content(fixture_osm: Path, tmp_path: Path) -> None:
    prepare([fixture_osm], tmp_path / "a", config=PrepareConfig(workers=0), progress=False)
    prepare([fixture_osm], tmp_path / "b", config=PrepareConfig(workers=2, batch_size=7), progress=False)
    a = [pq.read_table(p) for p in TileDataset(tmp_path / "a").shard_paths]
    b = [pq.read_table(p) for p in TileDataset(tmp_path / "b").shard_paths]
    assert len(a) == len(b) and all(x.equals(y) for x, y in zip(a, b, strict=True))


def test_compressed_xml_and_several_inputs(fixture_osm: Path, tmp_path: Path) -> None:
    import bz2

    packed = tmp_path / "fixture.osm.bz2"
    packed.write_bytes(bz2.compress(fixture_osm.read_bytes()))
    prepare([fixture_osm], tmp_path / "a", config=PrepareConfig(workers=0), progress=False)
    prepare([packed], tmp_path / "b", config=PrepareConfig(workers=0), progress=False)
    a = [pq.read_table(p) for p in TileDataset(tmp_path / "a").shard_paths]
    b = [pq.read_table(p) for p in TileDataset(tmp_path / "b").shard_paths]
    assert all(x.equals(y) for x, y in zip(a, b, strict=True))
    # The same objects from two files are kept once per tile.
    prepare([fixture_osm, packed], tmp_path / "c", config=PrepareConfig(workers=0), progress=False)
    c = TileDataset(tmp_path / "c")
    assert c.manifest.counts == TileDataset(tmp_path / "a").manifest.counts
    assert [i.sha256 for i in c.manifest.inputs][0] != [i.sha256 for i in c.manifest.inputs][1]


def test_bbox_limits_tiles(fixture_osm: Path, tmp_path: Path) -> None:
    w, s, e, n = Tile(16, X0, Y0).bounds_lonlat()
    cfg = PrepareConfig(workers=0, bbox=(w + 1e-6, s + 1e-6, e - 1e-6, n - 1e-6))
    prepare([fixture_osm], tmp_path / "a", config=cfg, progress=False)
    assert [(t["x"], t["y"]) for t in TileDataset(tmp_path / "a").iter_tiles(columns=["x", "y"])] == [(X0, Y0)]


def test_geoparquet_opens_in_geopandas(fixture_osm: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    prepare([fixture_osm], tmp_path / "a", config=PrepareConfig(workers=0, geoparquet=True), progress=False)
    frame = gpd.read_parquet(tmp_path / "a" / "entities.parquet")
    assert frame.crs is not None and frame.crs.to_epsg() == 4326 or frame.crs.equals("OGC:CRS84")
    assert len(frame) == sum(c["entities"] for c in TileDataset(tmp_path / "a").manifest.counts.values())
    road = frame[(frame.osm_type == "way") & (frame.osm_id == 100)]
    assert len(road) == 4 and set(road.kind) == {"line"}
    assert road.iloc[0].tags == "highway=primary;maxspeed=50"


# ---------------------------------------------------------------- failure modes


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeoJepaError, match="missing.osm.pbf: OSM file not found"):
        prepare([tmp_path / "missing.osm.pbf"], tmp_path / "out", progress=False)
    assert _leftovers(tmp_path) == []


def test_corrupt_pbf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.osm.pbf"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(GeoJepaError, match="bad.osm.pbf: cannot read OSM data"):
        prepare([bad], tmp_path / "out", config=PrepareConfig(workers=0), progress=False)
    assert _leftovers(tmp_path) == ["bad.osm.pbf"]


def test_truncated_pbf(helsinki_pbf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(helsinki_pbf.read_bytes()[: helsinki_pbf.stat().st_size // 2])
    with pytest.raises(GeoJepaError, match="cut.osm.pbf: cannot read OSM data"):
        prepare([cut], tmp_path / "out", config=PrepareConfig(workers=0), progress=False)
    assert _leftovers(tmp_path) == ["cut.osm.pbf"]


def test_folder_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "extract.osm.pbf"
    folder.mkdir()
    with pytest.raises(GeoJepaError, match="extract.osm.pbf: OSM input is not a file"):
        prepare([folder], tmp_path / "out", progress=False)


def test_no_data_in_bbox(fixture_osm: Path, tmp_path: Path) -> None:
    cfg = PrepareConfig(workers=0, bbox=(10.0, 50.0, 10.01, 50.01))
    with pytest.raises(GeoJepaError, match="no OSM entities with kept tags inside bbox"):
        prepare([fixture_osm], tmp_path / "out", config=cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(fixture_osm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GeoJepaError, match="output exists; pass --overwrite"):
        prepare([fixture_osm], out, config=PrepareConfig(workers=0), progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    prepare([fixture_osm], out, config=PrepareConfig(workers=0), overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert _leftovers(tmp_path) == ["out"]


def test_failure_mid_write_leaves_nothing(fixture_osm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geojepa.prepare as prep

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep, "assemble_bucket", broken)
    with pytest.raises(GeoJepaError, match="out: writing the dataset failed .*No space left"):
        prepare([fixture_osm], tmp_path / "out", config=PrepareConfig(workers=0), progress=False)
    assert _leftovers(tmp_path) == []


def test_bad_settings(fixture_osm: Path, tmp_path: Path) -> None:
    with pytest.raises(GeoJepaError, match="split fractions"):
        prepare([fixture_osm], tmp_path / "o", config=PrepareConfig(split_fractions=(0.5, 0.1, 0.1)), progress=False)
    with pytest.raises(GeoJepaError, match="unsupported OSM file type"):
        txt = tmp_path / "a.txt"
        txt.write_text("x")
        prepare([txt], tmp_path / "o", progress=False)
