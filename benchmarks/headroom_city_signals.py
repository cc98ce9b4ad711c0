"""How much of masked traffic_signals can be predicted at all on the synthetic city (issue 4).

The masked traffic_signals input has no signal tags and no signal nodes, so a model can only
guess a tile's signal count from what is left: the road network (in the synthetic city every
junction of two major streets is signalised, and half of the major-tertiary ones) and the image
(a zebra crossing on every arm of a signalised junction and at every signalised crossing). This
script measures the two with hand-made per-tile counts from the generator's OSM file, fed to the
same probes, on the same spatially grouped folds, as ``geojepa evaluate`` uses:

* **road junctions**: junctions of two differently named major (primary/secondary) streets,
  and of a major and a tertiary street, per tile - what the masked tags and geometry show;
* **signalised sites**: the signal nodes grouped into sites (nodes closer than 20 m: a junction
  mapped with one node per approach is one site), counted per tile as junction sites and
  crossing sites - where the image paints crosswalks;
* both together.

Nothing here is learnt from the image or the tokens: the rows are the floors a model's tile
embedding could reach if it read the road network or the crosswalks perfectly. Each junction
site's one-node-or-one-per-approach mapping is a coin flip nothing shows, so even the sites do
not give a zero error.

Run by hand from the repository root (venv active, about a minute on 2 cores):

    python benchmarks/headroom_city_signals.py --size-km 4 --out benchmarks/headroom_city_signals.md
"""

from __future__ import annotations

import argparse
import platform
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import osmium
import pandas as pd
from bench_evaluate import run
from numpy.typing import NDArray
from scipy.cluster.hierarchy import fcluster, linkage

from geojepa.probes import Fold, fit_dummy, fit_linear, fit_mlp, grouped_folds
from geojepa.tiles import lonlat_to_mercator, lonlat_to_tile

MAJOR = frozenset({"primary", "secondary"})
SITE_RADIUS_M = 20.0
MLP_SEEDS = 3


def tile_xy(lon: NDArray[np.float64], lat: NDArray[np.float64], zoom: int) -> NDArray[np.int64]:
    """Web-mercator tile column and row of each point, shape ``(n, 2)``."""
    return np.stack(lonlat_to_tile(lon, lat, zoom), axis=1)


def per_tile(points: NDArray[np.int64], keys: NDArray[np.int64]) -> NDArray[np.float64]:
    """How many of ``points`` (tile columns and rows) fall in each tile of ``keys``."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for x, y in points:
        counts[(int(x), int(y))] += 1
    return np.array([counts.get((int(x), int(y)), 0) for x, y in keys], dtype=np.float64)


def road_junctions(pbf: Path, keys: NDArray[np.int64], zoom: int) -> NDArray[np.float64]:
    """Per tile: junctions of two major streets, and of a major and a tertiary street."""
    roads: dict[int, set[tuple[str, bool]]] = defaultdict(set)
    for way in osmium.FileProcessor(str(pbf), osmium.osm.WAY):
        highway = way.tags.get("highway")
        if highway in MAJOR or highway == "tertiary":
            for node in way.nodes:
                roads[node.ref].add((way.tags.get("name", f"way {way.id}"), highway in MAJOR))
    kind = {}
    for ref, named in roads.items():
        majors = sum(major for _, major in named)
        if len({name for name, _ in named}) >= 2 and majors >= 1:
            kind[ref] = majors >= 2
    where: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for node in osmium.FileProcessor(str(pbf), osmium.osm.NODE):
        if node.id in kind:
            where[kind[node.id]].append((node.location.lon, node.location.lat))
    columns = []
    for both_major in (True, False):
        lonlat = np.array(where[both_major], dtype=np.float64).reshape(-1, 2)
        columns.append(per_tile(tile_xy(lonlat[:, 0], lonlat[:, 1], zoom), keys))
    return np.stack(columns, axis=1)


def signal_sites(pbf: Path, keys: NDArray[np.int64], zoom: int) -> tuple[NDArray[np.float64], str]:
    """Per tile: signalised junction sites and signalised crossing sites; and a summary line."""
    rows = []
    for node in osmium.FileProcessor(str(pbf), osmium.osm.NODE):
        if node.tags.get("highway") == "traffic_signals" or node.tags.get("crossing") == "traffic_signals":
            rows.append((node.location.lon, node.location.lat, node.tags.get("highway") == "crossing"))
    nodes = pd.DataFrame(rows, columns=["lon", "lat", "crossing"])
    mx, my = lonlat_to_mercator(nodes["lon"].to_numpy(), nodes["lat"].to_numpy())
    metres = np.stack([mx, my], axis=1) * np.cos(np.radians(nodes["lat"].mean()))  # ground metres
    nodes["site"] = fcluster(linkage(metres, "single"), t=SITE_RADIUS_M, criterion="distance")
    sites = nodes.groupby("site").agg(lon=("lon", "mean"), lat=("lat", "mean"),
                                      crossing=("crossing", "max"), nodes=("lon", "size"))
    columns = []
    for crossing in (False, True):
        part = sites[sites["crossing"] == crossing]
        columns.append(per_tile(tile_xy(part["lon"].to_numpy(), part["lat"].to_numpy(), zoom), keys))
    sizes = ", ".join(f"{n} of {k} node{'s' * (k > 1)}" for k, n in sites["nodes"].value_counts().sort_index().items())
    summary = (f"{len(nodes)} signal nodes in {len(sites)} sites ({int((~sites['crossing']).sum())} junctions, "
               f"{int(sites['crossing'].sum())} crossings; sites: {sizes})")
    return np.stack(columns, axis=1), summary


def scores(x: NDArray[np.float64] | None, y: NDArray[np.float64], folds: list[Fold], probe: str) -> list[float]:
    """Test MAE per fold; the MLP's is the mean over its seeds. Count labels fitted in log space."""
    if x is None:
        return [fit_dummy(y, fold, "regression").metric for fold in folds]
    if probe == "linear":
        return [fit_linear(x, y, fold, "regression", log_target=True).metric for fold in folds]
    return [float(np.mean([fit_mlp(x, y, fold, "regression", log_target=True, seed=s).metric
                           for s in range(MLP_SEEDS)])) for fold in folds]


def main() -> None:
    """Generate and label the city, then print and write the headroom table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geojepa-headroom"))
    parser.add_argument("--size-km", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/headroom_city_signals.md"))
    args = parser.parse_args()
    src, ds, log = args.work / "city_src", args.work / "city17", []
    run(["synth", str(src), "--size-km", str(args.size_km), "--seed", str(args.seed), "-q"], log)
    pbf = src / "synthetic_city.osm.pbf"
    run(["prepare", str(pbf), "-o", str(ds), "--zoom", "17", "--overwrite"], log)
    run(["tasks", str(ds), "--overwrite"], log)
    labels = pd.read_parquet(ds / "tasks" / "labels.parquet")
    zoom, keys = int(labels["z"].iloc[0]), labels[["x", "y"]].to_numpy()
    y = labels["traffic_signals"].to_numpy(np.float64)
    folds = grouped_folds(keys >> (zoom - 14), 5, 0)
    roads = road_junctions(pbf, keys, zoom)
    sites, summary = signal_sites(pbf, keys, zoom)
    features = {"Dummy (train median)": None, "road junctions (major-major, major-tertiary)": roads,
                "signalised sites (junction, crossing)": sites, "both": np.concatenate([roads, sites], 1)}
    lines = ["| per-tile features | linear | MLP |", "|---|---|---|"]
    for name, x in features.items():
        cells = []
        for probe in ("linear", "mlp"):
            fold_mae = scores(x, y, folds, probe)
            cells.append(f"{np.mean(fold_mae):.3f} +- {np.std(fold_mae, ddof=1):.3f}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    header = [
        "# Headroom of masked traffic_signals on the synthetic city (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `python benchmarks/headroom_city_signals.py --size-km {args.size_km:g} --seed {args.seed}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
        (f"City: {len(labels)} zoom-17 tiles, {summary}; 5 folds over zoom-14 groups (seed 0, the "
         "folds of `geojepa evaluate`), count labels fitted in log space, MLP mean of "
         f"{MLP_SEEDS} seeds; test MAE, mean +- standard deviation over folds (as in the evaluate reports)."), "",
    ]
    args.out.write_text("\n".join([*header, *lines, ""]))


if __name__ == "__main__":
    main()
