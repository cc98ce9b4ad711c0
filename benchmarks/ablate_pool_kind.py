"""Pool each entity kind apart (``--pool kind``): who gains, on which task? (issue 4)

The SPEC's tile embedding is ``[max, mean]`` over all of a tile's tokens. A Helsinki tile holds
about 180 entities of which about 7% are car roads, yet its masked max_speed follows the class
of the fastest road (``headroom_masked.md``), and the entity vectors keep each road's class
(``entity_road_class.md``). ``geojepa evaluate --pool kind`` pools points, lines, polygons and
relations apart. This script fits the linear probe of ``geojepa evaluate`` on the poolings that
``--pools`` names (``tokens``, the SPEC's; ``kind``; ``both`` side by side, ``5 x 2d``) of the
same entity vectors (the checkpoints' entity tokens, their random initialisation's, and
TagPool's tag vectors) over the same folds, and adds validation-chosen variants:

* ``checkpoint``: per task and fold, whichever checkpoint probes best on validation (as
  ``--select``), under each pooling; its initialisation and TagPool use the same pooling;
* ``checkpoint + pooling``: whichever (checkpoint, pooling) probes best on validation; the
  initialisation and TagPool each choose their pooling on validation the same way.

Run by hand from the repository root (venv active; Helsinki's 95 tiles over 10 x 5 folds: 7
minutes on 2 cores, 10 with ``both``; the 8 km city's 2,858 tiles, 5 folds: 45 minutes):

    python benchmarks/ablate_pool_kind.py hel17 --group-zoom 15 --repeats 10 \\
        --checkpoint e1=b8gtv_s0/checkpoints/epoch000.ckpt --checkpoint e2=b8gtv_s0/checkpoints/epoch001.ckpt \\
        --out benchmarks/ablate_pool_kind_helsinki.md
    python benchmarks/ablate_pool_kind.py hel17 --group-zoom 15 --repeats 10 --pools tokens kind both \\
        --checkpoint e1=b8gtv_s0/checkpoints/epoch000.ckpt --checkpoint e2=b8gtv_s0/checkpoints/epoch001.ckpt \\
        --out benchmarks/ablate_pool_kind_helsinki_both.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from numpy.typing import NDArray

from geojepa.dataset.reader import TileDataset
from geojepa.embed import load_checkpoint
from geojepa.evaluate import repeated_spatial_folds
from geojepa.features import (
    model_inputs,
    pool_rows,
    pool_rows_by_kind,
    random_init,
    tag_pool_inputs,
)
from geojepa.probes import fit_dummy, fit_linear
from geojepa.tasks import masked_dataset

TASKS = {"building_count": True, "max_speed": False, "traffic_signals": True}  # log target
POOLS = ("tokens", "kind", "both")  # the choices of --pools


def entity_kinds(dataset: Path) -> NDArray[np.int8]:
    """Each entity's kind, in stored order."""
    return np.concatenate([pc.list_flatten(b.column("entities")).field("kind").to_numpy(zero_copy_only=False)
                           for b in TileDataset(dataset).iter_batches(columns=["entities"])])


def pooled(x: NDArray[np.float32], tile: NDArray[np.int64], kind: NDArray[np.int8], pool: str,
           num_tiles: int) -> NDArray[np.float32]:
    """``[max, mean]`` of all rows per tile (tokens), of each kind's rows apart (kind), or both
    side by side."""
    parts = []
    if pool in ("tokens", "both"):
        parts.append(pool_rows(x, tile, num_tiles))
    if pool in ("kind", "both"):
        parts.append(pool_rows_by_kind(x, tile, kind, num_tiles))
    return np.concatenate(parts, axis=1)


def fits(args: argparse.Namespace) -> dict[tuple[str, str, str], tuple[NDArray, NDArray]]:
    """(task, method, pooling) -> validation and test MAE per fold."""
    labels = pd.read_parquet(args.dataset / "tasks" / "labels.parquet")
    ds = TileDataset(args.dataset)
    folds = repeated_spatial_folds(ds, labels, args.group_zoom, 5, 0, args.repeats)
    vocab = ds.vocabulary().column("tag").to_pylist()
    checkpoints = {n: load_checkpoint(Path(p)) for n, p in (s.split("=", 1) for s in args.checkpoint)}
    out = {}
    for task, log in TASKS.items():
        masked = masked_dataset(args.dataset, task)
        kind = entity_kinds(masked)
        first = next(iter(checkpoints.values()))
        sets = {"TagPool": tag_pool_inputs(masked, vocab, args.dataset, tokens=True).tokens,
                "init": model_inputs(random_init(first), masked, tokens=True).tokens}
        sets.update({n: model_inputs(c, masked, tokens=True).tokens for n, c in checkpoints.items()})
        y = labels[task].to_numpy(float)
        for name, s in sets.items():
            entity = s.kind == 0
            x, tile = s.x[entity], s.tile[entity]
            assert len(x) == len(kind), "entity tokens and stored entities differ"
            for pool in args.pools:
                f = pooled(x, tile, kind, pool, len(labels))
                rs = [fit_linear(f, y, fold, "regression", log_target=log) for fold in folds]
                out[task, name, pool] = (np.array([r.val_metric for r in rs]), np.array([r.metric for r in rs]))
        dummy = np.array([fit_dummy(y, fold, "regression").metric for fold in folds])
        out[task, "Dummy", "-"] = (dummy, dummy)
    return out


def chosen(res: dict, task: str, candidates: list[tuple[str, str]]) -> NDArray:
    """Per fold, the test MAE of the candidate with the lowest validation MAE."""
    val = np.stack([res[task, *c][0] for c in candidates])
    test = np.stack([res[task, *c][1] for c in candidates])
    return test[val.argmin(0), np.arange(test.shape[1])]


def report(res: dict, models: list[str], pools: list[str]) -> list[str]:
    """Markdown tables: every cell, then the chosen variants' fold wins."""
    lines = ["| task | pooling | " + " | ".join(["TagPool", "init", *models]) + " | Dummy |",
             "|---|---|" + "---|" * (len(models) + 3)]
    for task in TASKS:
        for pool in pools:
            cells = [f"{res[task, m, pool][1].mean():.3f}" for m in ["TagPool", "init", *models]]
            lines.append(f"| {task} | {pool} | " + " | ".join(cells) + f" | {res[task, 'Dummy', '-'][1].mean():.3f} |")
    lines += ["", ("Folds on which the validation-chosen model beats Dummy / its initialisation / "
              "TagPool (each pooled as the model, or chosen on validation the same way) / the SPEC's "
              "TagPool (all tokens together):"), "",
              "| task | chosen on validation | MAE | vs Dummy | vs init | vs TagPool | vs SPEC TagPool |",
              "|---|---|---|---|---|---|---|"]
    for task in TASKS:
        n = len(res[task, "Dummy", "-"][1])
        dummy, spec_tp = res[task, "Dummy", "-"][1], res[task, "TagPool", "tokens"][1]
        variants = [(f"checkpoint, pooling {p}", [(m, p) for m in models], res[task, "init", p][1],
                     res[task, "TagPool", p][1]) for p in pools]
        variants.append(("checkpoint + pooling", [(m, p) for m in models for p in pools],
                         chosen(res, task, [("init", p) for p in pools]),
                         chosen(res, task, [("TagPool", p) for p in pools])))
        for label, candidates, init, tagpool in variants:
            m = chosen(res, task, candidates)
            lines.append(f"| {task} | {label} | {m.mean():.3f} | {(m < dummy).sum()}/{n} | {(m < init).sum()}/{n} | "
                         f"{(m < tagpool).sum()}/{n} | {(m < spec_tp).sum()}/{n} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=CKPT")
    parser.add_argument("--group-zoom", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pools", nargs="+", choices=POOLS, default=["tokens", "kind"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    res = fits(args)
    models = [s.split("=", 1)[0] for s in args.checkpoint]
    lines = [
        "# Entity kinds pooled apart (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `python benchmarks/ablate_pool_kind.py {args.dataset} --group-zoom {args.group_zoom} "
        f"--repeats {args.repeats} " + " ".join(f"--checkpoint {c}" for c in args.checkpoint)
        + f" --pools {' '.join(args.pools)}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, no GPU  ",
        (f"Masked inputs, linear probe (count tasks in log space), test MAE, mean over "
        f"{args.repeats} x 5 folds over zoom-{args.group_zoom} groups."), "",
        *report(res, models, args.pools),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
