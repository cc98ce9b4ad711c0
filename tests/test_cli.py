"""End-to-end tests of the ``geojepa`` command on the bundled Helsinki extract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from geojepa import __version__


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "geojepa", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"geojepa {__version__}"
    out = run("--help").stdout
    for command in ("prepare", "info", "synth", "demo", "export-entities"):
        assert command in out


def test_prepare_info_export(helsinki_pbf: Path, tmp_path: Path) -> None:
    out = tmp_path / "hel"
    res = run("prepare", str(helsinki_pbf), "-o", str(out), "--workers", "2", "--zoom", "16")
    assert res.returncode == 0, res.stderr
    assert "reading OSM" in res.stdout and "train" in res.stdout
    assert (out / "manifest.json").is_file()
    info = run("info", str(out), "--top", "5")
    assert info.returncode == 0
    assert "total" in info.stdout and "24" in info.stdout
    assert "lit=yes" in info.stdout  # the most frequent tag in central Helsinki
    gpq = tmp_path / "entities.parquet"
    exp = run("export-entities", str(out), str(gpq))
    assert exp.returncode == 0, exp.stderr
    meta = pq.read_metadata(gpq).metadata
    assert b"geo" in meta and pq.read_metadata(gpq).num_rows > 10_000


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    missing = tmp_path / "nope.osm.pbf"
    res = run("prepare", str(missing), "-o", str(tmp_path / "o"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "not found" in lines[0]
    res = run("info", str(tmp_path))
    assert res.returncode == 2 and "not a geojepa dataset" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
