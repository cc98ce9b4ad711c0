"""Does a pretrained model's edge over its initialisation grow with the labelled tiles? (issue 4)

``count_cues_helsinki.md`` found that the pretrained entity vectors keep the counts Helsinki's
masked traffic_signals needs, linearly and better than the untrained encoder's, while a probe
fitted on Helsinki's few dozen labelled tiles reads them worse. Is that sample efficiency, the
pretrained model needing more labels to find what it keeps? If it were, the pretrained model
would gain on its initialisation as the labelled tiles grow. This script draws the learning
curves, on Helsinki and on a region with many tiles: the linear probe of ``geojepa evaluate``
(ridge, penalty chosen on the fold's full validation tiles, count labels in log space) fitted
on ``n`` train tiles drawn at random from each fold's train tiles (``geojepa evaluate
--train-tiles n --seed d`` for draws ``d = 0, 1, ...``; and all of them), scored on the fold's full test tiles, for the checkpoint's tile embeddings, its
random initialisation's and TagPool's features, all on the masked input.

``geojepa evaluate --train-tiles 10 20 30 40 all`` now draws such curves for any checkpoints,
probes and baselines in one run (one draw per fold and size; more with ``--repeats``); this
script keeps its own design, several draws per size on the same folds, which made the
committed files.

Run by hand from the repository root (venv active; about 14 minutes on the 8 km city's 2,858
tiles, most of it embedding with the base model, 4 on Helsinki's 95):

    python benchmarks/label_curve.py city8 --checkpoint b8gtv_s0/checkpoints/epoch001.ckpt \
        --out benchmarks/label_curve_city8.md
    python benchmarks/label_curve.py hel17 --checkpoint b8gtv_s0/checkpoints/epoch001.ckpt \
        --group-zoom 15 --sizes 10 20 30 40 --repeats 10 --out benchmarks/label_curve_helsinki.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from geojepa.dataset.reader import TileDataset
from geojepa.embed import embed_dataset, load_checkpoint
from geojepa.evaluate import fewer_train_tiles, repeated_spatial_folds
from geojepa.features import random_init, tag_pool_features
from geojepa.probes import Fold, fit_linear
from geojepa.tasks import masked_dataset

TASKS = ("building_count", "max_speed", "traffic_signals")
COUNT_TASKS = ("building_count", "traffic_signals")


def curve(features: dict[str, NDArray[np.float32]], y: NDArray[np.float64], folds: list[Fold],
          sizes: list[int | None], draws: int, log: bool) -> pd.DataFrame:
    """Test MAE of the linear probe per method, train size, fold and draw."""
    rows = []
    for n in sizes:
        for fold in folds:
            for draw in range(1 if n is None else draws):
                part = fold if n is None else fewer_train_tiles(fold, n, seed=draw)
                for method, x in features.items():
                    mae = fit_linear(x, y, part, "regression", log_target=log).metric
                    rows.append({"n": "all" if n is None else str(n), "fold": fold.index, "draw": draw,
                                 "method": method, "mae": mae, "n_train": len(part.train)})
    return pd.DataFrame(rows)


def table(results: pd.DataFrame, task: str) -> list[str]:
    """Markdown rows of one task: mean MAE per train size and method, and the pairs (fold,
    draw) on which the pretrained model beats its initialisation and TagPool."""
    header = ("| train tiles | pretrained | its random init | TagPool | pretrained beats init "
              "| pretrained beats TagPool |")
    lines = [f"### {task}", "", header, "|---|---|---|---|---|---|"]
    for n, part in results.groupby("n", sort=False):
        wide = part.pivot_table(index=["fold", "draw"], columns="method", values="mae")
        size = int(part["n_train"].mean()) if n == "all" else n
        lines.append(f"| {size}{' (all)' if n == 'all' else ''} | {wide['pretrained'].mean():.3f} | "
                     f"{wide['random init'].mean():.3f} | {wide['TagPool'].mean():.3f} | "
                     f"{int((wide['pretrained'] < wide['random init']).sum())}/{len(wide)} | "
                     f"{int((wide['pretrained'] < wide['TagPool']).sum())}/{len(wide)} |")
    return [*lines, ""]


def main() -> None:
    """Embed each task's masked input, draw the curves, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a dataset labelled by `geojepa tasks`")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--group-zoom", type=int, default=14)
    parser.add_argument("--sizes", nargs="+", type=int, default=[30, 60, 120, 240, 480, 960])
    parser.add_argument("--draws", type=int, default=3, help="random draws of the train tiles per size")
    parser.add_argument("--repeats", type=int, default=1, help="assignments of the groups to the 5 folds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/label_curve.md"))
    args = parser.parse_args()
    started = datetime.now(UTC)
    ds = TileDataset(args.dataset)
    labels = pd.read_parquet(args.dataset / "tasks" / "labels.parquet")
    folds = repeated_spatial_folds(ds, labels, args.group_zoom, 5, 0, args.repeats)
    vocab = ds.vocabulary().column("tag").to_pylist()
    checkpoint = load_checkpoint(args.checkpoint)
    models = {"pretrained": checkpoint, "random init": random_init(checkpoint)}
    lines = []
    for task in args.tasks:
        source = masked_dataset(args.dataset, task)
        features = {name: embed_dataset(model, source, progress=False, tokens=False).tile
                    for name, model in models.items()}
        features["TagPool"] = tag_pool_features(source, vocab, args.dataset)
        results = curve(features, labels[task].to_numpy(np.float64), folds, [*args.sizes, None], args.draws,
                        task in COUNT_TASKS)
        lines += table(results, task)
        print("\n".join(table(results, task)), flush=True)
    header = [
        f"# Learning curves of the linear probe on `{args.dataset.name}`, masked (issue 4)", "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC  ",
        (f"Command: `python benchmarks/label_curve.py {args.dataset} --checkpoint {args.checkpoint} "
         f"--group-zoom {args.group_zoom} --sizes {' '.join(map(str, args.sizes))} --draws {args.draws} "
         f"--repeats {args.repeats}`  "),
        (f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU, "
         f"{(datetime.now(UTC) - started).total_seconds():.0f} s  "),
        (f"{len(labels)} tiles, {len(folds)} folds over zoom-{args.group_zoom} groups ({args.repeats} "
         f"assignment{'s' * (args.repeats > 1)} of 5, as `geojepa evaluate --repeats`); per fold the probe fits "
         f"`n` train tiles drawn at random ({args.draws} draws per `n`; `all`: the fold's train tiles), "
         "chooses its penalty on the full validation tiles and is scored on the full test tiles. Test "
         "MAE, mean over folds and draws; wins over (fold, draw) pairs."), "",
    ]
    args.out.write_text("\n".join([*header, *lines]))


if __name__ == "__main__":
    main()
