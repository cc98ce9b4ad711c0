"""Does a count-aware tile pooling close the masked traffic_signals gap on the city? (issue 4)

The SPEC's tile embedding is ``[max, mean]`` over a tile's tokens. A mean cannot tell a tile
with two primary roads among forty trees from one with one primary road among twenty, while
TagCount (``log1p`` of per-tag entity counts), the best baseline on masked traffic_signals of
the synthetic city, reads counts directly: a linear probe on log counts fitting a log target
models the product of the north-south and east-west major streets that make junctions. This
ablation pools the *same* entity vectors four more ways and probes them on the same folds:

* ``max, mean`` - the SPEC's pooling (for the models, exactly their tile embedding);
* ``+ log n`` - and ``log1p`` of the tile's entity count;
* ``+ sum`` - and the per-channel sum (mean times count);
* ``+ log soft counts`` - and ``log1p`` of the per-channel sum of the non-negative parts, the
  learned-feature analogue of TagCount;
* ``log soft counts`` alone.

Entity vectors: the last-block entity embeddings of tags-only (T) and tags+geometry (GT)
small-preset models pretrained on the 8 km city of ``bench_evaluate.py --regions city_scale``
(2 epochs, the flags of every city table; inductive), of their random initialisations, and
TagPool's tag vectors. Evaluated on the 4 km city (741 zoom-17 tiles), masked, the 5 folds over
zoom-14 groups of every city table, count labels fitted in log space.

Run by hand from the repository root (venv active, about 15 minutes on 2 cores):

    python benchmarks/ablate_tile_pool.py --out benchmarks/ablate_tile_pool.md

or on a labelled dataset of your own with given checkpoints, e.g. Helsinki's 95 tiles with the
8 km city's checkpoint over ten assignments of the groups to folds, as ``geojepa evaluate
--group-zoom 15 --repeats 10`` makes them:

    python benchmarks/ablate_tile_pool.py --dataset hel17 --checkpoint GT=b8gtv_s0/checkpoints/epoch001.ckpt \
        --group-zoom 15 --repeats 10 --out benchmarks/ablate_tile_pool_helsinki.md
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from bench_evaluate import PRETRAIN, SCALE_CITIES, pretrain_runs, run, tags_city
from numpy.typing import NDArray
from sklearn.linear_model import RidgeCV

from geojepa.dataset.reader import TileDataset
from geojepa.embed import embed_dataset, load_checkpoint
from geojepa.evaluate import repeated_spatial_folds
from geojepa.features import iter_entity_tag_vectors, pool_rows, random_init, tag_count_features
from geojepa.probes import Fold, fit_dummy, fit_linear, fit_mlp
from geojepa.tasks import masked_dataset

TASKS = ("traffic_signals", "building_count")
SEEDS = 2
MLP_SEEDS = 2
EPOCHS = 2
Pooling = Callable[[NDArray[np.float32], NDArray[np.int64], int], NDArray[np.float32]]


def _sums(vectors: NDArray[np.float32], tile: NDArray[np.int64], num_tiles: int) -> NDArray[np.float32]:
    total = np.zeros((num_tiles, vectors.shape[1]), np.float32)
    np.add.at(total, tile, vectors)
    return total


def _log_count(tile: NDArray[np.int64], num_tiles: int) -> NDArray[np.float32]:
    return np.log1p(np.bincount(tile, minlength=num_tiles)[:, None]).astype(np.float32)


def _soft_counts(vectors: NDArray[np.float32], tile: NDArray[np.int64], num_tiles: int) -> NDArray[np.float32]:
    return np.log1p(_sums(np.maximum(vectors, 0.0), tile, num_tiles))


POOLS: dict[str, Pooling] = {
    "max, mean": pool_rows,
    "+ log n": lambda v, t, n: np.hstack([pool_rows(v, t, n), _log_count(t, n)]),
    "+ sum": lambda v, t, n: np.hstack([pool_rows(v, t, n), _sums(v, t, n)]),
    "+ centred sum": lambda v, t, n: np.hstack([pool_rows(v, t, n), _sums(v - v.mean(axis=0), t, n)]),
    "+ log soft counts": lambda v, t, n: np.hstack([pool_rows(v, t, n), _soft_counts(v, t, n)]),
    "log soft counts": _soft_counts,
}


def tag_vectors(dataset: Path, vocab: list[str], table_folder: Path) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """TagPool's per-entity vectors over the whole dataset and the row of each entity's tile."""
    vectors, tiles, offset = [], [], 0
    for v, tile, num_tiles, _ in iter_entity_tag_vectors(dataset, vocab, table_folder):
        vectors.append(v)
        tiles.append(tile + offset)
        offset += num_tiles
    return np.concatenate(vectors), np.concatenate(tiles)


def fold_scores(x: NDArray[np.floating], y: NDArray[np.float64], folds: list[Fold], probe: str,
                log: bool = True, seeds: int = MLP_SEEDS) -> list[float]:
    """Test MAE per fold, as ``geojepa evaluate`` fits it: the ``linear`` or ``mlp`` probe on
    ``log1p`` of the labels if ``log`` (the MLP's score: mean over ``seeds`` seeds)."""
    if probe == "linear":
        return [fit_linear(x, y, f, "regression", log_target=log).metric for f in folds]
    return [float(np.mean([fit_mlp(x, y, f, "regression", log_target=log, seed=s).metric
                           for s in range(seeds)])) for f in folds]


def entity_sources(checkpoints: dict[str, list[Path]], dataset: Path, vocab: list[str],
                   table_folder: Path) -> dict[str, list[tuple[NDArray[np.float32], NDArray[np.int64]]]]:
    """Per method, one (entity vectors, tile rows) pair per replicate, on ``dataset``."""
    sources: dict[str, list[tuple[NDArray[np.float32], NDArray[np.int64]]]] = {
        "TagPool vectors": [tag_vectors(dataset, vocab, table_folder)]}
    for name, paths in checkpoints.items():
        for label, build in ((name, lambda c: c), (f"{name} random init", random_init)):
            for path in paths:
                emb = embed_dataset(build(load_checkpoint(path)), dataset, progress=False)
                pooled = pool_rows(emb.entity, emb.entity_tile, len(emb.tiles))
                if not np.allclose(pooled, emb.tile, atol=1e-5):
                    raise SystemExit(f"{label}: [max, mean] of its entities is not its tile embedding")
                sources.setdefault(label, []).append((emb.entity, emb.entity_tile))
    return sources


def tag_decodability(vectors: NDArray[np.float32], tag_vectors: NDArray[np.float32],
                     tile: NDArray[np.int64], folds: list[Fold]) -> dict[str, float]:
    """How linearly entity vectors keep their entities' tag vectors, and how alike they point.

    ``r2``: of a ridge map (penalty chosen by leave-one-out) from the centred entity vectors to
    the centred tag vectors, fitted on the entities of each fold's train and validation tiles,
    scored on those of its test tiles, mean over the first assignment's folds (at most 5);
    ``mean_cosine``: of 5,000 random pairs of raw entity vectors (seed 0).
    """
    r2 = []
    for fold in folds[:5]:
        fit, test = np.isin(tile, np.concatenate([fold.train, fold.val])), np.isin(tile, fold.test)
        x, y = vectors - vectors[fit].mean(axis=0), tag_vectors - tag_vectors[fit].mean(axis=0)
        ridge = RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(x[fit], y[fit])
        r2.append(1.0 - float(((ridge.predict(x[test]) - y[test]) ** 2).sum() / (y[test] ** 2).sum()))
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    pairs = np.random.default_rng(0).integers(len(unit), size=(5000, 2))
    return {"r2": float(np.mean(r2)), "mean_cosine": float((unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(1).mean())}


def ablate(checkpoints: dict[str, list[Path]], ds: Path, folds: list[Fold]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every task x method x pooling x probe: fold scores (mean over replicates); and every
    task x method: :func:`tag_decodability` of its entity vectors (mean over replicates)."""
    labels = pd.read_parquet(ds / "tasks" / "labels.parquet")
    vocab = TileDataset(ds).vocabulary().column("tag").to_pylist()
    rows, decoded = [], []
    for task in TASKS:
        y = labels[task].to_numpy(np.float64)
        source = masked_dataset(ds, task)
        rows.append({"task": task, "method": "Dummy", "pool": "", "probe": "",
                     **dict(enumerate(fit_dummy(y, f, "regression").metric for f in folds))})
        count_features = tag_count_features(source, vocab)
        for probe in ("linear", "mlp"):
            rows.append({"task": task, "method": "TagCount", "pool": "", "probe": probe,
                         **dict(enumerate(fold_scores(count_features, y, folds, probe)))})
        sources = entity_sources(checkpoints, source, vocab, ds)
        tags, tag_tile = sources["TagPool vectors"][0]
        for method, replicates in sources.items():
            if method != "TagPool vectors" and all(np.array_equal(t, tag_tile) for _, t in replicates):
                measured = pd.DataFrame([tag_decodability(v, tags, t, folds) for v, t in replicates]).mean()
                decoded.append({"task": task, "method": method, **measured.to_dict()})
            for pool, pooling in POOLS.items():
                for probe in ("linear", "mlp"):
                    scores = np.mean([fold_scores(pooling(v, t, len(y)), y, folds, probe)
                                      for v, t in replicates], axis=0)
                    rows.append({"task": task, "method": method, "pool": pool, "probe": probe,
                                 **dict(enumerate(scores))})
                    print(f"{task} {method} [{pool}] {probe}: {scores.mean():.4f}", flush=True)
    return pd.DataFrame(rows), pd.DataFrame(decoded)


def table(results: pd.DataFrame, task: str) -> list[str]:
    """Markdown rows of one task: fold mean per pooling and probe, and folds won against the
    SPEC pooling of the same vectors."""
    part = results[results.task == task]
    folds = [c for c in part.columns if isinstance(c, int)]
    lines = [f"### {task}", "", "| vectors | probe | " + " | ".join(POOLS) + " |",
             "|---|---|" + "---|" * len(POOLS)]
    for (method, probe), group in part[part.pool != ""].groupby(["method", "probe"], sort=False):
        base = group[group.pool == "max, mean"][folds].to_numpy()[0]
        cells = []
        for pool in POOLS:
            score = group[group.pool == pool][folds].to_numpy()[0]
            won = "" if pool == "max, mean" else f" ({int((score < base).sum())}/{len(folds)})"
            cells.append(f"{score.mean():.3f}{won}")
        lines.append(f"| {method} | {probe} | " + " | ".join(cells) + " |")
    for _, row in part[part.pool == ""].iterrows():
        probe = row.probe or "-"
        lines.append(f"| {row.method} | {probe} | {row[folds].to_numpy().mean():.3f} |" + " |" * (len(POOLS) - 1))
    return [*lines, ""]


def main() -> None:
    """Prepare the cities and pretrain T and GT on the 8 km one (or take ``--dataset`` and
    ``--checkpoint``), ablate the pooling, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geojepa-pool"))
    parser.add_argument("--dataset", type=Path, help="a labelled dataset (default: the 4 km city, made here)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=CKPT",
                        help="with --dataset: a checkpoint to pool (repeat a NAME for replicates)")
    parser.add_argument("--group-zoom", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ablate_tile_pool.md"))
    args = parser.parse_args()
    log: list[str] = []
    checkpoints: dict[str, list[Path]] = {}
    if args.dataset is None:
        datasets = {}
        for size_km in (4.0, 8.0):
            datasets[size_km] = args.work / f"scale{size_km:g}"
            tags_city(args.work / f"scale{size_km:g}_src", datasets[size_km], size_km, SCALE_CITIES[size_km], log)
        run(["tasks", str(datasets[4.0]), "--overwrite"], log)
        for modalities in ("T", "GT"):
            dirs = pretrain_runs(datasets[8.0], args.work / f"scale8_{modalities}", SEEDS,
                                 ["--epochs", str(EPOCHS), "--model-modalities", modalities, *PRETRAIN], log)
            checkpoints[f"{modalities}-city8km"] = [d / "checkpoints" / "last.ckpt" for d in dirs]
        dataset = datasets[4.0]
        setting = (f"Models: small preset, tags only (T) and tags + geometry (GT), pretrained on the 8 km "
                   f"city ({EPOCHS} epochs, training seeds 0..{SEEDS - 1}, inductive), cells averaged over the "
                   f"seeds; evaluated on the 4 km city")
        command = "python benchmarks/ablate_tile_pool.py"
    else:
        for spec in args.checkpoint:
            name, _, path = spec.rpartition("=")
            checkpoints.setdefault(name or Path(path).stem, []).append(Path(path))
        dataset = args.dataset
        setting = f"Models: {', '.join(args.checkpoint)}; evaluated on `{dataset}`"
        command = (f"python benchmarks/ablate_tile_pool.py --dataset {dataset} "
                   + " ".join(f"--checkpoint {c}" for c in args.checkpoint)
                   + f" --group-zoom {args.group_zoom} --repeats {args.repeats}")
    labels = pd.read_parquet(dataset / "tasks" / "labels.parquet")
    folds = repeated_spatial_folds(TileDataset(dataset), labels, args.group_zoom, 5, 0, args.repeats)
    results, decoded = ablate(checkpoints, dataset, folds)
    results.to_csv(args.work / f"ablate_tile_pool_{dataset.name}.csv", index=False)
    header = [
        f"# Count-aware tile pooling on masked traffic_signals of `{dataset.name}` (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
        (f"{setting}, masked, {len(folds)} folds over zoom-{args.group_zoom} groups ({args.repeats} "
         f"assignment{'s' * (args.repeats > 1)} of 5), count labels in log space, MLP mean of {MLP_SEEDS} "
         "seeds. Test MAE, fold mean; in brackets the folds on which the pooling beats `max, mean` of "
         "the same vectors and probe."), "",
    ]
    lines = [line for task in TASKS for line in table(results, task)]
    lines += ["### Entity vectors: tags kept, and how alike they point", "",
              ("R²: a ridge map from the entity vectors to their entities' tag vectors (MiniLM sums, "
              "TagPool's vectors) on held-out tiles; mean cosine of random pairs of entity vectors."), "",
              "| input | vectors | R² | mean cosine |", "|---|---|---|---|",
              *(f"| masked {row.task} | {row.method} | {row.r2:.3f} | {row.mean_cosine:.3f} |"
                for row in decoded.itertuples()), ""]
    tail = ["Commands and wall times:", "", "| command | s |", "|---|---|", *log, ""] if log else []
    args.out.write_text("\n".join([*header, *lines, *tail]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
