"""Per-tile RGB images from user imagery (SPEC section 2, *Image*).

Two kinds of source are supported, chosen by :func:`open_imagery` from what the path is:

* **GeoTIFF / COG files** (or any georeferenced raster GDAL reads), in any CRS. Each Web-Mercator
  tile is warped to its exact EPSG:3857 bounds with bilinear resampling (GDAL's warper widens
  the kernel when it downsamples, and an overview is used when the source is much finer than the
  tile). Several files form a mosaic: a later file only fills pixels earlier ones left empty.
  Valid pixels come from the dataset mask (nodata, alpha band or internal mask).
* **An XYZ tile folder**, ``{z}/{x}/{y}.{ext}`` or flat ``{z}_{x}_{y}.{ext}`` with ``ext`` one of
  png, jpg, jpeg, webp, tif, tiff. A tile is read from its own image when the folder has it,
  otherwise cropped from the finest coarser ancestor image, otherwise assembled from finer
  images (at most three zoom levels finer).

Sources are meant to be used from several worker processes: they hold only plain, picklable
metadata, open their files lazily and drop open handles when pickled or after a ``fork``. A
source is not thread-safe; give each thread its own copy.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import rasterio
import rasterio.errors
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from geojepa.errors import GeoJepaError
from geojepa.tiles import (
    MAX_LATITUDE,
    Tile,
    lonlat_to_mercator,
    tile_bounds_lonlat,
    tiles_in_bbox,
)

__all__ = [
    "TILE_EXTENSIONS",
    "GeoTiffSource",
    "ImagerySource",
    "TileImage",
    "XyzTileSource",
    "check_overlap",
    "decode_image",
    "encode_image",
    "open_imagery",
]

BBox = tuple[float, float, float, float]
"""``(west, south, east, north)`` in degrees."""

TILE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "tif", "tiff")
"""Image extensions recognised in an XYZ tile folder."""

_IMAGE_LIKE_EXTENSIONS = frozenset(
    {"gif", "bmp", "jp2", "j2k", "avif", "heic", "heif", "tga", "ppm", "pgm", "ico", "svg",
     "jxl", "pbf", "mvt", "webm", "dds", "exr"}
)
"""Extensions that look like map tiles but are not supported; reported instead of ignored."""

_MERCATOR = CRS.from_epsg(3857)
_MAX_OPEN_FILES = 64
_STRETCH_PERCENTILES = (2.0, 98.0)
_STRETCH_SAMPLE_PX = 1024
_MAX_FINER_LEVELS = 3


@dataclass(frozen=True)
class TileImage:
    """The image of one tile.

    Attributes:
        rgb: ``(size, size, 3)`` uint8 pixels; pixels without imagery are 0.
        coverage: Fraction of the tile's pixels that had imagery, in ``[0, 1]``.
    """

    rgb: NDArray[np.uint8]
    coverage: float


def _bbox_intersects(a: BBox, b: BBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _format_bbox(bbox: BBox) -> str:
    return "({:.5f}, {:.5f}, {:.5f}, {:.5f})".format(*bbox)


class ImagerySource(ABC):
    """Per-tile imagery; see :func:`open_imagery`.

    Attributes:
        bounds_lonlat: Union extent ``(west, south, east, north)`` of the imagery, in degrees.
        zoom_levels: Zoom levels that have images (XYZ folders); empty when any zoom can be
            resampled (GeoTIFF).
        description: One line describing the source, for logs.
    """

    bounds_lonlat: BBox
    zoom_levels: tuple[int, ...]
    description: str

    @abstractmethod
    def read_tile(self, tile: Tile, size: int = 224) -> TileImage:
        """Return the RGB image of ``tile`` resampled to ``size x size`` pixels.

        Args:
            tile: The Web-Mercator tile.
            size: Side of the output image in pixels.

        Returns:
            The image and its coverage; with coverage 0 the pixels are all 0.

        Raises:
            GeoJepaError: A file of the source cannot be read.
        """

    @abstractmethod
    def read_array(
        self, tile: Tile, size: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Return the raw resampled values of ``tile`` (no RGB conversion).

        Args:
            tile: The Web-Mercator tile.
            size: Side of the output grid in pixels.

        Returns:
            ``(values, valid)``: ``(bands, size, size)`` float64 values (0 where not valid) and
            the ``(size, size)`` boolean mask of pixels that had imagery.
        """

    @abstractmethod
    def overlaps(self, bbox_lonlat: BBox) -> bool:
        """Return whether the imagery intersects ``bbox_lonlat`` ``(west, south, east, north)``."""

    def close(self) -> None:
        """Release open files; the source reopens them if it is used again."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# GeoTIFF / COG
# --------------------------------------------------------------------------------------------


@dataclass
class _RasterInfo:
    """Picklable metadata of one raster file."""

    path: str
    dtype: str
    data_bands: tuple[int, ...]
    rgb_bands: tuple[int, ...]
    alpha_band: int
    palette: NDArray[np.uint8] | None
    bounds_lonlat: BBox
    bounds_mercator: BBox
    res_mercator: float
    overview_factors: tuple[int, ...]
    stretch: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None


def _is_remote(path: str) -> bool:
    return path.startswith(("/vsi", "http://", "https://", "s3://", "gs://"))


def _reason(exc: BaseException, path: str | Path) -> str:
    """The first line of an exception's message, without the file name it may repeat."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for name in (f"'{path}'", f'"{path}"', str(path)):
        text = text.replace(name, "")
    return " ".join(text.split()).strip(" .:") or type(exc).__name__


def _raster_info(path: str) -> _RasterInfo:
    """Open ``path`` once, validate it and collect what tile reads need."""
    if not _is_remote(path) and not Path(path).is_file():
        raise GeoJepaError("imagery file not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return _describe(ds, path)
    except rasterio.errors.RasterioIOError as exc:
        raise GeoJepaError(
            f"not a GeoTIFF or other raster that GDAL can read ({_reason(exc, path)})", path
        ) from exc


def _describe(ds: Any, path: str) -> _RasterInfo:
    if ds.crs is None:
        if ds.gcps[0]:
            raise GeoJepaError(
                "raster is georeferenced only by ground control points; warp it to a CRS first "
                "(e.g. gdalwarp)",
                path,
            )
        raise GeoJepaError(
            "raster has no coordinate reference system (CRS); georeference it first "
            "(e.g. gdal_translate -a_srs EPSG:xxxx)",
            path,
        )
    if ds.transform.is_identity:
        raise GeoJepaError("raster has a CRS but no geotransform (not georeferenced)", path)
    interp = ds.colorinterp
    alpha = [i + 1 for i, c in enumerate(interp) if c == ColorInterp.alpha]
    data_bands = tuple(i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha)
    if not data_bands:
        raise GeoJepaError("raster has only an alpha band", path)
    rgb_bands = data_bands[:3] if len(data_bands) >= 3 else data_bands[:1]
    palette = None
    if (
        len(data_bands) == 1
        and interp[data_bands[0] - 1] == ColorInterp.palette
        and ds.dtypes[data_bands[0] - 1] == "uint8"
    ):
        try:
            cmap = ds.colormap(data_bands[0])
        except ValueError:
            cmap = {}
        if cmap:
            palette = np.zeros((256, 3), np.uint8)
            for k, v in cmap.items():
                if 0 <= k < 256:
                    palette[k] = v[:3]

    # Envelope of the 4 corners (also right for rotated geotransforms), with a pixel of margin.
    tr = ds.transform
    cols = np.array([-1, ds.width + 1, ds.width + 1, -1], dtype=np.float64)
    rows = np.array([-1, -1, ds.height + 1, ds.height + 1], dtype=np.float64)
    xs = tr.a * cols + tr.b * rows + tr.c
    ys = tr.d * cols + tr.e * rows + tr.f
    try:
        west, south, east, north = transform_bounds(
            ds.crs, "EPSG:4326", float(xs.min()), float(ys.min()), float(xs.max()),
            float(ys.max()), densify_pts=21,
        )
    except Exception as exc:  # PROJ errors have several types
        raise GeoJepaError(
            f"cannot transform the raster's extent to lon/lat ({_reason(exc, path)})", path
        ) from exc
    if not all(map(math.isfinite, (west, south, east, north))) or west > east:
        west, east = -180.0, 180.0  # crosses the antimeridian or odd CRS: be conservative
        south = south if math.isfinite(south) else -90.0
        north = north if math.isfinite(north) else 90.0
    south, north = max(south, -90.0), min(north, 90.0)
    mx, my = lonlat_to_mercator(
        np.array([west, east]),
        np.clip(np.array([south, north]), -MAX_LATITUDE, MAX_LATITUDE),
    )
    merc = (float(mx[0]), float(my[0]), float(mx[1]), float(my[1]))
    res = min((merc[2] - merc[0]) / (ds.width + 2), (merc[3] - merc[1]) / (ds.height + 2))
    return _RasterInfo(
        path=path,
        dtype=ds.dtypes[rgb_bands[0] - 1],
        data_bands=data_bands,
        rgb_bands=rgb_bands,
        alpha_band=alpha[0] if alpha else 0,
        palette=palette,
        bounds_lonlat=(float(west), float(south), float(east), float(north)),
        bounds_mercator=merc,
        res_mercator=max(res, 1e-9),
        overview_factors=tuple(ds.overviews(rgb_bands[0])),
    )


def _sample_for_stretch(ds: Any, bands: tuple[int, ...]) -> NDArray[np.float64]:
    """Read a bounded sample of ``bands``: ``(bands, n)`` valid values (NaN where invalid)."""
    w, h = ds.width, ds.height
    scale = max(1.0, max(w, h) / _STRETCH_SAMPLE_PX)
    if scale == 1.0 or ds.overviews(bands[0]) or w * h <= 4096 * 4096:
        shape = (len(bands), max(1, int(h / scale)), max(1, int(w / scale)))
        arr = ds.read(bands, out_shape=shape, masked=True)
        chunks = [arr]
    else:  # big file without overviews: a grid of small windows, bounded cost
        n, win = 8, 128
        chunks = []
        for r in np.linspace(0, max(0, h - win), n).astype(int):
            for c in np.linspace(0, max(0, w - win), n).astype(int):
                window = Window(int(c), int(r), min(win, w), min(win, h))
                chunks.append(ds.read(bands, window=window, masked=True))
    out = []
    for arr in chunks:
        vals = np.ma.filled(arr.astype(np.float64), np.nan)
        out.append(vals.reshape(len(bands), -1))
    return np.concatenate(out, axis=1)


def _compute_stretch(
    ds: Any, bands: tuple[int, ...]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-band 2nd-98th percentile of the valid values of ``bands``."""
    sample = _sample_for_stretch(ds, bands)
    lo = np.zeros(len(bands))
    hi = np.ones(len(bands))
    for i, row in enumerate(sample):
        row = row[np.isfinite(row)]
        if row.size:
            lo[i], hi[i] = np.percentile(row, _STRETCH_PERCENTILES)
        if hi[i] <= lo[i]:
            hi[i] = lo[i] + 1.0
    return lo, hi


class GeoTiffSource(ImagerySource):
    """Imagery from one or more georeferenced raster files (GeoTIFF, COG, ...), in any CRS.

    The files are validated when the source is created; their handles are then opened lazily,
    reused across tiles (at most 64 open at once) and dropped when the source is pickled.

    Args:
        paths: Raster files; earlier files take precedence in the mosaic.
        stretch: ``(low, high)`` raw values mapped to 0 and 255 for non-uint8 rasters; default: a
            per-file, per-band 2nd-98th percentile stretch, computed once per file on first use.

    Raises:
        GeoJepaError: A file is missing, unreadable, or has no CRS.
    """

    def __init__(
        self, paths: Sequence[str | Path], stretch: tuple[float, float] | None = None
    ) -> None:
        if not paths:
            raise GeoJepaError("no imagery files given")
        self._files = [_raster_info(os.fspath(p)) for p in paths]
        if stretch is not None:
            lo, hi = float(stretch[0]), float(stretch[1])
            if not hi > lo:
                raise ValueError(f"stretch high {hi} must exceed low {lo}")
            for info in self._files:
                n = len(info.rgb_bands)
                info.stretch = (np.full(n, lo), np.full(n, hi))
        self._merc = np.array([f.bounds_mercator for f in self._files], dtype=np.float64)
        lon = np.array([f.bounds_lonlat for f in self._files], dtype=np.float64)
        self.bounds_lonlat = (
            float(lon[:, 0].min()), float(lon[:, 1].min()),
            float(lon[:, 2].max()), float(lon[:, 3].max()),
        )
        self.zoom_levels = ()
        self._n_bands = min(len(f.data_bands) for f in self._files)
        name = Path(self._files[0].path).name
        more = f" and {len(self._files) - 1} more" if len(self._files) > 1 else ""
        self.description = f"GeoTIFF imagery: {name}{more}"
        self._handles: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._pid = os.getpid()

    @property
    def paths(self) -> list[str]:
        """The raster files, in mosaic order."""
        return [f.path for f in self._files]

    @property
    def band_count(self) -> int:
        """Number of bands :meth:`read_array` returns (the smallest count over the files)."""
        return self._n_bands

    # -- pickling and handles -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self) -> None:
        """Close all open file handles."""
        handles, self._handles = self._handles, OrderedDict()
        if self._pid == os.getpid():
            for ds in handles.values():
                ds.close()
        self._pid = os.getpid()

    def _dataset(self, index: int, level: int) -> Any:
        if self._pid != os.getpid():  # forked: never share GDAL handles (file offsets) with parent
            self._handles = OrderedDict()
            self._pid = os.getpid()
        key = (index, level)
        ds = self._handles.get(key)
        if ds is not None:
            self._handles.move_to_end(key)
            return ds
        path = self._files[index].path
        try:
            ds = rasterio.open(path) if level < 0 else rasterio.open(path, overview_level=level)
        except rasterio.errors.RasterioIOError as exc:
            raise GeoJepaError(f"cannot open raster ({_reason(exc, path)})", path) from exc
        self._handles[key] = ds
        while len(self._handles) > _MAX_OPEN_FILES:
            _, old = self._handles.popitem(last=False)
            old.close()
        return ds

    def _overview_level(self, info: _RasterInfo, dst_res: float) -> int:
        """Coarsest overview that is still at least as fine as the output; -1: full resolution."""
        level = -1
        for i, factor in enumerate(info.overview_factors):
            if info.res_mercator * factor <= dst_res:
                level = i
        return level

    # -- reading ------------------------------------------------------------------------------

    def _candidates(self, tile: Tile) -> NDArray[np.int64]:
        xmin, ymin, xmax, ymax = tile.bounds_mercator()
        m = self._merc
        hit = (m[:, 0] < xmax) & (xmin < m[:, 2]) & (m[:, 1] < ymax) & (ymin < m[:, 3])
        return np.flatnonzero(hit)

    def _warp(
        self,
        index: int,
        tile: Tile,
        size: int,
        bands: tuple[int, ...],
        dtype: Any,
        resampling: Resampling = Resampling.bilinear,
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Warp ``bands`` of file ``index`` onto the tile grid: ``(values, valid)``."""
        info = self._files[index]
        bounds = tile.bounds_mercator()
        res = (bounds[2] - bounds[0]) / size
        level = self._overview_level(info, res)
        ds = self._dataset(index, level)
        nb = len(bands)
        dst = np.zeros((nb + 1, size, size), dtype=dtype)
        try:
            reproject(
                rasterio.band(ds, list(bands)),
                dst,
                dst_transform=Affine(res, 0.0, bounds[0], 0.0, -res, bounds[3]),
                dst_crs=_MERCATOR,
                src_alpha=info.alpha_band,
                dst_alpha=nb + 1,
                resampling=resampling,
            )
        except rasterio.errors.RasterioError as exc:
            raise GeoJepaError(
                f"cannot read raster data ({_reason(exc, info.path)})", info.path
            ) from exc
        values = dst[:nb]
        valid = dst[nb] > 0
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values).all(axis=0)
        return values, valid

    def _to_rgb(self, index: int, values: NDArray[Any]) -> NDArray[np.uint8]:
        """Convert warped ``rgb_bands`` values of file ``index`` to ``(size, size, 3)`` uint8."""
        info = self._files[index]
        if info.palette is not None:
            return info.palette[values[0].astype(np.uint8)]
        if values.dtype != np.uint8:
            if info.stretch is None:
                try:
                    info.stretch = _compute_stretch(self._dataset(index, -1), info.rgb_bands)
                except rasterio.errors.RasterioError as exc:
                    raise GeoJepaError(
                        f"cannot read raster values for the stretch ({_reason(exc, info.path)})",
                        info.path,
                    ) from exc
            lo, hi = info.stretch
            scaled = (values - lo[:, None, None].astype(np.float32)) * (
                255.0 / (hi - lo)
            )[:, None, None].astype(np.float32)
            values = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
        if values.shape[0] == 1:
            values = np.repeat(values, 3, axis=0)
        return np.ascontiguousarray(values.transpose(1, 2, 0))

    def read_tile(self, tile: Tile, size: int = 224) -> TileImage:
        """Return the RGB image of ``tile``; see :meth:`ImagerySource.read_tile`.

        Bands 1-3 make the RGB image (a raster with fewer bands gives grey from band 1). uint8
        values are kept; other types are stretched to 0-255 (see the ``stretch`` argument).
        """
        rgb = np.zeros((size, size, 3), np.uint8)
        filled = np.zeros((size, size), bool)
        for index in self._candidates(tile):
            info = self._files[index]
            if info.palette is not None:
                values, valid = self._warp(
                    index, tile, size, info.rgb_bands, np.uint8, Resampling.nearest
                )
            else:
                dtype = np.uint8 if info.dtype == "uint8" else np.float32
                values, valid = self._warp(index, tile, size, info.rgb_bands, dtype)
            if not filled.any() and valid.all():  # the common case: one file covers the tile
                return TileImage(rgb=self._to_rgb(index, values), coverage=1.0)
            take = valid & ~filled
            if not take.any():
                continue
            np.copyto(rgb, self._to_rgb(index, values), where=take[:, :, None])
            filled |= take
            if filled.all():
                break
        return TileImage(rgb=rgb, coverage=float(np.count_nonzero(filled)) / filled.size)

    def read_array(
        self, tile: Tile, size: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Return raw values of the first :attr:`band_count` non-alpha bands, bilinear-warped."""
        out = np.zeros((self._n_bands, size, size), np.float64)
        filled = np.zeros((size, size), bool)
        for index in self._candidates(tile):
            bands = self._files[index].data_bands[: self._n_bands]
            values, valid = self._warp(index, tile, size, bands, np.float64)
            take = valid & ~filled
            if not take.any():
                continue
            np.copyto(out, values, where=take[None])
            filled |= take
            if filled.all():
                break
        return out, filled

    def overlaps(self, bbox_lonlat: BBox) -> bool:
        """Return whether any file's extent intersects ``bbox_lonlat``."""
        return any(_bbox_intersects(f.bounds_lonlat, bbox_lonlat) for f in self._files)


# --------------------------------------------------------------------------------------------
# XYZ tile folder
# --------------------------------------------------------------------------------------------

_FLAT_RE = re.compile(r"^(\d+)_(\d+)_(\d+)\.([A-Za-z0-9]+)$")
_NESTED_RE = re.compile(r"^(\d+)\.([A-Za-z0-9]+)$")
_NUM_RE = re.compile(r"^\d+$")
_FLAT, _NESTED = 0, 1


class XyzTileSource(ImagerySource):
    """Imagery from a folder of slippy-map tile images.

    The folder is indexed once when the source is created (the index is plain data and is
    pickled with the source). Layouts: ``{z}/{x}/{y}.{ext}`` and ``{z}_{x}_{y}.{ext}``.

    Args:
        folder: The tile folder.

    Raises:
        GeoJepaError: The folder has no recognised tiles, or only tiles of unsupported formats.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GeoJepaError("XYZ tile folder not found", self.folder)
        self._index: dict[int, dict[tuple[int, int], int]] = {}
        unsupported = self._scan()
        if not self._index:
            if unsupported:
                exts = ", ".join(f".{e}" for e in sorted(unsupported))
                raise GeoJepaError(
                    f"XYZ tile folder holds only tiles with unsupported extension(s) {exts}; "
                    f"supported: {', '.join('.' + e for e in TILE_EXTENSIONS)}",
                    self.folder,
                )
            raise GeoJepaError(
                "no XYZ tiles found (expected {z}/{x}/{y}.png or {z}_{x}_{y}.png, "
                f"with extension {', '.join(TILE_EXTENSIONS)})",
                self.folder,
            )
        self.zoom_levels = tuple(sorted(self._index))
        self._xy: dict[int, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
        boxes = []
        for z, tiles in self._index.items():
            xy = np.array(list(tiles), dtype=np.int64).reshape(-1, 2)
            self._xy[z] = (xy[:, 0], xy[:, 1])
            w, _, _, n = tile_bounds_lonlat(z, int(xy[:, 0].min()), int(xy[:, 1].min()))
            _, s, e, _ = tile_bounds_lonlat(z, int(xy[:, 0].max()), int(xy[:, 1].max()))
            boxes.append((w, s, e, n))
        b = np.array(boxes)
        self.bounds_lonlat = (
            float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())
        )
        count = sum(len(t) for t in self._index.values())
        zooms = ",".join(map(str, self.zoom_levels))
        self.description = f"XYZ tiles: {self.folder} ({count} tiles, zoom {zooms})"

    # -- index --------------------------------------------------------------------------------

    def _add(self, z: int, x: int, y: int, ext: str, layout: int, unsupported: set[str]) -> None:
        ext = ext.lower()
        if ext not in TILE_EXTENSIONS:
            if ext in _IMAGE_LIKE_EXTENSIONS:
                unsupported.add(ext)
            return
        if not (0 <= x < (1 << z) and 0 <= y < (1 << z)) or z > 30:
            return
        code = layout * len(TILE_EXTENSIONS) + TILE_EXTENSIONS.index(ext)
        self._index.setdefault(z, {}).setdefault((x, y), code)

    def _scan(self) -> set[str]:
        unsupported: set[str] = set()
        with os.scandir(self.folder) as top:
            entries = sorted(top, key=lambda e: e.name)
        for entry in entries:
            if entry.is_file():
                m = _FLAT_RE.match(entry.name)
                if m:
                    z, x, y = int(m[1]), int(m[2]), int(m[3])
                    self._add(z, x, y, m[4], _FLAT, unsupported)
            elif entry.is_dir() and _NUM_RE.match(entry.name):
                z = int(entry.name)
                with os.scandir(entry.path) as zdir:
                    xdirs = [e for e in zdir if e.is_dir() and _NUM_RE.match(e.name)]
                for xdir in xdirs:
                    x = int(xdir.name)
                    with os.scandir(xdir.path) as files:
                        for f in files:
                            m = _NESTED_RE.match(f.name)
                            if m:
                                self._add(z, x, int(m[1]), m[2], _NESTED, unsupported)
        return unsupported

    def _path(self, z: int, x: int, y: int) -> Path:
        code = self._index[z][(x, y)]
        layout, ext = divmod(code, len(TILE_EXTENSIONS))
        name = TILE_EXTENSIONS[ext]
        if layout == _FLAT:
            return self.folder / f"{z}_{x}_{y}.{name}"
        return self.folder / str(z) / str(x) / f"{y}.{name}"

    def _has(self, z: int, x: int, y: int) -> bool:
        tiles = self._index.get(z)
        return tiles is not None and (x, y) in tiles

    def _load(self, z: int, x: int, y: int) -> Image.Image:
        """Decode one tile image as RGB or RGBA."""
        path = self._path(z, x, y)
        try:
            with Image.open(path) as im:
                im.load()
                has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                    "transparency" in im.info
                )
                return im.convert("RGBA" if has_alpha else "RGB")
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError,
                Image.DecompressionBombError) as exc:
            raise GeoJepaError(f"cannot decode tile image ({_reason(exc, path)})", path) from exc

    # -- reading ------------------------------------------------------------------------------

    def _render(self, tile: Tile, size: int) -> Image.Image | None:
        """The tile as a ``size x size`` RGB/RGBA image, or None without imagery."""
        z, x, y = tile.z, tile.x, tile.y
        if self._has(z, x, y):
            im = self._load(z, x, y)
            if im.size == (size, size):
                return im
            return im.resize((size, size), Image.Resampling.BILINEAR)
        for zc in sorted((zz for zz in self._index if zz < z), reverse=True):
            parent = tile.parent(zc)
            if not self._has(zc, parent.x, parent.y):
                continue
            im = self._load(zc, parent.x, parent.y)
            n = 1 << (z - zc)
            bw, bh = im.width / n, im.height / n
            col, row = x - (parent.x << (z - zc)), y - (parent.y << (z - zc))
            box = (col * bw, row * bh, (col + 1) * bw, (row + 1) * bh)
            if bw == size and bh == size:
                return im.crop(tuple(int(v) for v in box))
            return im.resize((size, size), Image.Resampling.BILINEAR, box=box)
        for zf in sorted(zz for zz in self._index if z < zz <= z + _MAX_FINER_LEVELS):
            n = 1 << (zf - z)
            kids = [
                (i, j)
                for j in range(n)
                for i in range(n)
                if self._has(zf, (x << (zf - z)) + i, (y << (zf - z)) + j)
            ]
            if not kids:
                continue
            child_px = None
            canvas = None
            for i, j in kids:
                im = self._load(zf, (x << (zf - z)) + i, (y << (zf - z)) + j).convert("RGBA")
                if child_px is None:
                    child_px = max(1, min(im.width, -(-2 * size // n)))
                    canvas = Image.new("RGBA", (child_px * n, child_px * n), (0, 0, 0, 0))
                if im.size != (child_px, child_px):
                    im = im.resize((child_px, child_px), Image.Resampling.BILINEAR)
                assert canvas is not None
                canvas.paste(im, (i * child_px, j * child_px))
            assert canvas is not None
            return canvas.resize((size, size), Image.Resampling.BILINEAR)
        return None

    def _read(self, tile: Tile, size: int) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        im = self._render(tile, size)
        if im is None:
            return np.zeros((size, size, 3), np.uint8), np.zeros((size, size), bool)
        arr = np.asarray(im)
        if arr.shape[2] == 4:
            valid = arr[..., 3] >= 128
            rgb = arr[..., :3].copy()
            rgb[~valid] = 0
            return rgb, valid
        return np.ascontiguousarray(arr), np.ones((size, size), bool)

    def read_tile(self, tile: Tile, size: int = 224) -> TileImage:
        """Return the RGB image of ``tile``; see :meth:`ImagerySource.read_tile`.

        Coverage is 1 where an image covers the tile, or the fraction of opaque pixels when the
        images have an alpha channel.
        """
        rgb, valid = self._read(tile, size)
        return TileImage(rgb=rgb, coverage=float(valid.mean()))

    def read_array(
        self, tile: Tile, size: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Return the tile's RGB values as ``(3, size, size)`` float64 and its valid mask."""
        rgb, valid = self._read(tile, size)
        return rgb.transpose(2, 0, 1).astype(np.float64), valid

    def overlaps(self, bbox_lonlat: BBox) -> bool:
        """Return whether any indexed tile intersects ``bbox_lonlat``."""
        if not _bbox_intersects(self.bounds_lonlat, bbox_lonlat):
            return False
        for z, (xs, ys) in self._xy.items():
            xr, yr = tiles_in_bbox(bbox_lonlat, z)
            hit = (xs >= xr.start) & (xs < xr.stop) & (ys >= yr.start) & (ys < yr.stop)
            if hit.any():
                return True
        return False


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def open_imagery(paths: Sequence[str | Path] | str | Path) -> ImagerySource:
    """Open user imagery: one or more raster files, or exactly one XYZ tile folder.

    Args:
        paths: Raster files (GeoTIFF / COG, any CRS; mosaicked in this order), or a single
            folder of XYZ tiles. A single path may be given without a list.

    Returns:
        A :class:`GeoTiffSource` or :class:`XyzTileSource`.

    Raises:
        GeoJepaError: A path is missing or unreadable, a folder is mixed with files, or the
            imagery has no CRS / no recognised tiles.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    items = [os.fspath(p) for p in paths]
    if not items:
        raise GeoJepaError("no imagery given")
    folders = [p for p in items if not _is_remote(p) and Path(p).is_dir()]
    if folders:
        if len(items) != 1:
            raise GeoJepaError(
                "an XYZ tile folder must be the only imagery path (got several paths)", folders[0]
            )
        return XyzTileSource(folders[0])
    for p in items:
        if not _is_remote(p) and not Path(p).exists():
            raise GeoJepaError("imagery file or folder not found", p)
    return GeoTiffSource(items)


def check_overlap(source: ImagerySource, bbox_lonlat: BBox, path: str | Path | None) -> None:
    """Raise if the imagery does not intersect the OSM area.

    Args:
        source: The imagery.
        bbox_lonlat: The OSM area ``(west, south, east, north)`` in degrees.
        path: The imagery path to name in the error.

    Raises:
        GeoJepaError: The imagery does not overlap ``bbox_lonlat``.
    """
    if not source.overlaps(bbox_lonlat):
        raise GeoJepaError(
            f"imagery does not overlap the OSM area (imagery {_format_bbox(source.bounds_lonlat)}"
            f", OSM {_format_bbox(bbox_lonlat)}, as west, south, east, north)",
            path,
        )


_FORMATS = {"webp": "WEBP", "png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}


def encode_image(rgb: NDArray[np.uint8], fmt: str = "webp", quality: int = 90) -> bytes:
    """Encode an RGB image.

    Args:
        rgb: ``(h, w, 3)`` uint8 pixels.
        fmt: ``webp``, ``png`` (lossless) or ``jpeg`` / ``jpg``.
        quality: Quality for the lossy formats, 1-100.

    Returns:
        The encoded bytes.

    Raises:
        ValueError: Unknown format or wrong array shape / dtype.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (h, w, 3) uint8 array, got {arr.shape} {arr.dtype}")
    kind = _FORMATS.get(fmt.lower())
    if kind is None:
        raise ValueError(f"unknown image format {fmt!r}; use one of webp, png, jpeg")
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if kind == "PNG":
        im.save(buf, kind)
    else:
        im.save(buf, kind, quality=int(quality))
    return buf.getvalue()


def decode_image(data: bytes) -> NDArray[np.uint8]:
    """Decode image bytes (any format Pillow reads) to ``(h, w, 3)`` uint8 RGB.

    Raises:
        ValueError: The bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image ({exc})") from exc
