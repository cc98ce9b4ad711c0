"""Tests of geojepa.imagery: GeoTIFF warping, mosaics, XYZ folders, errors, image codecs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from geojepa.errors import GeoJepaError
from geojepa.imagery import (
    GeoTiffSource,
    TileImage,
    XyzTileSource,
    check_overlap,
    decode_image,
    encode_image,
    open_imagery,
)
from geojepa.tiles import Tile, lonlat_to_tile

NAIP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "naip_z16"
UTM = "EPSG:32635"
HELSINKI = (24.94, 60.17)
RASTER_M = 2000  # side of the UTM test raster, 1 m pixels


# --------------------------------------------------------------------------------------------
# fixture generators
# --------------------------------------------------------------------------------------------


def from_origin(west: float, north: float, xres: float, yres: float) -> Affine:
    return Affine(xres, 0.0, west, 0.0, -yres, north)


def from_bounds(
    west: float, south: float, east: float, north: float, width: int, height: int
) -> Affine:
    return Affine((east - west) / width, 0.0, west, 0.0, -(north - south) / height, north)


def write_raster(path: Path, data: np.ndarray, crs: str | None, transform, **profile) -> Path:
    """Write ``(bands, h, w)`` ``data`` as a tiled GeoTIFF."""
    bands, height, width = data.shape
    kw = dict(
        driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype.name,
        transform=transform, tiled=True, blockxsize=256, blockysize=256,
    )
    if crs is not None:
        kw["crs"] = crs
    kw.update(profile)
    with rasterio.open(path, "w", **kw) as ds:
        ds.write(data)
    return path


def utm_origin() -> tuple[float, float]:
    """Upper-left corner (easting, northing) of the UTM test raster, centred on Helsinki."""
    e, n = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(*HELSINKI)
    return float(round(e) - RASTER_M // 2), float(round(n) + RASTER_M // 2)


@pytest.fixture(scope="module")
def utm_raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Float32 2-band raster whose values are the UTM easting / northing of each pixel centre."""
    e0, n0 = utm_origin()
    centres = np.arange(RASTER_M, dtype=np.float64) + 0.5
    east = np.broadcast_to(e0 + centres[None, :], (RASTER_M, RASTER_M))
    north = np.broadcast_to(n0 - centres[:, None], (RASTER_M, RASTER_M))
    data = np.stack([east, north]).astype(np.float32)
    path = tmp_path_factory.mktemp("utm") / "utm.tif"
    return write_raster(path, data, UTM, from_origin(e0, n0, 1.0, 1.0))


def tile_at(lon: float, lat: float, z: int) -> Tile:
    x, y = lonlat_to_tile(lon, lat, z)
    return Tile(z, int(x), int(y))


def pixel_centres_utm(tile: Tile, size: int) -> tuple[np.ndarray, np.ndarray]:
    """UTM coordinates of the centres of a tile's ``size x size`` output pixels."""
    xmin, ymin, xmax, ymax = tile.bounds_mercator()
    res = (xmax - xmin) / size
    c = (np.arange(size) + 0.5) * res
    mx, my = np.meshgrid(xmin + c, ymax - c)
    t = Transformer.from_crs("EPSG:3857", UTM, always_xy=True)
    e, n = t.transform(mx, my)
    return np.asarray(e), np.asarray(n)


def lonlat_raster(path: Path, bbox, colour, px_deg: float = 1e-5) -> Path:
    """A uint8 RGB raster in EPSG:4326 filling ``bbox`` with one colour."""
    w, s, e, n = bbox
    width, height = round((e - w) / px_deg), round((n - s) / px_deg)
    data = np.empty((3, height, width), np.uint8)
    data[:] = np.array(colour, np.uint8)[:, None, None]
    return write_raster(path, data, "EPSG:4326", from_bounds(w, s, e, n, width, height))


def utm_rgb_raster(path: Path, bbox_lonlat, colour) -> Path:
    """A uint8 RGB raster in UTM at 1 m covering ``bbox_lonlat``, filled with one colour."""
    left, bottom, right, top = transform_bounds("EPSG:4326", UTM, *bbox_lonlat)
    left, bottom, right, top = np.floor(left), np.floor(bottom), np.ceil(right), np.ceil(top)
    width, height = int(right - left), int(top - bottom)
    data = np.empty((3, height, width), np.uint8)
    data[:] = np.array(colour, np.uint8)[:, None, None]
    return write_raster(path, data, UTM, from_origin(left, top, 1.0, 1.0))


# --------------------------------------------------------------------------------------------
# GeoTIFF
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z,size", [(16, 224), (17, 224), (17, 97)])
def test_read_array_lands_within_one_pixel(utm_raster: Path, z: int, size: int) -> None:
    with open_imagery([utm_raster]) as src:
        assert isinstance(src, GeoTiffSource)
        tile = tile_at(*HELSINKI, z)
        values, valid = src.read_array(tile, size)
    assert values.shape == (2, size, size) and values.dtype == np.float64
    assert valid.shape == (size, size) and valid.all()
    e, n = pixel_centres_utm(tile, size)
    assert np.abs(values[0] - e).max() < 1.0
    assert np.abs(values[1] - n).max() < 1.0
    # bilinear interpolation of a linear field: far better than a pixel on average
    assert np.abs(values[0] - e).mean() < 0.3


def test_edge_tile_partial_coverage(utm_raster: Path) -> None:
    e0, n0 = utm_origin()
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(e0, n0 - 1000)
    tile = tile_at(lon, lat, 16)  # holds the raster's west edge
    src = open_imagery(utm_raster)
    values, valid = src.read_array(tile, 224)
    e, n = pixel_centres_utm(tile, 224)
    inside = (e > e0 + 1) & (e < e0 + RASTER_M - 1) & (n < n0 - 1) & (n > n0 - RASTER_M + 1)
    outside = (e < e0 - 1) | (e > e0 + RASTER_M + 1) | (n > n0 + 1) | (n < n0 - RASTER_M - 1)
    assert inside.any() and outside.any()
    assert valid[inside].all() and not valid[outside].any()
    assert np.abs(values[0][valid] - e[valid]).max() < 1.0
    assert (values[:, ~valid] == 0).all()
    img = src.read_tile(tile)
    assert 0.05 < img.coverage < 0.95
    assert img.coverage == pytest.approx(valid.mean())
    assert (img.rgb[~valid] == 0).all()
    # outside the raster
    far = Tile(16, tile.x - 5, tile.y)
    img = src.read_tile(far)
    assert img.coverage == 0.0 and not img.rgb.any() and img.rgb.shape == (224, 224, 3)
    values, valid = src.read_array(far, 64)
    assert not valid.any() and not values.any()
    src.close()


def test_float_raster_is_stretched_to_grey(utm_raster: Path) -> None:
    src = open_imagery([utm_raster])
    img = src.read_tile(tile_at(*HELSINKI, 16))
    assert isinstance(img, TileImage)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (224, 224, 3)
    assert img.coverage == 1.0
    assert (img.rgb[..., 0] == img.rgb[..., 1]).all() and (img.rgb[..., 0] == img.rgb[..., 2]).all()
    # band 1 = easting: grey increases to the east, and the stretch uses a wide range
    assert img.rgb[:, -1, 0].mean() > img.rgb[:, 0, 0].mean() + 20


def test_uint8_rgb_raster_passes_through(tmp_path: Path) -> None:
    tile = tile_at(*HELSINKI, 16)
    path = lonlat_raster(tmp_path / "rgb.tif", _pad(tile.bounds_lonlat(), 0.002), (10, 120, 250))
    src = open_imagery([path])
    img = src.read_tile(tile)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (224, 224, 3)
    assert img.coverage == 1.0
    assert (img.rgb == np.array([10, 120, 250], np.uint8)).all()
    assert src.read_tile(tile, size=64).rgb.shape == (64, 64, 3)


def test_uint16_raster_is_stretched(tmp_path: Path) -> None:
    tile = tile_at(*HELSINKI, 16)
    w, s, e, n = _pad(tile.bounds_lonlat(), 0.001)
    height, width = 600, 800
    yy, xx = np.mgrid[0:height, 0:width]
    data = np.stack([1000 + 5 * xx, 1000 + 6 * yy, 3000 + 2 * (xx + yy)]).astype(np.uint16)
    transform = from_bounds(w, s, e, n, width, height)
    path = write_raster(tmp_path / "u16.tif", data, "EPSG:4326", transform)
    src = open_imagery([path])
    img = src.read_tile(tile)
    assert img.rgb.dtype == np.uint8 and img.coverage == 1.0
    values, valid = src.read_array(tile, 224)
    assert values.shape == (3, 224, 224) and valid.all()
    lo, hi = np.percentile(data.reshape(3, -1).astype(np.float64), [2, 98], axis=1)
    lo, hi = lo[:, None, None], hi[:, None, None]
    expected = np.clip(np.rint((values - lo) * 255 / (hi - lo)), 0, 255)
    assert np.abs(img.rgb.transpose(2, 0, 1).astype(float) - expected).max() <= 1.0
    assert int(img.rgb.max()) - int(img.rgb.min()) > 100


@pytest.mark.parametrize("kind", ["nodata", "alpha", "mask"])
def test_dataset_mask_gives_partial_coverage(tmp_path: Path, kind: str) -> None:
    tile = tile_at(*HELSINKI, 16)
    w, s, e, n = tile.bounds_lonlat()
    data = np.full((3, 400, 400), 77, np.uint8)
    valid = np.zeros((400, 400), np.uint8)
    valid[:, 200:] = 255  # east half has imagery
    path = tmp_path / f"{kind}.tif"
    transform = from_bounds(w, s, e, n, 400, 400)
    if kind == "nodata":
        data[:, valid == 0] = 0
        write_raster(path, data, "EPSG:4326", transform, nodata=0)
    elif kind == "alpha":
        write_raster(path, np.concatenate([data, valid[None]]), "EPSG:4326", transform,
                     photometric="RGB", alpha="YES")
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3,
                               dtype="uint8", crs="EPSG:4326", transform=transform) as ds:
                ds.write(data)
                ds.write_mask(valid)
    src = open_imagery(path)
    img = src.read_tile(tile)
    assert img.coverage == pytest.approx(0.5, abs=0.02)
    assert (img.rgb[:, :100] == 0).all() and (img.rgb[:, 124:] == 77).all()
    values, ok = src.read_array(tile, 224)
    assert values.shape == (3, 224, 224)  # an alpha band is not a data band
    assert ok[:, 124:].all() and not ok[:, :100].any()


def test_overview_is_used_for_fine_rasters(tmp_path: Path) -> None:
    tile = tile_at(*HELSINKI, 16)  # ~1.36 m per output pixel
    w, s, e, n = _pad(tile.bounds_lonlat(), 0.0005)
    width, height = 2400, 1600  # ~0.15-0.2 m pixels
    yy, xx = np.mgrid[0:height, 0:width]
    data = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)])
    data = data.astype(np.uint8)
    transform = from_bounds(w, s, e, n, width, height)
    full = write_raster(tmp_path / "full.tif", data, "EPSG:4326", transform)
    ovr = write_raster(tmp_path / "ovr.tif", data, "EPSG:4326", transform)
    with rasterio.open(ovr, "r+") as ds:
        ds.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.average)
    a = open_imagery(full).read_tile(tile)
    b = open_imagery(ovr).read_tile(tile)
    assert a.coverage == b.coverage == 1.0
    assert np.abs(a.rgb.astype(int) - b.rgb).max() <= 2


def _pad(bbox, d: float):
    w, s, e, n = bbox
    return (w - d, s - d, e + d, n + d)


def test_mosaic_of_two_crs_fills_tile(tmp_path: Path) -> None:
    tile = tile_at(*HELSINKI, 16)
    w, s, e, n = tile.bounds_lonlat()
    cx = (w + e) / 2  # Mercator x is linear in longitude: the tile's middle column
    # the west file reaches ~10 m past the middle; the east one starts exactly there
    west_box = (w - 0.001, s - 0.001, cx + 0.0002, n + 0.001)
    west = utm_rgb_raster(tmp_path / "west_utm.tif", west_box, (200, 0, 0))
    east_box = (cx, s - 0.001, e + 0.001, n + 0.001)
    east = lonlat_raster(tmp_path / "east_4326.tif", east_box, (0, 0, 200))
    a = open_imagery([west]).read_tile(tile)
    b = open_imagery([east]).read_tile(tile)
    assert 0.5 < a.coverage < 0.7
    assert b.coverage == pytest.approx(0.5, abs=0.01)
    both = open_imagery([west, east])
    img = both.read_tile(tile)
    assert img.coverage == 1.0
    assert (img.rgb[:, :100] == (200, 0, 0)).all() and (img.rgb[:, 130:] == (0, 0, 200)).all()
    # the first file wins where both have data
    assert (img.rgb[:, 112:114] == (200, 0, 0)).all()
    rev = open_imagery([east, west]).read_tile(tile)
    assert rev.coverage == 1.0 and (rev.rgb[:, 112:114] == (0, 0, 200)).all()
    assert both.bounds_lonlat[0] < w and both.bounds_lonlat[2] > e
    assert both.overlaps((w, s, e, n)) and not both.overlaps((0.0, 0.0, 1.0, 1.0))
    check_overlap(both, (w, s, e, n), west)
    with pytest.raises(GeoJepaError, match="does not overlap") as err:
        check_overlap(both, (0.0, 0.0, 1.0, 1.0), west)
    assert str(west) in str(err.value)


def test_source_pickles_and_reopens(utm_raster: Path) -> None:
    src = open_imagery([utm_raster])
    tile = tile_at(*HELSINKI, 17)
    first = src.read_tile(tile)  # opens a handle and computes the stretch
    clone = pickle.loads(pickle.dumps(src))
    again = clone.read_tile(tile)
    assert np.array_equal(first.rgb, again.rgb) and first.coverage == again.coverage
    src.close()
    assert np.array_equal(src.read_tile(tile).rgb, first.rgb)  # reopens after close


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def _raises_naming(path: Path, *args) -> GeoJepaError:
    with pytest.raises(GeoJepaError) as err:
        open_imagery(args or [path])
    assert str(path) in str(err.value)
    return err.value


def test_missing_file(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope.tif")


def test_text_file_named_tif(tmp_path: Path) -> None:
    path = tmp_path / "fake.tif"
    path.write_text("this is not an image\n")
    assert "raster" in str(_raises_naming(path))


def test_raster_without_crs(tmp_path: Path) -> None:
    data = np.zeros((1, 8, 8), np.uint8)
    path = write_raster(tmp_path / "nocrs.tif", data, None, from_origin(0, 8, 1, 1))
    assert "CRS" in str(_raises_naming(path))


def test_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert "no XYZ tiles" in str(_raises_naming(folder))


def test_folder_of_gifs(tmp_path: Path) -> None:
    folder = tmp_path / "gifs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "16_1_2.gif")
    (folder / "16").mkdir()
    (folder / "16" / "1").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "16" / "1" / "3.gif")
    assert ".gif" in str(_raises_naming(folder))


def test_folder_mixed_with_files(tmp_path: Path) -> None:
    _raises_naming(tmp_path, tmp_path, tmp_path / "x.tif")


def test_corrupt_tile_image_raises_when_read(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = folder / "16_10_20.png"
    bad.write_bytes(b"\x89PNG not really")
    src = open_imagery([folder])
    with pytest.raises(GeoJepaError) as err:
        src.read_tile(Tile(16, 10, 20))
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------------------------
# XYZ folders (real NAIP tiles)
# --------------------------------------------------------------------------------------------

naip = pytest.mark.skipif(not NAIP_DIR.is_dir(), reason="NAIP sample tiles not available")
NAIP_GROUP = [(10476 + dx, 25336 + dy) for dy in (0, 1) for dx in (0, 1)]  # one z15 parent


def _naip(x: int, y: int) -> np.ndarray:
    return decode_image((NAIP_DIR / f"16_{x}_{y}.webp").read_bytes())


def _naip_parent() -> np.ndarray:
    """The four NAIP tiles of NAIP_GROUP pasted into one 448 px z15 image."""
    big = np.zeros((448, 448, 3), np.uint8)
    for x, y in NAIP_GROUP:
        dx, dy = x - NAIP_GROUP[0][0], y - NAIP_GROUP[0][1]
        big[dy * 224 : (dy + 1) * 224, dx * 224 : (dx + 1) * 224] = _naip(x, y)
    return big


@naip
def test_naip_folder_reads_exact_tiles() -> None:
    src = open_imagery([NAIP_DIR])
    assert isinstance(src, XyzTileSource) and src.zoom_levels == (16,)
    for x, y in [(10476, 25336), (10645, 25121), (18687, 25059)]:
        img = src.read_tile(Tile(16, x, y))
        assert img.coverage == 1.0
        assert np.array_equal(img.rgb, _naip(x, y))
    missing = src.read_tile(Tile(16, 10480, 25336))
    assert missing.coverage == 0.0 and not missing.rgb.any()
    # z17 from a z16 image: a 112 px quadrant enlarged
    assert src.read_tile(Tile(17, 2 * 10476 + 1, 2 * 25336)).coverage == 1.0
    # z15 assembled from the four z16 children
    z15 = src.read_tile(Tile(15, 10476 // 2, 25336 // 2))
    assert z15.coverage == 1.0
    ref = np.asarray(Image.fromarray(_naip_parent()).resize((224, 224), Image.Resampling.BILINEAR))
    assert np.abs(z15.rgb.astype(int) - ref).max() <= 1
    # extent and overlap
    w, s, e, n = src.bounds_lonlat
    assert w < -122 and e > -78 and 33 < s < n < 40
    tb = Tile(16, 10476, 25336).bounds_lonlat()
    assert src.overlaps(tb) and not src.overlaps((24.0, 60.0, 25.0, 61.0))
    assert not src.overlaps((-100.0, 35.0, -99.0, 36.0))  # inside the extent, but no tiles
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(clone.read_tile(Tile(16, 10476, 25336)).rgb, _naip(10476, 25336))


@naip
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_coarse_tile_split_gives_originals(tmp_path: Path, layout: str) -> None:
    big = _naip_parent()
    px, py = NAIP_GROUP[0][0] // 2, NAIP_GROUP[0][1] // 2
    if layout == "flat":
        path = tmp_path / f"15_{px}_{py}.png"
    else:
        path = tmp_path / "15" / str(px) / f"{py}.png"
        path.parent.mkdir(parents=True)
    Image.fromarray(big).save(path)
    src = open_imagery([tmp_path])
    assert src.zoom_levels == (15,)
    for x, y in NAIP_GROUP:
        img = src.read_tile(Tile(16, x, y))
        assert img.coverage == 1.0
        assert np.array_equal(img.rgb, _naip(x, y))
        values, valid = src.read_array(Tile(16, x, y), 224)
        assert valid.all() and np.array_equal(values, _naip(x, y).transpose(2, 0, 1))
    assert np.array_equal(src.read_tile(Tile(15, px, py), 448).rgb, big)
    assert src.read_tile(Tile(16, 2 * px + 2, 2 * py)).coverage == 0.0
    # z17 from z15: a 112 px block resized to 224
    assert src.read_tile(Tile(17, 4 * px + 3, 4 * py + 3)).rgb.shape == (224, 224, 3)


def test_xyz_alpha_gives_coverage(tmp_path: Path) -> None:
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[:, :128, 3] = 255  # west half opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "12_3_4.png")
    img = open_imagery(tmp_path).read_tile(Tile(12, 3, 4))
    assert img.coverage == pytest.approx(0.5, abs=0.02)
    assert (img.rgb[:, :100] == 90).all() and (img.rgb[:, 124:] == 0).all()


# --------------------------------------------------------------------------------------------
# codecs
# --------------------------------------------------------------------------------------------


def _smooth_image() -> np.ndarray:
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy)], axis=-1)
    return (img * 255).astype(np.uint8)


def test_encode_decode_roundtrip() -> None:
    img = _smooth_image()
    assert np.array_equal(decode_image(encode_image(img, "png")), img)
    for fmt in ("webp", "jpeg", "jpg"):
        out = decode_image(encode_image(img, fmt, quality=90))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - img).mean() < 2.0
    assert encode_image(img, "webp")[8:12] == b"WEBP"
    with pytest.raises(ValueError):
        encode_image(img, "gif")
    with pytest.raises(ValueError):
        encode_image(img[..., 0], "png")
    with pytest.raises(ValueError):
        decode_image(b"not an image")
