"""GeoJEPA: self-supervised multimodal embeddings of map tiles and OpenStreetMap entities."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geojepa")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
