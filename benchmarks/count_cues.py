"""Where does a pretrained encoder lose the counts a masked count task needs? (issue 4)

On Helsinki's masked traffic_signals the untrained encoder beats the pretrained one, and
pooling entity vectors by summing lifts only the untrained one (``ablate_tile_pool_helsinki.md``).
The label follows the counts of a few *cue* tags the masking leaves (tram tracks, one-way
streets, turn restrictions). This script follows those counts through three read-outs, for
TagPool's raw tag vectors, a checkpoint's entity embeddings and its random initialisation
(last block, the masked input), on the folds of ``geojepa evaluate`` (first assignment):

* **entity AUC**: does an entity's vector tell whether it carries the cue? (logistic
  regression on standardised vectors, fitted on the entities of the train and validation
  tiles, ROC AUC on the test tiles' entities);
* **tile R²**: can a tile-level probe read the cue's count (``log1p``) from the tile's summed
  entity vectors? (ridge, penalty by leave-one-out, on standardised sums of the train and
  validation tiles, R² on the test tiles) - the position of a probe on tile embeddings,
  which sees a few dozen labelled tiles;
* **summed indicator MAE**: the count error of a per-entity linear indicator (ridge, penalty
  10, fitted on the entities of the train and validation tiles against the cue) summed over
  each test tile's entities - whether the vectors *hold* the count linearly, given the
  entity-level supervision a tile probe does not have;
* **between-tile share**: the share of the entity vectors' variance that lies between the
  tile means (how much each entity vector says about its tile rather than about itself).

Run by hand from the repository root (venv active; about a minute on Helsinki's 95 tiles):

    python benchmarks/count_cues.py hel17 --checkpoint b8gtv_s0/checkpoints/epoch001.ckpt \
        --group-zoom 15 --out benchmarks/count_cues_helsinki.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from ablate_tile_pool import _sums, tag_vectors
from numpy.typing import NDArray
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.metrics import roc_auc_score

from geojepa.dataset.reader import TileDataset
from geojepa.embed import embed_dataset, load_checkpoint
from geojepa.evaluate import repeated_spatial_folds
from geojepa.features import random_init
from geojepa.probes import Fold
from geojepa.tasks import masked_dataset

MIN_ENTITIES = 15
INDICATOR_PENALTY = 10.0


def entity_tags(dataset: Path) -> tuple[list[list[str]], NDArray[np.int64]]:
    """Each entity's tags and the row of its tile, over the whole dataset."""
    tags: list[list[str]] = []
    tiles, offset = [], 0
    for batch in TileDataset(dataset).iter_batches(columns=["entities"]):
        tags += pc.list_flatten(batch.column("entities")).field("tags").to_pylist()
        tiles.append(pc.list_parent_indices(batch.column("entities")).to_numpy() + offset)
        offset += batch.num_rows
    return tags, np.concatenate(tiles)


def cue_tags(tags: list[list[str]], tile: NDArray[np.int64], y: NDArray[np.float64],
             top: int) -> list[tuple[str, NDArray[np.bool_]]]:
    """The ``top`` tags (of at least :data:`MIN_ENTITIES` entities) whose per-tile counts rank
    closest with the label; tags that mark exactly the same entities are named together."""
    frequency = pd.Series([t for ts in tags for t in ts]).value_counts()
    marks: dict[bytes, tuple[list[str], NDArray[np.bool_], float]] = {}
    for tag in frequency[frequency >= MIN_ENTITIES].index:
        has = np.array([tag in ts for ts in tags])
        rho = spearmanr(np.bincount(tile, weights=has, minlength=len(y)), y).statistic
        names, _, _ = marks.setdefault(has.tobytes(), ([], has, float(np.nan_to_num(rho))))
        names.append(tag)
    best = sorted(marks.values(), key=lambda m: -abs(m[2]))[:top]
    return [(" = ".join(sorted(names)), has) for names, has, _ in best]


def _standardised(v: NDArray[np.floating], rows: NDArray[np.bool_] | NDArray[np.int64]) -> NDArray[np.float64]:
    return (v - v[rows].mean(axis=0)) / (v[rows].std(axis=0) + 1e-6)


def read_outs(vectors: NDArray[np.float32], tile: NDArray[np.int64], has: NDArray[np.bool_],
              folds: list[Fold]) -> dict[str, float]:
    """``auc`` (entity AUC), ``r2`` (tile R²) and ``mae`` (summed indicator MAE) of one cue
    (see the module text), mean over the folds whose test tiles hold the cue."""
    num_tiles = int(tile.max()) + 1
    count = np.bincount(tile, weights=has, minlength=num_tiles)
    sums = _sums(vectors, tile, num_tiles)
    auc, r2, mae = [], [], []
    for fold in folds:
        fit_tiles = np.concatenate([fold.train, fold.val])
        fit, test = np.isin(tile, fit_tiles), np.isin(tile, fold.test)
        if not has[test].any() or has[test].all():
            continue
        z = _standardised(vectors, fit)
        logistic = LogisticRegression(max_iter=2000).fit(z[fit], has[fit])
        auc.append(roc_auc_score(has[test], logistic.decision_function(z[test])))
        s, target = _standardised(sums, fit_tiles), np.log1p(count)
        ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(s[fit_tiles], target[fit_tiles])
        residual = ((ridge.predict(s[fold.test]) - target[fold.test]) ** 2).sum()
        r2.append(1.0 - residual / ((target[fold.test] - target[fit_tiles].mean()) ** 2).sum())
        indicator = Ridge(alpha=INDICATOR_PENALTY).fit(z[fit], has[fit]).predict(z)
        summed = np.bincount(tile, weights=indicator, minlength=num_tiles)
        mae.append(float(np.abs(summed[fold.test] - count[fold.test]).mean()))
    return {"auc": float(np.mean(auc)), "r2": float(np.mean(r2)), "mae": float(np.mean(mae))}


def between_tile_share(vectors: NDArray[np.float32], tile: NDArray[np.int64]) -> float:
    """Share of the vectors' total variance that lies between their tiles' means."""
    size = np.bincount(tile)
    means = _sums(vectors, tile, len(size)) / np.maximum(size, 1)[:, None]
    centre = vectors.mean(axis=0)
    return float((size[:, None] * (means - centre) ** 2).sum() / ((vectors - centre) ** 2).sum())


def main() -> None:
    """Embed the masked input, find the cue tags, measure every read-out, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a dataset labelled by `geojepa tasks`")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--task", default="traffic_signals")
    parser.add_argument("--group-zoom", type=int, default=14)
    parser.add_argument("--top", type=int, default=6, help="how many cue tags to follow")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/count_cues.md"))
    args = parser.parse_args()
    started = datetime.now(UTC)
    labels = pd.read_parquet(args.dataset / "tasks" / "labels.parquet")
    y = labels[args.task].to_numpy(np.float64)
    folds = repeated_spatial_folds(TileDataset(args.dataset), labels, args.group_zoom, 5, 0, 1)
    source = masked_dataset(args.dataset, args.task)
    tags, tile = entity_tags(source)
    vocab = TileDataset(args.dataset).vocabulary().column("tag").to_pylist()
    raw, raw_tile = tag_vectors(source, vocab, args.dataset)
    checkpoint = load_checkpoint(args.checkpoint)
    vectors = {"TagPool's tag vectors": raw}
    for name, model in (("pretrained", checkpoint), ("its random init", random_init(checkpoint))):
        vectors[name] = embed_dataset(model, source, progress=False).entity
    if not np.array_equal(raw_tile, tile) or any(len(v) != len(tile) for v in vectors.values()):
        raise SystemExit("entity order differs between the readers")
    rows = [{"cue": name, "entities": int(has.sum()), "vectors": method, **read_outs(v, tile, has, folds)}
            for name, has in cue_tags(tags, tile, y, args.top) for method, v in vectors.items()]
    table = pd.DataFrame(rows)
    lines = [
        f"# Where the counts of masked {args.task}'s cue tags get lost (`{args.dataset.name}`, issue 4)", "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC  ",
        (f"Command: `python benchmarks/count_cues.py {args.dataset} --checkpoint {args.checkpoint} "
         f"--group-zoom {args.group_zoom} --top {args.top}`  "),
        (f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU, "
         f"{(datetime.now(UTC) - started).total_seconds():.0f} s  "),
        (f"Masked input of {args.task}, {len(y)} tiles, {len(tile):,} entities, 5 folds over zoom-"
         f"{args.group_zoom} groups (means over the folds whose test tiles hold the cue). Cue tags: "
         f"the {args.top} tags whose per-tile counts rank closest with the label (Spearman). Read-outs "
         "as the script's docstring defines them; higher AUC and R², lower MAE is better."), "",
        "| cue tag | entities | vectors | entity AUC | tile R² | summed indicator MAE |",
        "|---|---|---|---|---|---|",
        *(f"| {r.cue} | {r.entities} | {r.vectors} | {r.auc:.3f} | {r.r2:.3f} | {r.mae:.2f} |"
          for r in table.itertuples()), "",
        "| vectors | between-tile share of variance |", "|---|---|",
        *(f"| {name} | {between_tile_share(v, tile):.3f} |" for name, v in vectors.items()), "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
