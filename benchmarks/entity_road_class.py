"""Do the entity vectors keep each road's class? (issue 4, Helsinki max_speed)

Helsinki's masked max_speed follows the class of a tile's fastest car road
(``headroom_masked.md``), yet no pooled tile embedding reads it. This script asks where the
class is lost: in the entity vectors, or when ``[max, mean]`` pools a tile's 180 entities, of
which the car roads are about 7%. For every car-road way of the masked max_speed input it fits
an L2 logistic regression from the entity's vector to its ``highway`` class (5 folds grouped by
tile, so no tile's roads sit on both sides), for:

* TagPool's entity tag vectors (the sum of the MiniLM vectors of the entity's tags, layer-normed
  as the tokeniser does before its linear map);
* the entity tokens of the given checkpoints and of the first one's random initialisation;
* with ``--transfer-from``, TagPool's vectors of another dataset's roads (e.g. the synthetic
  city a checkpoint was pretrained on) as the training rows, tested on all of this dataset's roads
  of the classes both have.

Run by hand from the repository root (venv active, about 2 minutes on 2 cores):

    python benchmarks/entity_road_class.py hel17 --checkpoint e2=b8gtv_s0/checkpoints/epoch001.ckpt \\
        --transfer-from city8 --out benchmarks/entity_road_class.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geojepa.dataset.reader import TileDataset
from geojepa.embed import load_checkpoint
from geojepa.features import model_inputs, random_init, tag_pool_inputs
from geojepa.tasks import CAR_ROADS, masked_dataset


def road_classes(dataset: Path) -> NDArray[np.object_]:
    """Each entity's car-road class in stored order (None for every other entity)."""
    out = []
    for batch in TileDataset(dataset).iter_batches(columns=["entities"]):
        for tags in pc.list_flatten(batch.column("entities")).field("tags").to_pylist():
            road = next((t.split("=", 1)[1] for t in tags if t.startswith("highway=")), None)
            out.append(road if road in CAR_ROADS else None)
    return np.array(out, dtype=object)


def tag_vectors(dataset: Path, masked: Path) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Layer-normed entity tag vectors of ``masked`` and each entity's tile."""
    vocab = TileDataset(dataset).vocabulary().column("tag").to_pylist()
    sets = tag_pool_inputs(masked, vocab, dataset, tokens=True).tokens
    assert sets is not None
    x = sets.x
    return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5), sets.tile


def classifier() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))


def grouped_accuracy(x: NDArray[np.float32], y: NDArray[np.object_], tile: NDArray[np.int64]) -> float:
    """Accuracy of the road class over 5 folds grouped by tile."""
    return float(cross_val_score(classifier(), x, y.astype(str), cv=GroupKFold(5), groups=tile).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--transfer-from", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    masked = masked_dataset(args.dataset, "max_speed")
    cls = road_classes(masked)
    road = np.array([c is not None for c in cls])
    rows = []
    x, tile = tag_vectors(args.dataset, masked)
    rows.append(("TagPool entity tag vectors", grouped_accuracy(x[road], cls[road], tile[road])))
    checkpoints = [(n, load_checkpoint(Path(p))) for n, p in (s.split("=", 1) for s in args.checkpoint)]
    if checkpoints:
        checkpoints.append((f"random init of {checkpoints[0][0]}", random_init(checkpoints[0][1])))
    for name, checkpoint in checkpoints:
        sets = model_inputs(checkpoint, masked, tokens=True).tokens
        assert sets is not None
        entity = sets.kind == 0
        tokens, token_tile = sets.x[entity], sets.tile[entity]
        rows.append((f"{name} entity tokens", grouped_accuracy(tokens[road], cls[road], token_tile[road])))
    transfer = ""
    if args.transfer_from:
        other = masked_dataset(args.transfer_from, "max_speed")
        other_cls = road_classes(other)
        other_x = tag_vectors(args.transfer_from, other)[0]
        other_road = np.array([c is not None for c in other_cls])
        fit = classifier().fit(other_x[other_road], other_cls[other_road].astype(str))
        shared = road & np.isin(cls.astype(str), np.unique(other_cls[other_road].astype(str)))
        acc = float(fit.score(x[shared], cls[shared].astype(str)))
        transfer = (f"\nTagPool's vectors of `{args.transfer_from.name}`'s {other_road.sum()} car roads "
                    f"as training rows, tested on the {shared.sum()} of {road.sum()} roads here whose "
                    f"class `{args.transfer_from.name}` has: accuracy {acc:.3f}.\n")
    counts = dict(zip(*np.unique(cls[road].astype(str), return_counts=True), strict=True))
    lines = [
        "# Entity vectors and road classes (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `python benchmarks/entity_road_class.py {args.dataset} "
        + " ".join(f"--checkpoint {c}" for c in args.checkpoint)
        + (f" --transfer-from {args.transfer_from}" if args.transfer_from else "") + "`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
        (f"Input: `{masked}`, {len(cls)} entities, {road.sum()} car roads "
        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))})"), "",
        "| entity vectors | road-class accuracy (5 folds grouped by tile) |", "|---|---|",
        *(f"| {name} | {acc:.3f} |" for name, acc in rows),
        f"| majority class | {max(counts.values()) / road.sum():.3f} |", transfer,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
