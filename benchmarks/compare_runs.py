"""Paired comparison of methods from separate `geojepa evaluate` reports on the same folds.

`geojepa evaluate` compares the methods of one run; models evaluated in separate runs (one
report per training seed, or a model added later) are compared here, fold by fold, from their
``runs.csv``. Each method is given as ``REPORT:METHOD`` (``METHOD`` as in the report's tables,
e.g. ``GT`` or ``GT random init``); the fold scores of all replicates in that report are averaged
per fold, as in the report. The reports must agree on every fold's train, validation and test
sizes (a cheap check that they used the same folds); the first method is compared with each of
the others.

Run by hand from the repository root (venv active):

    python benchmarks/compare_runs.py --task traffic_signals --probes linear mlp set \\
        REPORT_A:GTI REPORT_B:GT REPORT_B:TagPool
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from geojepa.report import DUMMY_PROBE, fold_scores

SIZES = ["n_train", "n_val", "n_test"]


def load(spec: str, task: str, variant: str) -> tuple[str, pd.DataFrame, tuple]:
    """Fold scores (probe x fold) of one ``REPORT:METHOD`` for a task and variant.

    Returns:
        ``(name, scores, sizes)``: a display name, the fold scores (mean over seeds and
        replicates) and each fold's ``(n_train, n_val, n_test)``.

    Raises:
        SystemExit: If the report or the method is missing.
    """
    report, _, method = spec.partition(":")
    path = Path(report) / "runs.csv"
    if not path.is_file() or not method:
        raise SystemExit(f"{spec}: expected REPORT:METHOD with REPORT/runs.csv present")
    runs = pd.read_csv(path)
    runs = runs[(runs["task"] == task) & (runs["variant"] == variant) & (runs["method"] == method)]
    if runs.empty:
        raise SystemExit(f"{path}: no {variant} {task} runs of {method!r}")
    sizes = tuple(map(tuple, runs.groupby("fold")[SIZES].first().to_numpy().tolist()))
    scores = fold_scores(runs).set_index(["probe", "fold"])["metric"].unstack("fold")
    return f"{Path(report).name}:{method}", scores, sizes


def main() -> None:
    """Print fold means and folds won by the first method against each other one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+", help="REPORT:METHOD; the first is compared with the rest")
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", default="masked")
    parser.add_argument("--probes", nargs="+", default=["linear", "mlp", "set"])
    args = parser.parse_args()
    loaded = [load(spec, args.task, args.variant) for spec in args.methods]
    if len({sizes for _, _, sizes in loaded}) > 1:
        raise SystemExit("the reports used different folds (train/val/test sizes differ): "
                         + "; ".join(f"{name} {sizes}" for name, _, sizes in loaded))
    first, mine, _ = loaded[0]
    print(f"| {args.task} ({args.variant}) | probe | fold mean | folds won by {first} |")
    print("|---|---|---|---|")
    for probe in args.probes:
        for name, scores, _ in loaded:
            row = probe if probe in scores.index else DUMMY_PROBE
            if row not in scores.index:
                continue
            won = ""
            if name != first and probe in mine.index:
                won = f"{int((mine.loc[probe] < scores.loc[row]).sum())}/{scores.shape[1]}"
            print(f"| {name} | {row} | {scores.loc[row].mean():.3f} | {won} |")


if __name__ == "__main__":
    main()
