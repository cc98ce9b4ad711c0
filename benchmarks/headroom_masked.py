"""How much of a masked task can be read at all from what the masking leaves (issue 4).

A masked input lacks every label-bearing tag and entity: without ``building*`` entities a
model can only guess a tile's building count from the rest (the land-use blocks, the streets
that cut them into lots, the shops that sit inside buildings), without ``maxspeed*`` tags a
road's limit from its class, without signal nodes a tile's signals from its junctions and
crossings. This script asks how well per-tile summaries of exactly that input, computed by
hand from the masked dataset that ``geojepa tasks`` writes, predict the label, on the same
spatially grouped folds and with the same probes as ``geojepa evaluate``:

* **tag counts**: ``log1p`` of how many entities carry each tag (the TagCount baseline's
  features);
* **tag geometry**: per tag, the clipped area of the polygons and the clipped length of the
  lines that carry it, in the tile frame (``log1p`` of 100 times each), and the entities'
  count per kind (point, line, polygon, relation): how much of the tile each kind of land,
  street and park covers - what the tokens' geometry and box positions show;
* **road classes**: which car-road classes (``highway=motorway`` .. ``service``, links with
  their road) the tile holds, and a one-hot of the fastest of them (or of none): a limit follows
  the fastest road's class, a maximum over the tile's roads that a sum or presence of tags can
  not express;
* tag counts and tag geometry together ("both").

Probes: the linear and MLP probes of ``geojepa evaluate`` (count labels fitted in log space,
the MLP's score a mean over seeds) and gradient-boosted trees
(``HistGradientBoostingRegressor``, on ``log1p`` of count labels, its number of iterations chosen
on each fold's validation tiles), a strong tabular learner that needs no scaling where it has
rows to split: its smallest leaf is the library's 20 rows, so on Helsinki's 48-56 training tiles
a tree splits at most once or twice and the trees rows are weak. None of these rows learns
from tokens: they are what a tile embedding could reach if it kept these summaries, the mark for
the pretrained models and their untrained twins (``benchmarks/evaluate/``).

Run by hand from the repository root (venv active) on a dataset prepared and labelled by
``geojepa prepare`` and ``geojepa tasks`` (the 8 km city of the evaluate reports: ``geojepa synth
src8 --size-km 8 --seed 3 --no-image``, ``geojepa prepare src8/synthetic_city.osm.pbf -o city8
--zoom 17 --group-zoom 14``; there max_speed alone takes 18 minutes, all three tasks on Helsinki's
95 tiles 17):

    python benchmarks/headroom_masked.py city8
    python benchmarks/headroom_masked.py hel17 --group-zoom 15
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import shapely
from ablate_tile_pool import fold_scores
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor

from geojepa.dataset.reader import TileDataset
from geojepa.evaluate import spatial_folds
from geojepa.features import tag_count_features
from geojepa.probes import Fold, fit_dummy
from geojepa.tasks import CAR_ROADS, TASKS, masked_dataset

MLP_SEEDS = 3
MAX_TAGS = 2000
BOOST_ITERATIONS = (25, 50, 100, 200, 400)
KINDS = 4  # point, line, polygon, relation
ROAD_CLASSES = tuple(value for value in CAR_ROADS if not value.endswith("_link") and value != "road")
"""Car-road values of ``highway`` (motorway .. service), from the fastest class down."""


def tag_geometry(dataset: Path, vocab: list[str]) -> NDArray[np.float64]:
    """Per tile and tag: clipped polygon area and line length in the tile frame, and kind counts.

    Returns ``[T, 2 * len(vocab) + 4]``: ``log1p(100 * area)`` and ``log1p(100 * length)`` of the
    entities carrying each tag (a tile's whole area is 1, its side 1), then ``log1p`` of the
    number of points, lines, polygons and relations.
    """
    column = {tag: i for i, tag in enumerate(vocab)}
    rows = []
    for batch in TileDataset(dataset).iter_batches(columns=["entities"]):
        entities = pc.list_flatten(batch.column("entities"))
        tile = pc.list_parent_indices(batch.column("entities")).to_numpy()
        shapes = shapely.from_wkb(entities.field("local").to_numpy(zero_copy_only=False))
        area, length = shapely.area(shapes), shapely.length(shapes)
        polygonal = np.isin(shapely.get_type_id(shapes), (3, 6))  # Polygon, MultiPolygon
        polygon_area, line_length = np.where(polygonal, area, 0.0), np.where(polygonal, 0.0, length)
        kind = entities.field("kind").to_numpy().astype(np.int64)
        out = np.zeros((batch.num_rows, 2 * len(vocab) + KINDS))
        np.add.at(out, (tile, 2 * len(vocab) + kind), 1.0)
        for e, tags in enumerate(entities.field("tags").to_pylist()):
            for tag in tags:
                if (c := column.get(tag)) is not None:
                    out[tile[e], 2 * c] += polygon_area[e]
                    out[tile[e], 2 * c + 1] += line_length[e]
        out[:, : 2 * len(vocab)] *= 100.0
        rows.append(np.log1p(out))
    return np.concatenate(rows)


def road_classes(dataset: Path) -> NDArray[np.float64]:
    """Per tile: the car-road classes it holds, then a one-hot of the fastest one or of none.

    Returns ``[T, 2 * len(ROAD_CLASSES) + 1]`` of zeros and ones; ``highway=*_link`` counts as
    its road's class.
    """
    rank = {value: i for i, value in enumerate(ROAD_CLASSES)}
    rank |= {value: rank[value.removesuffix("_link")] for value in CAR_ROADS if value.endswith("_link")}
    rows = []
    for batch in TileDataset(dataset).iter_batches(columns=["entities"]):
        for entities in batch.column("entities").to_pylist():
            held = {rank[value] for entity in entities for tag in entity["tags"]
                    if (value := tag.removeprefix("highway=")) != tag and value in rank}
            row = np.zeros(2 * len(ROAD_CLASSES) + 1)
            row[list(held)] = 1.0
            row[len(ROAD_CLASSES) + min(held, default=len(ROAD_CLASSES))] = 1.0
            rows.append(row)
    return np.array(rows)


def fit_boosted(x: NDArray[np.float64], y: NDArray[np.float64], fold: Fold, log: bool) -> float:
    """Test MAE of boosted trees (on ``log1p(y)`` if ``log``), iterations chosen on validation."""
    forward, back = (np.log1p, np.expm1) if log else (np.asarray, np.asarray)

    def fitted(iterations: int) -> HistGradientBoostingRegressor:
        model = HistGradientBoostingRegressor(max_iter=iterations, early_stopping=False, random_state=0)
        return model.fit(x[fold.train], forward(y[fold.train]))

    val_mae = {n: float(np.abs(back(fitted(n).predict(x[fold.val])) - y[fold.val]).mean())
               for n in BOOST_ITERATIONS}
    model = fitted(min(val_mae, key=val_mae.__getitem__))
    low, high = y[fold.train].min(), y[fold.train].max()
    predictions = np.clip(back(model.predict(x[fold.test])), low, high)
    return float(np.abs(predictions - y[fold.test]).mean())


def task_table(dataset: Path, task: str, labels: pd.DataFrame, folds: list[Fold], vocab: list[str]) -> list[str]:
    """Markdown lines of one task's table: Dummy, then every feature set under every probe."""
    masked = masked_dataset(dataset, task)
    stored = pd.concat([b.to_pandas() for b in TileDataset(masked).iter_batches(columns=["x", "y"])])
    if not np.array_equal(stored[["x", "y"]].to_numpy(), labels[["x", "y"]].to_numpy()):
        raise SystemExit(f"{masked}: tiles not in the order of the labels")
    y = labels[task].to_numpy(np.float64)
    counts = tag_count_features(masked, vocab, MAX_TAGS).astype(np.float64)
    geometry = tag_geometry(masked, vocab[:MAX_TAGS])
    geometry = geometry[:, geometry.std(axis=0) > 0]
    features = {"tag counts (TagCount's features)": counts,
                "tag geometry (area, length per tag; kinds)": geometry,
                "both": np.concatenate([counts, geometry], axis=1),
                "road classes (held; fastest)": road_classes(masked)}
    dummy = [fit_dummy(y, fold, "regression").metric for fold in folds]
    lines = [f"### masked {task} (label mean {y.mean():.2f})", "",
             "| per-tile features | probe | MAE | per fold |", "|---|---|---|---|",
             _row("Dummy (train median)", "—", dummy)]
    log = TASKS[task].count
    for name, x in features.items():
        for probe, fold_mae in (("linear", fold_scores(x, y, folds, "linear", log)),
                                ("MLP", fold_scores(x, y, folds, "mlp", log, MLP_SEEDS)),
                                ("boosted trees", [fit_boosted(x, y, fold, log) for fold in folds])):
            lines.append(_row(name, probe, fold_mae))
            print(lines[-1], flush=True)
    return [*lines, ""]


def _row(features: str, probe: str, fold_mae: list[float]) -> str:
    return (f"| {features} | {probe} | {np.mean(fold_mae):.3f} +- {np.std(fold_mae, ddof=1):.3f} | "
            f"{', '.join(f'{m:.2f}' for m in fold_mae)} |")


def main() -> None:
    """Read the labelled dataset, then print and append the headroom tables to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a dataset labelled by `geojepa tasks`")
    parser.add_argument("--tasks", nargs="+", default=["building_count", "max_speed", "traffic_signals"],
                        choices=[name for name, task in TASKS.items() if task.kind == "regression"])
    parser.add_argument("--group-zoom", type=int, default=None, help="default: the dataset's")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/headroom_masked.md"))
    args = parser.parse_args()
    ds = TileDataset(args.dataset)
    labels = pd.read_parquet(args.dataset / "tasks" / "labels.parquet")
    folds = spatial_folds(ds, labels, args.group_zoom, 5, 0)
    vocab = ds.vocabulary()["tag"].to_pylist()
    lines = [f"## {args.dataset.name}", "",
             f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
             (f"Command: `python benchmarks/headroom_masked.py {args.dataset} --tasks {' '.join(args.tasks)}"
              + ("" if args.group_zoom is None else f" --group-zoom {args.group_zoom}") + "`  "),
             f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
             (f"{len(labels)} tiles, {len(vocab)} tags in the vocabulary ({min(len(vocab), MAX_TAGS)} kept); "
              "5 folds as `geojepa evaluate` makes them (seed 0); test MAE, mean +- standard deviation "
              f"over folds; MLP mean of {MLP_SEEDS} seeds."), ""]
    for task in args.tasks:
        lines += task_table(args.dataset, task, labels, folds, vocab)
    title = [] if args.out.exists() else [
        "# Headroom of the masked tasks (issue 4)", "",
        ("Per-tile summaries of each masked input under the probes of `geojepa evaluate` and boosted "
        "trees (features and probes: `benchmarks/headroom_masked.py`)."), ""]
    with args.out.open("a") as out:
        out.write("\n".join([*title, *lines, ""]))


if __name__ == "__main__":
    main()
