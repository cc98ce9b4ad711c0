"""The dataset manifest: what was read, with which settings, and what came out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geojepa.dataset.schema import MANIFEST_NAME, SCHEMA_VERSION
from geojepa.errors import GeoJepaError


@dataclass
class InputFile:
    """An input file with its size and SHA-256 checksum."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> InputFile:
        """Describe ``path``, computing its checksum in 8 MiB blocks.

        A folder (an XYZ tile folder) is described by its total size and a checksum of its
        sorted file names and sizes, which changes when tiles are added, removed or rewritten.
        """
        digest = hashlib.sha256()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            size = 0
            for file in files:
                file_size = file.stat().st_size
                size += file_size
                digest.update(f"{file.relative_to(path)}\t{file_size}\n".encode())
            return cls(str(path.resolve()), size, digest.hexdigest())
        with path.open("rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
        return cls(str(path.resolve()), path.stat().st_size, digest.hexdigest())


@dataclass
class Manifest:
    """Everything a later step needs to know about a dataset, stored as ``manifest.json``.

    Attributes:
        zoom: Tile zoom.
        group_zoom: Zoom of the split groups (tiles of one group share a split).
        settings: The ``prepare`` settings, as given.
        inputs: OSM inputs with checksums.
        imagery: Imagery inputs with checksums (empty without imagery).
        shards: Tile shard files relative to the dataset folder, with their tile counts.
        counts: Tiles and entities per split.
        groups: Group ``"gx_gy"`` -> split, for every group that had data.
        report: Counts from reading and cutting (dropped tiles, capped tiles...).
        vocab_size: Distinct kept tags (the vocabulary is ``vocab.parquet``).
        schema_version: Layout version, :data:`geojepa.dataset.schema.SCHEMA_VERSION`.
        created_by: geojepa version that wrote the dataset.
    """

    zoom: int
    group_zoom: int
    settings: dict[str, Any]
    inputs: list[InputFile]
    imagery: list[InputFile]
    shards: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    groups: dict[str, str]
    report: dict[str, Any]
    vocab_size: int
    created_by: str
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_imagery(self) -> bool:
        """True when tiles carry images."""
        return bool(self.imagery)

    def tile_record(self, splits: tuple[str, ...] | None) -> dict[str, Any]:
        """Which tiles of which data some splits are: enough to tell later, from a checkpoint,
        whether pretraining saw a tile of another dataset folder (see
        :func:`geojepa.dataset.overlap.seen_by`).

        Args:
            splits: Split names, or None for every tile.
        """
        return {
            "inputs": sorted(f.sha256 for f in self.inputs),
            "zoom": self.zoom,
            "group_zoom": self.group_zoom,
            "groups": dict(self.groups),
            "splits": None if splits is None else list(splits),
        }

    def save(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder``."""
        (folder / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Read the manifest of the dataset in ``folder``.

        Raises:
            GeoJepaError: No dataset there, or one written with another schema version.
        """
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise GeoJepaError("not a geojepa dataset (no manifest.json)", folder)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise GeoJepaError(f"corrupt manifest ({err})", path) from err
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise GeoJepaError(
                f"dataset schema version {version}, this geojepa reads {SCHEMA_VERSION};"
                " run prepare again",
                path,
            )
        raw["inputs"] = [InputFile(**f) for f in raw["inputs"]]
        raw["imagery"] = [InputFile(**f) for f in raw["imagery"]]
        return cls(**raw)
