"""Paired comparison of methods from separate `geojepa evaluate` reports on the same folds.

`geojepa evaluate` compares the methods of one run; models evaluated in separate runs (one
report per training seed, or a model added later) are compared here, fold by fold, from their
``runs.csv``. Each method is given as ``REPORT:METHOD`` (``METHOD`` as in the report's tables,
e.g. ``GT`` or ``GT random init``); the fold scores of all replicates in that report are averaged
per fold, as in the report. The reports must agree on every fold's train, validation and test
sizes (a cheap check that they used the same folds); the first method is compared with each of
the others. When every report has its test predictions (``predictions.parquet``), each comparison
also gets the paired test of :func:`geojepa.report.paired_test` (difference of the means and a
sign-flip p-value over the spatial groups of the test tiles).

Run by hand from the repository root (venv active):

    python benchmarks/compare_runs.py --task traffic_signals --probes linear mlp set \\
        REPORT_A:GTI REPORT_B:GT REPORT_B:TagPool
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from geojepa.report import DUMMY_PROBE, fold_scores, paired_test

SIZES = ["n_train", "n_val", "n_test"]


def load(spec: str, task: str, variant: str) -> tuple[str, pd.DataFrame, tuple, pd.DataFrame | None]:
    """Fold scores (probe x fold) of one ``REPORT:METHOD`` for a task and variant.

    Returns:
        ``(name, scores, sizes, predictions)``: a display name, the fold scores (mean over seeds
        and replicates), each fold's ``(n_train, n_val, n_test)`` and the method's test
        predictions under the display name (None when the report has none).

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
    name = f"{Path(report).name}:{method}"
    predictions = Path(report) / "predictions.parquet"
    if not predictions.is_file():
        return name, scores, sizes, None
    rows = pd.read_parquet(predictions, filters=[("task", "==", task), ("variant", "==", variant),
                                                 ("method", "==", method)])
    return name, scores, sizes, rows.assign(method=name)


def main() -> None:
    """Print fold means and folds won by the first method against each other one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+", help="REPORT:METHOD; the first is compared with the rest")
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", default="masked")
    parser.add_argument("--probes", nargs="+", default=["linear", "mlp", "set"])
    args = parser.parse_args()
    loaded = [load(spec, args.task, args.variant) for spec in args.methods]
    if len({sizes for _, _, sizes, _ in loaded}) > 1:
        raise SystemExit("the reports used different folds (train/val/test sizes differ): "
                         + "; ".join(f"{name} {sizes}" for name, _, sizes, _ in loaded))
    first, mine, _, _ = loaded[0]
    tiles = [rows for *_, rows in loaded]
    predictions = None if any(rows is None for rows in tiles) else pd.concat(tiles, ignore_index=True)
    tested = "" if predictions is None else " Δ (p) |"
    print(f"| {args.task} ({args.variant}) | probe | fold mean | folds won by {first} |{tested}")
    print("|---|---|---|---|" + ("---|" if tested else ""))
    for probe in args.probes:
        for name, scores, _, _ in loaded:
            row = probe if probe in scores.index else DUMMY_PROBE
            if row not in scores.index:
                continue
            won = test = ""
            if name != first and probe in mine.index:
                won = f"{int((mine.loc[probe] < scores.loc[row]).sum())}/{scores.shape[1]}"
                result = None if predictions is None else paired_test(
                    predictions, first, name, args.task, args.variant, probe)
                test = "" if result is None else f" {result.delta:+.3g} ({result.p_value:.2g}) |"
            print(f"| {name} | {row} | {scores.loc[row].mean():.3f} | {won} |"
                  + (test or (" |" if tested else "")))


if __name__ == "__main__":
    main()
