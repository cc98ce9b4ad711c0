"""Export of a dataset's entity pieces as GeoParquet (opens in GeoPandas and QGIS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from geojepa.dataset.reader import TileDataset
from geojepa.osm import KIND_NAMES, OSM_TYPE_NAMES


def _flat_entities(batch: pa.RecordBatch) -> pa.Table:
    """One row per entity piece of a batch of tiles, with its tile and split."""
    entities = batch["entities"]
    lengths = pc.list_value_length(entities).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(entities)
    tile_cols = {
        name: pa.array(np.repeat(batch[name].to_numpy(zero_copy_only=False), lengths))
        for name in ("z", "x", "y", "split")
    }
    osm_type = np.asarray(OSM_TYPE_NAMES, dtype=object)[flat.field("osm_type").to_numpy()]
    kind = np.asarray(KIND_NAMES, dtype=object)[flat.field("kind").to_numpy()]
    return pa.table(
        {
            **tile_cols,
            "osm_type": pa.array(osm_type, pa.string()),
            "osm_id": flat.field("osm_id"),
            "kind": pa.array(kind, pa.string()),
            "tags": pc.binary_join(flat.field("tags"), ";"),
            "geometry": flat.field("geometry"),
        }
    )


def geo_metadata(types: list[str], bbox: list[float]) -> dict:
    """GeoParquet 1.1 file metadata for a WKB ``geometry`` column in WGS84."""
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": types,
                "bbox": bbox,
                "crs": CRS("OGC:CRS84").to_json_dict(),
            }
        },
    }


def export_entities(dataset: str | Path, out: str | Path) -> int:
    """Write every entity piece of a dataset to one GeoParquet file, streaming.

    Columns: ``z, x, y, split`` (the tile), ``osm_type, osm_id, kind``, ``tags`` (``;``-joined
    ``key=value``) and ``geometry`` (WKB, WGS84 lon/lat, clipped to the tile).

    Args:
        dataset: Dataset folder.
        out: GeoParquet file to write; written to a temporary name, then renamed.

    Returns:
        Number of rows written.
    """
    ds = TileDataset(dataset)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer: pq.ParquetWriter | None = None
    types: set[str] = set()
    bbox = [np.inf, np.inf, -np.inf, -np.inf]
    rows = 0
    try:
        for batch in ds.iter_batches(columns=["z", "x", "y", "split", "entities"]):
            table = _flat_entities(batch)
            geoms = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
            types.update(shapely.get_type_id(geoms).tolist())
            b = shapely.total_bounds(geoms)
            bbox = [min(bbox[0], b[0]), min(bbox[1], b[1]), max(bbox[2], b[2]), max(bbox[3], b[3])]
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:
            raise ValueError(f"{dataset}: dataset has no tiles")
        names = [_GEOMETRY_NAMES[t] for t in sorted(types)]
        writer.add_key_value_metadata({"geo": json.dumps(geo_metadata(names, bbox))})
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


_GEOMETRY_NAMES = {
    0: "Point",
    1: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
