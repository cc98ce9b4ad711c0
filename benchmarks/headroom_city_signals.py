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

Nothing in these rows is learnt from the image or the tokens: they are the floors a model's tile
embedding could reach if it read the road network or the crosswalks perfectly. Each junction
site's one-node-or-one-per-approach mapping is a coin flip nothing shows, so even the sites do
not give a zero error.

A last row asks whether the crosswalks can be *learnt* from the tile images at this sample size:
a small CNN trained on the labels themselves (supervised, on each fold's train tiles, early
stopped on its validation tiles): what the images can teach without a hand-made detector, the
mark for self-supervised image features under a probe. The same CNN untrained, its last conv
block pooled as the tile embeddings are, tells the architecture's share from the training's.

Run by hand from the repository root (venv active, about 7 minutes on 2 cores):

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
import torch
from ablate_tile_pool import fold_scores
from bench_evaluate import run
from numpy.typing import NDArray
from scipy.cluster.hierarchy import fcluster, linkage
from torch import nn

from geojepa.dataset.loader import decode_image
from geojepa.dataset.reader import TileDataset
from geojepa.probes import Fold, fit_dummy, grouped_folds
from geojepa.tiles import lonlat_to_mercator, lonlat_to_tile

MAJOR = frozenset({"primary", "secondary"})
SITE_RADIUS_M = 20.0
MLP_SEEDS = 3
CNN_MAX_EPOCHS = 40
CNN_PATIENCE = 8


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


def probe_cells(x: NDArray[np.float64] | None, y: NDArray[np.float64], folds: list[Fold]) -> str:
    """``linear | MLP`` table cells: test MAE, mean +- standard deviation over folds (Dummy's
    when ``x`` is None; count labels fitted in log space, the MLP's score a mean over seeds)."""
    cells = []
    for probe in ("linear", "mlp"):
        fold_mae = ([fit_dummy(y, fold, "regression").metric for fold in folds] if x is None
                    else fold_scores(x, y, folds, probe, seeds=MLP_SEEDS))
        cells.append(f"{np.mean(fold_mae):.3f} +- {np.std(fold_mae, ddof=1):.3f}")
    return " | ".join(cells)


def tile_images(ds: Path, keys: NDArray[np.int64], size: int) -> NDArray[np.float32]:
    """The dataset's tile images as the model sees them, ``[N, 3, size, size]`` in keys order."""
    images = {(tile["x"], tile["y"]): decode_image(tile["image"], size)
              for tile in TileDataset(ds).iter_tiles(columns=["x", "y", "image"])}
    return np.stack([images[(int(x), int(y))] for x, y in keys])


def image_cnn() -> nn.Module:
    """A small fully convolutional counter: four 3x3 conv blocks (three stride 2), mean pooled."""
    layers: list[nn.Module] = []
    for cin, cout, stride in ((3, 12, 2), (12, 24, 2), (24, 32, 2), (32, 32, 1)):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.GELU()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1), nn.Softplus()]
    return nn.Sequential(*layers, *head)


def _forward(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module`` in eval mode on ``images``, 64 at a time, without gradients."""
    module.eval()
    with torch.no_grad():
        return torch.cat([module(chunk) for chunk in images.split(64)])


def _cnn_predict(model: nn.Module, images: torch.Tensor) -> NDArray[np.float64]:
    return _forward(model, images).squeeze(1).double().numpy()


def untrained_cnn_features(images: NDArray[np.float32], seed: int = 0) -> NDArray[np.float64]:
    """``[max, mean]`` over positions of the last conv block of an untrained :func:`image_cnn`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = image_cnn()[:-4]  # without the pooling and the count head
    maps = _forward(trunk, torch.from_numpy(images))
    return torch.cat([maps.amax((2, 3)), maps.mean((2, 3))], 1).double().numpy()


def fit_image_cnn(
    images: NDArray[np.float32], y: NDArray[np.float64], fold: Fold, seed: int
) -> float:
    """Test MAE of :func:`image_cnn` trained on the fold's train tiles with an L1 loss.

    Batches are flipped and rotated by multiples of 90 degrees (a count does not change); the
    epoch with the lowest validation MAE is kept, stopping after ``CNN_PATIENCE`` epochs without
    improvement. Predictions are clamped to the train label range, as the probes' are.
    """
    x, target = torch.from_numpy(images), torch.from_numpy(y).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = image_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    train = torch.from_numpy(fold.train)
    best_mae, best_state, since = float("inf"), model.state_dict(), 0
    for _ in range(CNN_MAX_EPOCHS):
        model.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(32):
            turns, flip = torch.randint(4, (2,), generator=generator).tolist()
            inputs = torch.rot90(x[batch], turns, (2, 3))
            inputs = inputs.flip(3) if flip % 2 else inputs
            optimizer.zero_grad(set_to_none=True)
            nn.functional.l1_loss(model(inputs).squeeze(1), target[batch]).backward()
            optimizer.step()
        val_mae = float(np.abs(_cnn_predict(model, x[fold.val]) - y[fold.val]).mean())
        if val_mae < best_mae:
            best_mae, since = val_mae, 0
            best_state = {name: value.clone() for name, value in model.state_dict().items()}
        elif (since := since + 1) >= CNN_PATIENCE:
            break
    model.load_state_dict(best_state)
    low, high = y[fold.train].min(), y[fold.train].max()
    predictions = np.clip(_cnn_predict(model, x[fold.test]), low, high)
    return float(np.abs(predictions - y[fold.test]).mean())


def main() -> None:
    """Generate and label the city, then print and write the headroom table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geojepa-headroom"))
    parser.add_argument("--size-km", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/headroom_city_signals.md"))
    args = parser.parse_args()
    src, ds, log = args.work / "city_src", args.work / "city17", []
    run(["synth", str(src), "--size-km", str(args.size_km), "--seed", str(args.seed), "-q"], log)
    pbf = src / "synthetic_city.osm.pbf"
    run(["prepare", str(pbf), "--imagery", str(src / "synthetic_city.tif"), "-o", str(ds),
         "--zoom", "17", "--image-size", str(args.image_size), "--overwrite"], log)
    run(["tasks", str(ds), "--overwrite"], log)
    labels = pd.read_parquet(ds / "tasks" / "labels.parquet")
    zoom, keys = int(labels["z"].iloc[0]), labels[["x", "y"]].to_numpy()
    y = labels["traffic_signals"].to_numpy(np.float64)
    folds = grouped_folds(keys >> (zoom - 14), 5, 0)
    roads = road_junctions(pbf, keys, zoom)
    sites, summary = signal_sites(pbf, keys, zoom)
    images = tile_images(ds, keys, args.image_size)
    features = {"Dummy (train median)": None, "road junctions (major-major, major-tertiary)": roads,
                "signalised sites (junction, crossing)": sites, "both": np.concatenate([roads, sites], 1),
                f"the untrained CNN below on the {args.image_size} px image, [max, mean] pooled":
                    untrained_cnn_features(images)}
    lines = ["| per-tile features | linear | MLP |", "|---|---|---|"]
    for name, x in features.items():
        lines.append(f"| {name} | {probe_cells(x, y, folds)} |")
        print(lines[-1], flush=True)
    fold_mae = [fit_image_cnn(images, y, fold, seed=0) for fold in folds]
    lines += ["", f"| supervised on the {args.image_size} px tile image | MAE | per fold |",
              "|---|---|---|",
              (f"| small CNN trained on the labels (seed 0) | {np.mean(fold_mae):.3f} +- "
               f"{np.std(fold_mae, ddof=1):.3f} | {', '.join(f'{m:.3f}' for m in fold_mae)} |")]
    print(lines[-1], flush=True)
    header = [
        "# Headroom of masked traffic_signals on the synthetic city (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        (f"Command: `python benchmarks/headroom_city_signals.py --size-km {args.size_km:g} "
         f"--seed {args.seed} --image-size {args.image_size}`  "),
        f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
        (f"City: {len(labels)} zoom-17 tiles, {summary}; 5 folds over zoom-14 groups (seed 0, the "
         "folds of `geojepa evaluate`), count labels fitted in log space, MLP mean of "
         f"{MLP_SEEDS} seeds; test MAE, mean +- standard deviation over folds (as in the evaluate reports)."), "",
    ]
    args.out.write_text("\n".join([*header, *lines, ""]))


if __name__ == "__main__":
    main()
