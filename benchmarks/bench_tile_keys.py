"""Benchmark the pretraining tiles' keys (``geojepa.dataset.overlap.tile_keys``).

Every pretraining run computes a key per tile on global rank 0 before its first step, so a
checkpoint can tell an evaluation on other input files which tiles it saw. This measures how
that cost grows with the number of tiles, against reading the same Parquet columns without
hashing them (the I/O floor), measured in the same run. Run by hand:

    python benchmarks/bench_tile_keys.py [--repeats 5] [--entities 1000000] [--out benchmarks/tile_keys_results.md]

One synthetic city (``geojepa synth``, no imagery) is prepared at zooms 16, 17 and 18, which
gives three tile counts over the same entities.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from geojepa.dataset.overlap import _KEY_COLUMNS, tile_keys
from geojepa.dataset.reader import TileDataset

HERE = Path(__file__).resolve().parent


def read_columns(ds: TileDataset) -> int:
    """Read the key columns of every shard into NumPy without hashing (the baseline).

    Returns:
        The number of entity rows read (an entity counts once per tile holding it).
    """
    pieces = 0
    for path in ds.shard_paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=_KEY_COLUMNS):
            flat = batch.column("entities").values
            flat.field("osm_type").to_numpy()
            pieces += len(flat.field("osm_id").to_numpy())
            for column in ("z", "x", "y"):
                batch.column(column).to_numpy()
    return pieces


def median_seconds(fn: Callable[[TileDataset], Any], ds: TileDataset, repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn(ds)`` over ``repeats`` calls after one untimed call (warm caches),
    and what that first call returned."""
    result = fn(ds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(ds)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--zooms", type=int, nargs="+", default=[16, 17, 18])
    parser.add_argument("--out", type=Path, default=HERE / "tile_keys_results.md")
    args = parser.parse_args()

    from geojepa.prepare import PrepareConfig, prepare
    from geojepa.synth import config_for_entities, write_synthetic_city

    tmp = Path(tempfile.mkdtemp(prefix="geojepa-keys-"))
    config = dataclasses.replace(config_for_entities(args.entities), with_image=False)
    city = write_synthetic_city(tmp / "city", config, progress=False)
    rows = []
    for zoom in args.zooms:
        out = tmp / f"z{zoom}"
        prepare([city.pbf_path], out, config=PrepareConfig(zoom=zoom, workers=0), progress=False)
        ds = TileDataset(out)
        tiles = ds.num_tiles()
        read_s, pieces = median_seconds(read_columns, ds, args.repeats)
        keys_s, _ = median_seconds(tile_keys, ds, args.repeats)
        rows.append((zoom, tiles, pieces, read_s, keys_s))
        print(zoom, tiles, pieces, f"{read_s:.3f}", f"{keys_s:.3f}", flush=True)

    lines = [
        "# Pretraining tile keys benchmark",
        "",
        (f"Machine: {platform.processor() or platform.machine()}, median of {args.repeats} calls in one "
         f"process after one warm-up call. Input: one synthetic city of about {args.entities:,} entities "
         "(`geojepa synth`, no imagery), prepared at each zoom. Baseline: reading the same Parquet columns "
         "(place, split, entity OSM types and ids) into NumPy without hashing."),
        "",
        "| zoom | tiles | entity rows | read columns s | tile_keys s | keys / read | tile_keys s per million tiles |",
        "|---|---|---|---|---|---|---|",
    ]
    for zoom, tiles, pieces, read_s, keys_s in rows:
        lines.append(f"| {zoom} | {tiles:,} | {pieces:,} | {read_s:.3f} | {keys_s:.3f} | {keys_s / read_s:.2f}x | "
                     f"{keys_s / tiles * 1e6:.1f} |")
    lines.append("")
    lines.append(f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} with `python benchmarks/bench_tile_keys.py "
                 f"--repeats {args.repeats} --entities {args.entities}`.")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
