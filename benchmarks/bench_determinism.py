"""Cost and effect of deterministic kernels in pretraining (``geojepa pretrain --deterministic``).

Pretrains the small preset on the bundled Helsinki extract at zoom 17 (tags only, 20 epochs,
seed 0) with ``--deterministic true`` and ``false``, alternating, ``--repeats`` times each, in
fresh processes. Reports the median wall time of each and their ratio, and the largest weight
difference between two runs of each kind (0 = bit-identical). Run by hand on an idle machine
from the repository root (venv active, about 10 minutes on 2 cores):

    python benchmarks/bench_determinism.py [--repeats 3] [--work /tmp/geojepa-det]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
from datetime import UTC, datetime
from pathlib import Path

import torch
from bench_evaluate import run

HERE = Path(__file__).resolve().parent
FLAGS = ["--epochs", "20", "--model-modalities", "T", "--preset", "small", "--batch-size", "16",
         "--pretrain-splits", "all", "--checkpoint-every", "10", "--progress", "false",
         "--seed", "0"]


def max_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the weights of two checkpoints."""
    wa, wb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def main() -> None:
    """Time both settings and write ``benchmarks/determinism_results.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/geojepa-det"))
    parser.add_argument("--out", type=Path, default=HERE / "determinism_results.md")
    args = parser.parse_args()
    from geojepa.demo import bundled_osm

    ds, log = args.work / "hel17", []
    run(["prepare", str(bundled_osm()), "-o", str(ds), "--zoom", "17", "--overwrite"], log)
    times: dict[str, list[float]] = {"true": [], "false": []}
    last: dict[str, list[Path]] = {"true": [], "false": []}
    for repeat in range(args.repeats):
        for setting, walls in times.items():
            folder = args.work / f"det_{setting}_{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            walls.append(run(["pretrain", str(ds), "-o", str(folder), *FLAGS,
                              "--deterministic", setting], log))
            last[setting].append(folder / "checkpoints" / "last.ckpt")
    median = {k: statistics.median(v) for k, v in times.items()}
    rows = [f"| {k} | {median[k]:.1f} | {', '.join(f'{t:.1f}' for t in times[k])} | "
            f"{max_difference(last[k][0], last[k][1]):.2g} |" for k in times]
    lines = [
        "# Deterministic kernels in pretraining: cost and effect", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `python benchmarks/bench_determinism.py --repeats {args.repeats}`  ",
        (f"Machine: {platform.processor() or platform.machine()}, Python "
         f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} "
         "threads, no GPU  "),
        (f"Workload: `geojepa pretrain hel17 {' '.join(FLAGS)} --deterministic X` (Helsinki, zoom "
         "17, 95 tiles, 120 optimiser steps), alternating settings, fresh process each"), "",
        "| --deterministic | median wall (s) | runs (s) | max weight difference, runs 1 vs 2 |",
        "|---|---|---|---|", *rows, "",
        f"Ratio of medians (true / false): {median['true'] / median['false']:.3f}", "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
