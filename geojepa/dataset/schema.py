"""Column layout of the tile dataset (one Parquet row per tile, entities nested)."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
"""Bumped whenever the stored layout changes incompatibly."""

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
VOCAB_NAME = "vocab.parquet"
TILES_DIR = "tiles"

ENTITY_TYPE = pa.struct(
    [
        ("osm_type", pa.int8()),  # 0 node, 1 way, 2 relation
        ("osm_id", pa.int64()),
        ("kind", pa.int8()),  # 0 point, 1 line, 2 polygon, 3 relation
        ("tags", pa.list_(pa.string())),  # kept "key=value" tags, full even when clipped
        ("geometry", pa.binary()),  # WKB, lon/lat, clipped to the tile
        ("local", pa.binary()),  # WKB, tile frame ([0,1]^2, x east, y north)
        ("box", pa.list_(pa.float32(), 8)),  # minimum rotated box, 4 CCW corners, tile frame
        ("shape_xy", pa.list_(pa.float32())),  # vertices in the box frame, x0 y0 x1 y1 ...
        ("shape_parts", pa.list_(pa.int32())),  # first vertex of each part (ring, line, member)
        ("members", pa.list_(pa.int32())),  # relation members present in the tile (indices)
    ]
)
"""One entity of a tile."""

TILE_SCHEMA = pa.schema(
    [
        ("z", pa.int8()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("group_x", pa.int32()),
        ("group_y", pa.int32()),
        ("split", pa.string()),
        ("n_entities", pa.int32()),
        ("n_capped", pa.int32()),  # entities left out because the tile hit max_entities
        ("entities", pa.list_(ENTITY_TYPE)),
        ("image", pa.binary()),  # encoded RGB image (WebP/PNG/JPEG), null without imagery
        ("image_coverage", pa.float32()),  # fraction of the tile that had imagery
    ]
)
"""One row per tile."""

VOCAB_SCHEMA = pa.schema([("tag", pa.string()), ("count", pa.int64())])
"""Tag vocabulary: every kept ``key=value`` with the number of entity pieces carrying it."""
