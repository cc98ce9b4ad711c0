"""The on-disk tile dataset: schema, manifest, writing, reading and export."""

from geojepa.dataset.manifest import Manifest
from geojepa.dataset.reader import TileDataset

__all__ = ["Manifest", "TileDataset"]
