"""How many pretraining seeds does keeping the one that validates best need? Subsets of a report's replicates.

`geojepa evaluate --best-replicate` keeps, per task, probe and fold, the replicate (pretraining
seed) whose probe validates best. With a handful of seeds, whether the kept one beats a baseline
may rest on one lucky seed. This replays the choice on every subset of k of the report's
replicates (from its ``runs.csv``, with :func:`geojepa.evaluate.best_replicate`, so the choice is
the report's own: validation rows only) and counts, per subset size, how many subsets keep a
model that beats each other method on a majority of folds. A method with replicates (the random
initialisations) is kept the same way from the same subset; one without (TagPool) is compared as
it is.

Run by hand from the repository root (venv active):

    python benchmarks/replicate_subsets.py REPORT --method GT --task max_speed --probe linear \\
        --against TagPool "GT random init"
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from geojepa.evaluate import best_replicate
from geojepa.report import fold_scores


def kept_scores(runs: pd.DataFrame, method: str, subset: tuple[int, ...]) -> pd.Series:
    """Test score per fold of the replicate of ``method`` kept on validation from ``subset``.

    A method with one replicate gives its own fold scores whatever the subset.
    """
    rows = runs[runs["method"] == method]
    if rows["replicate"].nunique() > 1:
        rows = best_replicate(rows[rows["replicate"].isin(subset)], method, method)
    return fold_scores(rows).set_index("fold")["metric"]


def subset_table(runs: pd.DataFrame, method: str, against: list[str]) -> pd.DataFrame:
    """One row per subset size: subsets, median fold mean of the kept model, and for each other
    method the share of subsets whose kept model beats it on a majority of folds."""
    replicates = sorted(runs.loc[runs["method"] == method, "replicate"].unique())
    rows = []
    for k in range(1, len(replicates) + 1):
        means, majorities = [], {other: 0 for other in against}
        subsets = list(combinations(replicates, k))
        for subset in subsets:
            mine = kept_scores(runs, method, subset)
            means.append(mine.mean())
            for other in against:
                theirs = kept_scores(runs, other, subset).reindex(mine.index)
                majorities[other] += int((mine < theirs).sum() > len(mine) / 2)
        rows.append({"seeds": k, "subsets": len(subsets),
                     "kept: median fold mean": float(np.median(means)),
                     **{f"beats {other} on most folds": f"{won}/{len(subsets)}"
                        for other, won in majorities.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    """Print the subset table of one report, task and probe as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a `geojepa evaluate` report folder")
    parser.add_argument("--method", required=True, help="method with several replicates")
    parser.add_argument("--task", required=True)
    parser.add_argument("--probe", default="linear")
    parser.add_argument("--variant", default="masked")
    parser.add_argument("--against", nargs="+", required=True, help="methods to beat")
    args = parser.parse_args()
    path = args.report / "runs.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (expected a `geojepa evaluate` report)")
    runs = pd.read_csv(path)
    runs = runs[(runs["task"] == args.task) & (runs["variant"] == args.variant)
                & (runs["probe"] == args.probe)]
    missing = [m for m in [args.method, *args.against] if m not in set(runs["method"])]
    if missing:
        raise SystemExit(f"{path}: no {args.variant} {args.task} {args.probe} runs of {missing}")
    table = subset_table(runs, args.method, args.against)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
