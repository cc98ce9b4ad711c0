"""How well can masked max_speed be read at all? A road-class lookup on `geojepa evaluate`'s folds.

The masked max_speed input keeps every ``highway=*`` tag and drops every ``maxspeed*`` tag. On
the synthetic city the limit is a function of the road class (70/50/40/30/20 km/h, a share of
the ways in mph, half the service roads untagged), so the best any method can do from the masked
input is close to this lookup: predict a tile's max_speed as the median over training tiles with
the same road classes present (the fastest class, how many roads of it, how many service roads;
backing off to coarser keys when fewer than ``--min-tiles`` training tiles share a key). It is a
reference for the probes' errors, not a baseline of `geojepa evaluate`: it uses what the analyst
knows about how limits are set, which a learned embedding has to find by itself.

It is printed twice: with the median per key (the constant with the lowest absolute error, the
test metric) and with the mean per key (the constant with the lowest squared error). The probes
fit a smooth-L1 loss on the standardised target, which is squared for errors under one standard
deviation (about 15 km/h here), so a probe that read the road classes perfectly would converge
to the mean lookup, not the median one: the mean row is the floor of the probes as they train.

The folds are `geojepa evaluate`'s (:func:`geojepa.evaluate.spatial_folds`, same groups and
seed); the lookup is fitted on each fold's train and validation tiles and scored on its test
tiles. Run by hand from the repository root (venv active):

    python benchmarks/road_class_lookup.py DATASET [--group-zoom 14] [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from geojepa.dataset.reader import TileDataset
from geojepa.evaluate import spatial_folds
from geojepa.tasks import CAR_ROADS, load_labels, masked_dataset

KEYS = (("top", "n_top", "n_service"), ("top", "n_top"), ("top",))
"""Lookup keys, finest first."""
CAP = 3
"""Road counts above this are pooled into one key value."""
NO_CAR_ROAD = len(CAR_ROADS)
"""``top`` of a tile without car roads."""


def road_classes(dataset: Path) -> pd.DataFrame:
    """Per tile of the masked max_speed variant: the fastest car-road class and road counts.

    Args:
        dataset: A prepared dataset on which `geojepa tasks` has run.

    Returns:
        One row per tile: ``x``, ``y``, ``top`` (index into :data:`CAR_ROADS`, which lists the
        classes roughly fastest first; :data:`NO_CAR_ROAD` for none), ``n_top`` and ``n_service``
        (capped at :data:`CAP`).
    """
    rank = {f"highway={c}": i for i, c in enumerate(CAR_ROADS)}
    service = rank["highway=service"]
    rows = []
    for tile in TileDataset(masked_dataset(dataset, "max_speed")).iter_tiles(columns=["x", "y", "entities"]):
        classes = [rank[t] for e in tile["entities"] for t in e["tags"] if t in rank]
        top = min(classes, default=NO_CAR_ROAD)
        rows.append((tile["x"], tile["y"], top, min(classes.count(top), CAP),
                     min(classes.count(service), CAP)))
    return pd.DataFrame(rows, columns=["x", "y", "top", "n_top", "n_service"])


def lookup(
    train: pd.DataFrame, test: pd.DataFrame, min_tiles: int,
    statistic: Literal["median", "mean"] = "median",
) -> np.ndarray:
    """Predict each test tile's max_speed from the training tiles that share its road classes.

    Returns:
        Per test tile, the ``statistic`` of the training max_speed of the finest key shared by
        at least ``min_tiles`` training tiles (the overall ``statistic`` when none is).
    """
    pred = np.full(len(test), float(train["max_speed"].agg(statistic)))
    done = np.zeros(len(test), bool)
    for key in KEYS:
        stats = train.groupby(list(key))["max_speed"].agg([statistic, "size"])
        stats = stats[stats["size"] >= min_tiles]
        found = test.join(stats[statistic], on=list(key))[statistic].to_numpy(float)
        use = ~done & ~np.isnan(found)
        pred[use] = found[use]
        done |= use
    return pred


def main() -> None:
    """Print the median and the mean lookup's test MAE per fold and their means."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--group-zoom", type=int, default=None, help="default: the dataset's")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-tiles", type=int, default=3)
    args = parser.parse_args()
    ds = TileDataset(args.dataset)
    labels = load_labels(args.dataset).to_pandas()
    data = labels.merge(road_classes(args.dataset), on=["x", "y"], how="left", validate="1:1")
    y = data["max_speed"].to_numpy()
    folds = spatial_folds(ds, data, args.group_zoom, args.folds, args.seed)
    for statistic in ("median", "mean"):
        maes = []
        for fold in folds:
            fit = data.iloc[np.concatenate([fold.train, fold.val])]
            pred = lookup(fit, data.iloc[fold.test], args.min_tiles, statistic)
            maes.append(float(np.abs(pred - y[fold.test]).mean()))
        print(f"| {statistic} | " + " | ".join(f"{m:.3f}" for m in maes)
              + f" | mean {np.mean(maes):.3f} +- {np.std(maes):.3f} |")
    print(data.groupby("top")["max_speed"].describe().rename(
        index=lambda i: CAR_ROADS[i] if i < NO_CAR_ROAD else "none").round(2).to_string())


if __name__ == "__main__":
    main()
