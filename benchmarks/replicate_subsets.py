"""How many pretraining seeds does keeping the one that validates best need? Subsets of a report's replicates.

`geojepa evaluate --best-replicate` keeps, per task, probe and fold, the replicate (pretraining
seed) whose probe validates best. With a handful of seeds, whether the kept one beats a baseline
may rest on one lucky seed. This replays the choice on every subset of k of the report's
replicates (from its ``runs.csv``, with :func:`geojepa.evaluate.best_replicate`, so the choice is
the report's own: validation rows only) and counts, per subset size, how many subsets keep a
model that beats each other method on a majority of folds. A method with replicates (the random
initialisations) is kept the same way from the same subset; one without (TagPool) is compared as
it is. With several ``--tasks`` and ``--one-replicate``, one replicate is kept for all of them
(``geojepa evaluate --one-replicate``), and a subset counts when its kept model beats the other
method on a majority of folds of every task.

Run by hand from the repository root (venv active):

    python benchmarks/replicate_subsets.py REPORT --method GT --task max_speed --probe linear \\
        --against TagPool "GT random init"
    python benchmarks/replicate_subsets.py REPORT --method GT --tasks building_count max_speed \\
        traffic_signals --one-replicate --probe mlp --against TagPool "GT random init"
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import pandas as pd

from geojepa.evaluate import best_replicate
from geojepa.report import fold_scores


def kept_scores(runs: pd.DataFrame, method: str, subset: tuple[int, ...],
                across_tasks: bool = False) -> pd.Series:
    """Test score per task and fold of the replicate of ``method`` kept on validation from
    ``subset``: per task, or one for every task of ``runs`` with ``across_tasks``.

    A method with one replicate gives its own fold scores whatever the subset.
    """
    rows = runs[runs["method"] == method]
    if rows["replicate"].nunique() > 1:
        rows = best_replicate(rows[rows["replicate"].isin(subset)], method, method, across_tasks)
    return fold_scores(rows).set_index(["task", "fold"])["metric"]


def _beats_on_most_folds(mine: pd.Series, theirs: pd.Series) -> bool:
    """Whether ``mine`` scores lower on a majority of folds of every task."""
    won = (mine < theirs.reindex(mine.index)).groupby(level="task").agg(["sum", "size"])
    return bool((won["sum"] > won["size"] / 2).all())


def subset_table(runs: pd.DataFrame, method: str, against: list[str],
                 across_tasks: bool = False) -> pd.DataFrame:
    """One row per subset size: subsets, median fold mean of the kept model per task, and for
    each other method the share of subsets whose kept model beats it on a majority of folds
    (of every task)."""
    replicates = sorted(runs.loc[runs["method"] == method, "replicate"].unique())
    tasks = list(dict.fromkeys(runs["task"]))
    rows = []
    for k in range(1, len(replicates) + 1):
        means, majorities = [], {other: 0 for other in against}
        subsets = list(combinations(replicates, k))
        for subset in subsets:
            mine = kept_scores(runs, method, subset, across_tasks)
            means.append(mine.groupby(level="task").mean())
            for other in against:
                majorities[other] += _beats_on_most_folds(mine, kept_scores(runs, other, subset, across_tasks))
        medians = pd.concat(means, axis=1).median(axis=1)
        rows.append({"seeds": k, "subsets": len(subsets),
                     **{"kept: median fold mean" + (f", {task}" if len(tasks) > 1 else ""):
                        float(medians[task]) for task in tasks},
                     **{f"beats {other} on most folds": f"{won}/{len(subsets)}"
                        for other, won in majorities.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    """Print the subset table of one report, task and probe as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a `geojepa evaluate` report folder")
    parser.add_argument("--method", required=True, help="method with several replicates")
    parser.add_argument("--tasks", "--task", nargs="+", required=True,
                        help="with several, the kept model must win on every one")
    parser.add_argument("--one-replicate", action="store_true",
                        help="keep one replicate for all the tasks, as `geojepa evaluate "
                        "--one-replicate` does, instead of one per task")
    parser.add_argument("--probe", default="linear")
    parser.add_argument("--variant", default="masked")
    parser.add_argument("--against", nargs="+", required=True, help="methods to beat")
    args = parser.parse_args()
    path = args.report / "runs.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (expected a `geojepa evaluate` report)")
    runs = pd.read_csv(path)
    runs = runs[runs["task"].isin(args.tasks) & (runs["variant"] == args.variant)
                & (runs["probe"] == args.probe)]
    missing = [m for m in [args.method, *args.against] if m not in set(runs["method"])]
    if missing:
        raise SystemExit(f"{path}: no {args.variant} {' '.join(args.tasks)} {args.probe} runs of {missing}")
    absent = sorted(set(args.tasks) - set(runs["task"]))
    if absent:
        raise SystemExit(f"{path}: no {args.variant} {args.probe} runs of the task(s) {', '.join(absent)}")
    table = subset_table(runs, args.method, args.against, args.one_replicate)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
