"""Merge `geojepa evaluate` reports that probed different tasks with the same settings, and keep one seed for all of them.

A long evaluation is often run one task at a time (or two runs share the cores), so one set of
checkpoints ends up in several report folders that differ only in ``tasks``. Same settings mean
the same folds, probe seeds and replicates (`geojepa evaluate` is deterministic), so their runs
can be read as one report. This writes that report and adds, for every method with several
replicates, the one replicate kept per probe and fold for every task
(:func:`geojepa.evaluate.best_replicate` with ``across_tasks``, as ``geojepa evaluate
--one-replicate`` does): the checkpoint a user would deploy, chosen on validation rows only.

Run by hand from the repository root (venv active):

    python benchmarks/merge_reports.py REPORT_A REPORT_B --out MERGED
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from geojepa.atomic import atomic_folder
from geojepa.evaluate import (
    ONE_REPLICATE_NOTE,
    ONE_SUFFIX,
    best_replicate,
    deployed_notes,
    kept_replicates,
    replicated_methods,
)
from geojepa.report import write_report

Report = tuple[pd.DataFrame, dict, list[str], pd.DataFrame | None, pd.DataFrame | None]
"""Runs, settings, notes, health and test predictions of one report (the last two may be absent)."""


def read_report(folder: Path) -> Report:
    """Runs, settings, notes (the bullet lines under the title), health and predictions of one
    report.

    Raises:
        SystemExit: If a report file is missing.
    """
    paths = {name: folder / name for name in ("runs.csv", "settings.json", "results.md")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"{missing[0]}: no such file (expected a `geojepa evaluate` report)")
    lines = paths["results.md"].read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("- "))
    notes = []
    for line in lines[start:]:
        if not line.startswith("- "):
            break
        notes.append(line.removeprefix("- "))
    health, predictions = folder / "health.csv", folder / "predictions.parquet"
    return (pd.read_csv(paths["runs.csv"]), json.loads(paths["settings.json"].read_text()), notes,
            pd.read_csv(health) if health.is_file() else None,
            pd.read_parquet(predictions) if predictions.is_file() else None)


def kept_predictions(predictions: pd.DataFrame, kept: pd.DataFrame, method: str) -> pd.DataFrame:
    """The test predictions of the runs :func:`best_replicate` kept of ``method``: those of the
    replicate named in each run's ``selected``, under the kept runs' name, as replicate 0."""
    keys = ["task", "variant", "probe", "fold", "seed"]
    chosen = kept[keys].assign(
        replicate=kept_replicates(kept["selected"]),
        name=kept["method"])
    rows = predictions[predictions["method"] == method].merge(chosen, on=[*keys, "replicate"])
    return rows.assign(method=rows.pop("name"), replicate=0)[list(predictions.columns)]


def merge(folders: list[Path]) -> Report:
    """The runs of several reports as one, with the one-replicate methods added; their test
    predictions too when every report has them.

    Raises:
        SystemExit: If the reports differ in a setting other than ``tasks`` or share a task.
    """
    reports = [read_report(folder) for folder in folders]
    first = reports[0][1]
    for folder, (_, settings, *_) in zip(folders[1:], reports[1:], strict=True):
        differ = sorted(k for k in first.keys() | settings.keys()
                        if k != "tasks" and first.get(k) != settings.get(k))
        if differ:
            raise SystemExit(f"{folder}: settings differ from {folders[0]} in {', '.join(differ)}")
    tasks = [task for _, settings, *_ in reports for task in settings["tasks"]]
    if len(set(tasks)) < len(tasks):
        raise SystemExit(f"the reports share a task: {', '.join(tasks)}")
    runs = pd.concat([r[0] for r in reports], ignore_index=True)
    runs = runs[~runs["method"].str.endswith(ONE_SUFFIX)]  # a report's own, kept for its tasks only
    kept = {method: best_replicate(runs, method, f"{method}{ONE_SUFFIX}", across_tasks=True)
            for method in replicated_methods(runs)}
    runs = pd.concat([runs, *kept.values()], ignore_index=True)
    predictions = None
    if all(r[4] is not None for r in reports):
        predictions = pd.concat([r[4] for r in reports], ignore_index=True)
        predictions = predictions[~predictions["method"].str.endswith(ONE_SUFFIX)]
        predictions = pd.concat([predictions, *(kept_predictions(predictions, rows, method)
                                                for method, rows in kept.items())], ignore_index=True)
    notes = [*(note for note in reports[0][2]
               if note != ONE_REPLICATE_NOTE and f"{ONE_SUFFIX} (" not in note),
             ONE_REPLICATE_NOTE, *deployed_notes(runs, first["checkpoints"]),
             f"Runs of {len(folders)} report(s) with the same settings, merged by "
             "`benchmarks/merge_reports.py`, which added the one-replicate rows: "
             + "; ".join(f"`{folder.name}` ({', '.join(s['tasks'])})"
                         for folder, (_, s, *_) in zip(folders, reports, strict=True))]
    healths = [r[3] for r in reports if r[3] is not None]
    health = (pd.concat(healths).drop_duplicates([c for c in ("method", "replicate", "input")
                                                  if c in healths[0].columns])
              if healths else None)  # an input two reports embedded (unmasked) counts once
    return (runs, {**first, "tasks": tasks, "merged_from": [str(f) for f in folders]}, notes, health,
            predictions)


def main() -> None:
    """Write the merged report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", help="`geojepa evaluate` report folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out}: output exists; pass --overwrite to replace it")
    runs, settings, notes, health, predictions = merge(args.reports)
    title = (args.reports[0] / "results.md").read_text().splitlines()[0].removeprefix("# ")
    with atomic_folder(args.out, args.overwrite) as tmp:
        write_report(runs, tmp, title, notes, settings, health, predictions)


if __name__ == "__main__":
    main()
