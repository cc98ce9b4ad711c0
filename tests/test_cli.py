"""End-to-end tests of the ``geojepa`` command on the bundled Helsinki extract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


def test_pretrain_from_yaml_with_flag_overrides(tmp_path: Path) -> None:
    import yaml

    from test_prepare import prepare_fixture_dataset

    data = prepare_fixture_dataset(tmp_path / "ds")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "train": {"epochs": 1, "batch_size": 2, "max_steps": 2, "lr": 0.01},
        "model": {"d": 32, "depth": 1, "heads": 2, "predictor_d": 16, "predictor_depth": 1,
                  "predictor_heads": 2, "modalities": "GT", "tag_encoder": "learned", "tag_dim": 8},
    }))
    run_dir = tmp_path / "run"
    res = run("pretrain", str(data), "-o", str(run_dir), "--config", str(cfg), "--lr", "0.002",
              "--progress", "false", "--model-geometry-dim", "8", "--model-geometry-heads", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "JEPA targets over the last 2 steps: mean cosine" in res.stdout
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.002 and saved["train"]["epochs"] == 1
    assert saved["model"]["d"] == 32 and saved["model"]["geometry_dim"] == 8
    assert saved["model"]["vocab_size"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    bad = run("pretrain", str(data), "-o", str(tmp_path / "r2"), "--lr", "fast")
    assert bad.returncode == 2 and "--lr" in bad.stderr
    for flag, value, problem in (("--model-image-stem", "vit", "image_stem must be one of patch, hmlp"),
                                 ("--model-patch", "14", "multiple of 4")):
        extra = ["--model-image-stem", "hmlp"] if flag == "--model-patch" else []
        bad = run("pretrain", str(data), "-o", str(tmp_path / "r3"), flag, value, *extra)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and problem in lines[0], bad.stderr[-2000:]
        assert not (tmp_path / "r3").exists()
    res = run("pretrain", str(data), "-o", str(run_dir), "--config", str(cfg))
    assert res.returncode == 2 and "already has checkpoints" in res.stderr


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    res = run("demo", "--out", str(tmp_path), "--epochs", "1", "--workers", "0")
    assert res.returncode == 0, res.stderr
    for step in ("1/4 prepare", "2/4 tasks", "3/4 pretrain", "4/4 evaluate"):
        assert step in res.stdout
    labels = pq.read_table(tmp_path / "helsinki" / "tasks" / "labels.parquet")
    assert labels.num_rows == 95  # central Helsinki at zoom 17
    assert (tmp_path / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    report = (tmp_path / "evaluate" / "results.md").read_text()
    assert "transductive" in report
    runs = pd.read_csv(tmp_path / "evaluate" / "runs.csv")
    assert set(runs["variant"]) == {"masked"} and set(runs["probe"]) == {"linear", "dummy"}
    mae = runs.groupby(["task", "method"])["metric"].mean()
    assert set(mae.index.get_level_values("task")) == {"building_count", "max_speed", "traffic_signals"}
    # the model's embeddings read the masked building count far better than the train median
    assert mae["building_count", "GeoJEPA"] < 0.7 * mae["building_count", "Dummy"]
    printed = res.stdout[res.stdout.index("4/4 evaluate"):]
    assert "GeoJEPA (linear)" in printed and "Dummy" in printed and "next: geojepa evaluate" in printed


def test_demo_refuses_to_replace_folders_it_did_not_write(tmp_path: Path) -> None:
    keep = tmp_path / "pretrain" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    res = run("demo", "--out", str(tmp_path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(keep.parent) in lines[0] and "not from an earlier demo" in lines[0]
    assert keep.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["pretrain"]
