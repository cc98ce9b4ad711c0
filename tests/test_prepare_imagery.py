"""``prepare`` with imagery: images land on the right tiles; imagery errors are clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_bounds

from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError
from geojepa.imagery import decode_image
from geojepa.prepare import PrepareConfig, prepare
from geojepa.tiles import Tile
from osm_fixture import X0, Y0, tile_corner


def _geotiff(path: Path, bounds: tuple[float, float, float, float], crs: str | None = "EPSG:4326") -> Path:
    """An RGB GeoTIFF whose red channel rises to the east and green to the north."""
    h = w = 256
    yy, xx = np.mgrid[0:h, 0:w]
    data = np.stack([xx, h - 1 - yy, np.full_like(xx, 128)]).astype(np.uint8)
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8",
               "transform": from_bounds(*bounds, w, h)}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _tiles_bounds() -> tuple[float, float, float, float]:
    w, _, _, n = Tile(16, X0, Y0).bounds_lonlat()
    _, s, e, _ = Tile(16, X0 + 1, Y0 + 1).bounds_lonlat()
    return w, s, e, n


def test_geotiff_images_attach_to_tiles(fixture_osm: Path, tmp_path: Path) -> None:
    tif = _geotiff(tmp_path / "ortho.tif", _tiles_bounds())
    prepare([fixture_osm], tmp_path / "ds", imagery=[tif], config=PrepareConfig(workers=0, image_size=64, image_format="png"), progress=False)
    ds = TileDataset(tmp_path / "ds")
    assert ds.manifest.has_imagery and ds.manifest.report["tiles_with_image"] == 4
    images = {(t["x"], t["y"]): (decode_image(t["image"]), t["image_coverage"]) for t in ds.iter_tiles()}
    for (x, y), (rgb, coverage) in images.items():
        assert rgb.shape == (64, 64, 3) and coverage > 0.99
    # Red rises eastward across tiles, green northward (tile y grows southward).
    assert images[(X0 + 1, Y0)][0][..., 0].mean() > images[(X0, Y0)][0][..., 0].mean() + 60
    assert images[(X0, Y0)][0][..., 1].mean() > images[(X0, Y0 + 1)][0][..., 1].mean() + 60


def test_naip_xyz_folder_attaches_to_the_right_tiles(naip_dir: Path, tmp_path: Path) -> None:
    tiles = [(10476, 25336), (10477, 25337)]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6">']
    nid = 1
    for x, y in tiles:
        for k in range(5):
            lon, lat = tile_corner(x + 0.1 + 0.15 * k, y + 0.5)
            lines.append(f'<node id="{nid}" version="1" lat="{lat:.8f}" lon="{lon:.8f}"><tag k="amenity" v="bench"/></node>')
            nid += 1
    lines.append("</osm>")
    osm = tmp_path / "us.osm"
    osm.write_text("\n".join(lines))
    prepare([osm], tmp_path / "ds", imagery=[naip_dir], config=PrepareConfig(workers=0, image_format="png"), progress=False)
    for t in TileDataset(tmp_path / "ds").iter_tiles():
        expected = decode_image((naip_dir / f"16_{t['x']}_{t['y']}.webp").read_bytes())
        assert t["image_coverage"] == 1.0
        assert np.array_equal(decode_image(t["image"]), expected)


def test_imagery_without_crs(fixture_osm: Path, tmp_path: Path) -> None:
    tif = _geotiff(tmp_path / "nocrs.tif", (0, 0, 256, 256), crs=None)
    with pytest.raises(GeoJepaError, match="nocrs.tif: .*CRS"):
        prepare([fixture_osm], tmp_path / "ds", imagery=[tif], config=PrepareConfig(workers=0), progress=False)
    assert not (tmp_path / "ds").exists()


def test_imagery_outside_the_osm_area(fixture_osm: Path, tmp_path: Path) -> None:
    tif = _geotiff(tmp_path / "far.tif", (10.0, 50.0, 10.01, 50.01))
    with pytest.raises(GeoJepaError, match="far.tif: imagery does not overlap the OSM area"):
        prepare([fixture_osm], tmp_path / "ds", imagery=[tif], config=PrepareConfig(workers=0), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.tif"]


def test_unsupported_image_format(fixture_osm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "xyz"
    (folder / "16" / str(X0)).mkdir(parents=True)
    (folder / "16" / str(X0) / f"{Y0}.gif").write_bytes(b"GIF89a")
    with pytest.raises(GeoJepaError, match="xyz"):
        prepare([fixture_osm], tmp_path / "ds", imagery=[folder], config=PrepareConfig(workers=0), progress=False)
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(GeoJepaError, match="notes.tif"):
        prepare([fixture_osm], tmp_path / "ds", imagery=[text], config=PrepareConfig(workers=0), progress=False)
    assert not (tmp_path / "ds").exists()
