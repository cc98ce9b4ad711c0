"""Results tables, paired fold comparisons and plots of the downstream evaluation (SPEC section 6).

The evaluation gives one row per probe run (task, variant, method, probe, fold, seed, test
metric, ...). This module reduces the runs in two steps:

* :func:`fold_scores`: one score per fold, the mean over probe seeds and pretraining replicates.
* :func:`summarise`: mean and standard deviation of the fold scores over folds.

:func:`paired_wins` counts the folds on which a model beats a baseline; :func:`paired_test`
weighs the same difference tile by tile, with a sign-flip test over spatial groups of the test
tiles (from the runs' test predictions), and :func:`holm` adjusts a table's p-values for their
number. :func:`markdown_report`
renders the SPEC results table (rows = models and baselines, columns = tasks, lower is better),
masked variant first, :func:`health_table` adds the collapse indicators of every method's
features, and :func:`write_report` writes the runs, the report, the settings, the health table,
the test predictions and one plot per task (:func:`plot_task`) into a folder, each file
atomically. A learning curve, the same evaluation at several numbers of train tiles per fold
(runs with a :data:`CURVE_COLUMN`), is laid out with each size as a column
(:func:`curve_summary`, :func:`curve_markdown`, :func:`plot_curve`, :func:`write_curve`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from numpy.typing import NDArray

from geojepa.atomic import atomic_file

SUMMARY_KEYS: tuple[str, ...] = ("task", "kind", "variant", "method", "role", "probe")
"""Columns naming one table cell: a probe of one method on one task and variant."""

FOLD_KEYS: tuple[str, ...] = (*SUMMARY_KEYS, "fold")
"""Columns naming one fold score: :data:`SUMMARY_KEYS` and the fold."""

REQUIRED_COLUMNS: tuple[str, ...] = (*FOLD_KEYS, "seed", "metric", "constant")
"""Columns of the runs table this module reads; other columns are carried along."""

VARIANTS: tuple[str, ...] = ("masked", "unmasked")
ROLES: tuple[str, ...] = ("model", "baseline")
DUMMY_PROBE = "dummy"
"""Probe of the Dummy baseline (train median or majority): compared with every probe."""

SECTION_TITLES: dict[str, str] = {
    "masked": "Masked (headline)",
    "unmasked": "Unmasked (label-bearing tags present; not the headline)",
}
CONSTANT_FOOTNOTE = "† k/K: constant prediction on k of K folds — the probe learned nothing."

_Row = tuple[str, str, str]
"""A table row: ``(method, role, probe)``."""


def _check(runs: pd.DataFrame) -> None:
    """Raise ``ValueError`` if ``runs`` lacks a column or has an unknown variant or role."""
    missing = [column for column in REQUIRED_COLUMNS if column not in runs.columns]
    if missing:
        raise ValueError(f"runs lack the columns {', '.join(missing)}")
    for column, allowed in (("variant", VARIANTS), ("role", ROLES)):
        unknown = sorted(set(runs[column]) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {column} {unknown}; expected one of {list(allowed)}")


def fold_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """One score per fold: the mean test metric over the seeds of a probe (and over the
    replicates of a method: independent pretraining runs, column ``replicate``).

    Args:
        runs: One row per probe run (see :data:`REQUIRED_COLUMNS`).

    Returns:
        One row per :data:`FOLD_KEYS`, in order of first appearance, with ``metric`` (mean over
        seeds), ``constant`` (some seed predicted one value on the whole test fold) and ``seeds``
        (number of seeds).

    Raises:
        ValueError: If ``runs`` lacks a column or has an unknown variant or role.
    """
    _check(runs)
    grouped = runs.groupby(list(FOLD_KEYS), sort=False)
    scores = grouped.agg(
        metric=("metric", "mean"), constant=("constant", "any"), seeds=("seed", "nunique")
    )
    return scores.reset_index()


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of the fold scores of every probe of every method, task and variant.

    Args:
        runs: One row per probe run (see :data:`REQUIRED_COLUMNS`).

    Returns:
        One row per :data:`SUMMARY_KEYS`, in order of first appearance, with ``mean`` and ``std``
        (over folds, ``ddof=1``; 0 with one fold) of the fold scores, ``folds`` (number of
        folds), ``seeds`` (number of distinct seeds) and ``constant_folds`` (number of folds on
        which some seed predicted a constant).

    Raises:
        ValueError: If ``runs`` lacks a column or has an unknown variant or role.
    """
    keys = list(SUMMARY_KEYS)
    grouped = fold_scores(runs).groupby(keys, sort=False)
    summary = grouped.agg(
        mean=("metric", "mean"),
        std=("metric", "std"),
        folds=("fold", "nunique"),
        constant_folds=("constant", "sum"),
    ).reset_index()
    summary["std"] = summary["std"].fillna(0.0)
    summary["constant_folds"] = summary["constant_folds"].astype(int)
    seeds = runs.groupby(keys, sort=False)["seed"].nunique().rename("seeds").reset_index()
    summary = summary.merge(seeds, on=keys, how="left")
    return summary[[*keys, "mean", "std", "folds", "seeds", "constant_folds"]]


def _of_probe(frame: pd.DataFrame, task: str, variant: str, method: str, probe: str) -> pd.DataFrame:
    """The rows of ``frame`` (fold scores, tile errors) of one probe of one method."""
    return frame[
        (frame["task"] == task)
        & (frame["variant"] == variant)
        & (frame["method"] == method)
        & (frame["probe"] == probe)
    ]


def _of_other(frame: pd.DataFrame, task: str, variant: str, other: str, probe: str) -> pd.DataFrame:
    """The rows of the method compared with: with the same probe or, if it has none, with the
    Dummy probe (so the Dummy baseline is compared with every probe)."""
    rows = _of_probe(frame, task, variant, other, probe)
    return rows if not rows.empty else _of_probe(frame, task, variant, other, DUMMY_PROBE)


def _fold_series(
    scores: pd.DataFrame, task: str, variant: str, method: str, probe: str
) -> pd.Series:
    """Fold scores of one probe, indexed by fold."""
    return _of_probe(scores, task, variant, method, probe).set_index("fold")["metric"]


def _wins(
    scores: pd.DataFrame, method: str, baseline: str, task: str, variant: str, probe: str
) -> tuple[int, int]:
    """:func:`paired_wins` on precomputed :func:`fold_scores`."""
    mine = _fold_series(scores, task, variant, method, probe)
    theirs = _of_other(scores, task, variant, baseline, probe).set_index("fold")["metric"]
    shared = mine.index.intersection(theirs.index)
    return int((mine[shared] < theirs[shared]).sum()), len(shared)


def paired_wins(
    runs: pd.DataFrame, method: str, baseline: str, task: str, variant: str, probe: str
) -> tuple[int, int]:
    """On how many folds a method's probe scores strictly lower than a baseline.

    Fold scores are means over seeds (:func:`fold_scores`); ties are not wins. The baseline is
    taken with the same probe, or, if it has none, with the Dummy probe (:data:`DUMMY_PROBE`), so
    the Dummy baseline is compared with every probe.

    Args:
        runs: One row per probe run.
        method: The method to test.
        baseline: The method to compare with.
        task: Downstream task.
        variant: ``"masked"`` or ``"unmasked"``.
        probe: Probe of ``method`` (and of ``baseline`` unless it only has the Dummy probe).

    Returns:
        ``(wins, folds)``: the wins and the number of folds both have (``(0, 0)`` if none).

    Raises:
        ValueError: If ``runs`` lacks a column or has an unknown variant or role.
    """
    return _wins(fold_scores(runs), method, baseline, task, variant, probe)


TILE_KEYS: tuple[str, ...] = ("fold", "x", "y", "group")
"""Columns of ``predictions.parquet`` naming one test tile (with its fold and spatial group)."""

PREDICTION_COLUMNS: tuple[str, ...] = (
    "task", "variant", "method", "probe", *TILE_KEYS, "label", "prediction",
)
"""Columns of the predictions table this module reads; other columns are carried along."""

EXACT_GROUPS = 16
"""Up to this many spatial groups the sign-flip test enumerates every sign pattern."""

SIGN_FLIP_DRAWS = 10_000
"""Random sign patterns of the sign-flip test above :data:`EXACT_GROUPS` groups (seed 0)."""


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of two probes on the same test tiles.

    Attributes:
        delta: Mean over folds of the method's fold score minus the other's (negative: the
            method errs less): the difference of the two table means.
        p_value: Two-sided p-value of the sign-flip test over spatial groups.
        groups: Number of spatial groups of the shared test tiles.
    """

    delta: float
    p_value: float
    groups: int


def tile_errors(predictions: pd.DataFrame) -> pd.DataFrame:
    """Every test tile's error per probe: the absolute error (binary: 0/1 error) averaged over
    probe seeds and pretraining replicates.

    Args:
        predictions: One row per test tile of every probe run (see :data:`PREDICTION_COLUMNS`).

    Returns:
        One row per task, variant, method, probe and test tile (:data:`TILE_KEYS`), with
        ``error``. The mean of ``error`` over a fold's tiles is the probe's fold score.

    Raises:
        ValueError: If ``predictions`` lacks a column.
    """
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack the columns {', '.join(missing)}")
    keys = ["task", "variant", "method", "probe", *TILE_KEYS]
    error = (predictions["prediction"] - predictions["label"]).abs()
    return predictions[keys].assign(error=error).groupby(keys, sort=False, as_index=False)["error"].mean()


def sign_flip_p(totals: NDArray[np.float64], draws: int = SIGN_FLIP_DRAWS, seed: int = 0) -> float:
    """Two-sided p-value that a sum of per-group contributions is centred on zero.

    Under the null hypothesis each group's contribution is as likely to have either sign, so
    every pattern of signs is as likely as the one observed: the p-value is the share of sign
    patterns whose sum is at least as far from zero as the observed sum. All ``2**G`` patterns
    up to :data:`EXACT_GROUPS` groups, else ``draws`` random ones (seeded; the observed pattern
    counts once more, so p is never 0).

    Args:
        totals: Every group's contribution to the statistic (their sum is the statistic).
        draws: Random sign patterns above :data:`EXACT_GROUPS` groups.
        seed: Seed of the random sign patterns.

    Returns:
        The p-value, in ``(0, 1]``; 1 when every contribution is 0.
    """
    totals = np.asarray(totals, dtype=np.float64)
    observed = abs(float(totals.sum()))
    tolerance = 1e-9 * float(np.abs(totals).sum())
    if len(totals) <= EXACT_GROUPS:
        patterns = (np.arange(2 ** len(totals))[:, None] >> np.arange(len(totals))) & 1
        sums = np.abs((1 - 2 * patterns) @ totals)
        return float(np.mean(sums >= observed - tolerance))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(draws, len(totals)))
    extreme = int((np.abs(signs @ totals) >= observed - tolerance).sum())
    return (1 + extreme) / (1 + draws)


def holm(p_values: Sequence[float]) -> NDArray[np.float64]:
    """Holm-Bonferroni adjusted p-values of a family of tests.

    The ``i``-th smallest of ``m`` p-values is multiplied by ``m - i + 1`` (``i`` from 1), capped at
    1 and raised to the largest adjusted value before it, so the order is kept. Calling a
    difference sure when its adjusted p is below ``alpha`` keeps the chance that *any* difference
    of the family is wrongly called sure below ``alpha``, whatever the tests' dependence.

    Args:
        p_values: The family's p-values, in any order.

    Returns:
        The adjusted p-values, in the order given.
    """
    values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    scaled = values[order] * np.arange(len(values), 0, -1)
    adjusted = np.empty_like(values)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def _paired_test(
    errors: pd.DataFrame, method: str, other: str, task: str, variant: str, probe: str
) -> PairedTest | None:
    """:func:`paired_test` on precomputed :func:`tile_errors`."""
    mine = _of_probe(errors, task, variant, method, probe)
    theirs = _of_other(errors, task, variant, other, probe)
    both = mine.merge(theirs, on=list(TILE_KEYS), suffixes=("", "_other"))
    if both.empty:
        return None
    per_fold = both.groupby("fold")["fold"].transform("size") * both["fold"].nunique()
    totals = ((both["error"] - both["error_other"]) / per_fold).groupby(both["group"]).sum()
    return PairedTest(float(totals.sum()), sign_flip_p(totals.to_numpy()), len(totals))


def paired_test(
    predictions: pd.DataFrame, method: str, other: str, task: str, variant: str, probe: str
) -> PairedTest | None:
    """How far and how surely a method's probe errs less than another's on the same test tiles.

    The statistic is the mean over folds of the fold score difference (the difference of the
    two table means), written as a sum over spatial groups of each group's tile-error
    differences (weighted by one over its fold's tile count and the number of folds). The
    sign-flip test (:func:`sign_flip_p`) keeps or flips each group's sum as one, so tiles near
    each other are not counted as independent evidence. It measures how sure the difference is
    given these test places and these fitted probes, not over pretraining or probe seeds. The
    other method is taken with the same probe, or, if it has none, with the Dummy probe.

    Args:
        predictions: One row per test tile of every probe run (see :data:`PREDICTION_COLUMNS`).
        method: The method to test.
        other: The method to compare with.
        task: Downstream task.
        variant: ``"masked"`` or ``"unmasked"``.
        probe: Probe of ``method`` (and of ``other`` unless it only has the Dummy probe).

    Returns:
        The test, or None when the two share no test tile.

    Raises:
        ValueError: If ``predictions`` lacks a column.
    """
    return _paired_test(tile_errors(predictions), method, other, task, variant, probe)


def _ordered_rows(summary: pd.DataFrame) -> list[_Row]:
    """Distinct ``(method, role, probe)`` of ``summary``: models first, else first appearance."""
    rows = list(
        dict.fromkeys(zip(summary["method"], summary["role"], summary["probe"], strict=True))
    )
    return sorted(rows, key=lambda row: row[1] != "model")


def _label(method: str, probe: str) -> str:
    """Row label: the method with its probe in brackets, the Dummy probe left out."""
    return method if probe == DUMMY_PROBE else f"{method} ({probe})"


def _decimals(value: float) -> int:
    """Decimals that show ``value`` with three significant digits (between 0 and 6)."""
    if value == 0 or not math.isfinite(value):
        return 3
    return min(max(2 - math.floor(math.log10(abs(value))), 0), 6)


def _format(mean: float, std: float) -> str:
    """``mean ± std`` with three significant digits of the mean and as many decimals for std."""
    decimals = _decimals(mean)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _scores_table(summary: pd.DataFrame, tasks: Sequence[str]) -> list[str]:
    """Lines of the results table of one variant, with the constant-prediction footnote."""
    rows = _ordered_rows(summary)
    cells = {
        (entry.method, entry.role, entry.probe, entry.task): entry
        for entry in summary.itertuples(index=False)
    }
    best = summary.groupby("task")["mean"].min()
    body: list[list[str]] = []
    marked = False
    for method, role, probe in rows:
        line = [_label(method, probe)]
        for task in tasks:
            entry = cells.get((method, role, probe, task))
            if entry is None:
                line.append("—")
                continue
            text = _format(entry.mean, entry.std)
            if entry.mean == best[task]:
                text = f"**{text}**"
            if entry.constant_folds and probe != DUMMY_PROBE:
                text += f" †{entry.constant_folds}/{entry.folds}"
                marked = True
            line.append(text)
        body.append(line)
    lines = _table(["model", *tasks], body)
    return [*lines, "", CONSTANT_FOOTNOTE] if marked else lines


def _pairs(summary: pd.DataFrame, tasks: Sequence[str]) -> list[tuple[str, str, list[list[str] | None]]]:
    """Every comparison of a table of one variant: per model row ``(method, probe)``, per task
    the other models with the same probe (for example images against no images), then the
    baselines with that probe or Dummy; None where the row has no run of the task."""
    rows: list[tuple[str, str, list[list[str] | None]]] = []
    for method, _, probe in _ordered_rows(summary[summary["role"] == "model"]):
        per_task: list[list[str] | None] = []
        for task in tasks:
            in_task = summary[summary["task"] == task]
            if not ((in_task["method"] == method) & (in_task["probe"] == probe)).any():
                per_task.append(None)
                continue
            models = in_task[
                (in_task["role"] == "model")
                & (in_task["probe"] == probe)
                & (in_task["method"] != method)
            ]
            baselines = in_task[
                (in_task["role"] == "baseline") & in_task["probe"].isin([probe, DUMMY_PROBE])
            ]
            per_task.append(list(dict.fromkeys([*models["method"], *baselines["method"]])))
        rows.append((method, probe, per_task))
    return rows


def _pairs_table(
    summary: pd.DataFrame, tasks: Sequence[str], cell: Callable[[str, str, str, str], str]
) -> list[str]:
    """Lines of a table of one variant with every comparison of :func:`_pairs`; ``cell(method,
    other, task, probe)`` writes one."""
    body: list[list[str]] = []
    for method, probe, per_task in _pairs(summary, tasks):
        line = [_label(method, probe)]
        for task, others in zip(tasks, per_task, strict=True):
            if others is None:
                line.append("—")
                continue
            parts = [f"vs {other} {cell(method, other, task, probe)}" for other in others]
            line.append(" · ".join(parts) if parts else "—")
        body.append(line)
    return _table(["model", *tasks], body)


_Layout = Callable[[pd.DataFrame, Sequence[str], Callable[[str, str, str, str], str]], list[str]]
"""A table of every comparison: :func:`_pairs_table` or :func:`_against_table`."""


def _wins_table(
    summary: pd.DataFrame, scores: pd.DataFrame, variant: str, tasks: Sequence[str],
    layout: _Layout = _pairs_table,
) -> list[str]:
    """Lines of the paired-wins table of one variant (by default :func:`_pairs_table`)."""

    def cell(method: str, other: str, task: str, probe: str) -> str:
        wins, folds = _wins(scores, method, other, task, variant, probe)
        return f"{wins}/{folds}"

    return layout(summary, tasks, cell)


def _tests_table(
    summary: pd.DataFrame, errors: pd.DataFrame, variant: str, tasks: Sequence[str],
    layout: _Layout = _pairs_table,
) -> list[str]:
    """Lines of the paired-tests table of one variant (by default :func:`_pairs_table`), each p
    with its :func:`holm` adjustment over the distinct tests of the table (two models compared
    both ways are one test)."""
    tests = {
        (method, other, task, probe): _paired_test(errors, method, other, task, variant, probe)
        for method, probe, per_task in _pairs(summary, tasks)
        for task, others in zip(tasks, per_task, strict=True)
        for other in others or []
    }

    def pair(key: tuple[str, str, str, str]) -> tuple[frozenset[str], str, str]:
        method, other, task, probe = key
        return frozenset((method, other)), task, probe

    family = {pair(key): test.p_value for key, test in tests.items() if test is not None}
    adjusted = dict(zip(family, holm(list(family.values())), strict=True))

    def cell(method: str, other: str, task: str, probe: str) -> str:
        key = (method, other, task, probe)
        test = tests[key]
        if test is None:
            return "—"
        return (f"{test.delta:+.{_decimals(test.delta)}f} (p {test.p_value:.2g},"
                f" Holm {adjusted[pair(key)]:.2g})")

    return layout(summary, tasks, cell)


def _against_table(
    summary: pd.DataFrame, columns: Sequence[str], cell: Callable[[str, str, str, str], str]
) -> list[str]:
    """Lines of a table with a row per model, probe and other model or baseline it is compared
    with (:func:`_pairs`) and a column per entry of ``columns`` (a learning curve's sizes);
    ``cell(method, other, column, probe)`` writes one."""
    body: list[list[str]] = []
    for method, probe, per_column in _pairs(summary, columns):
        for other in dict.fromkeys(other for listed in per_column for other in listed or []):
            line = [_label(method, probe), other]
            for column, listed in zip(columns, per_column, strict=True):
                line.append(cell(method, other, column, probe) if listed and other in listed else "—")
            body.append(line)
    return _table(["model", "against", *columns], body)


def _replicates_table(runs: pd.DataFrame, variant: str, tasks: Sequence[str]) -> list[str]:
    """Lines of the per-replicate table of one variant, or none when no method has replicates.

    One row per replicate of every method with several (column ``replicate``: independent
    pretraining runs, and the random initialisations paired with them), in replicate order;
    cells are the mean test metric over folds and seeds.
    """
    if "replicate" not in runs.columns:
        return []
    runs = runs[runs["variant"] == variant]
    counts = runs.groupby("method", sort=False)["replicate"].nunique()
    several = runs[runs["method"].isin(counts[counts > 1].index)]
    if several.empty:
        return []
    means = several.groupby(["method", "probe", "replicate", "task"], sort=False)["metric"].mean()
    order = {method: i for i, method in enumerate(counts.index)}
    rows = sorted({key[:3] for key in means.index}, key=lambda r: (order[r[0]], r[1], r[2]))
    body = []
    for method, probe, replicate in rows:
        cells = []
        for task in tasks:
            value = means.get((method, probe, replicate, task))
            cells.append("—" if value is None else f"{value:.{_decimals(value)}f}")
        body.append([_label(method, probe), str(replicate), *cells])
    return _table(["model", "replicate", *tasks], body)


def markdown_report(
    runs: pd.DataFrame,
    title: str,
    notes: Sequence[str],
    health: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
) -> str:
    """The results report: a table of mean ± std per variant (masked first) and paired wins.

    Rows are ``(method, probe)``, models before baselines; columns are the tasks in order of
    first appearance. Cells show three significant digits of the mean; the lowest mean of each
    column is bold. A probe that predicted a constant on ``k`` of its ``K`` folds is marked
    ``†k/K`` (not the Dummy baseline, constant by design). The unmasked section appears only if
    there are unmasked runs; a variant without models has no paired-wins table.

    Args:
        runs: One row per probe run.
        title: Report title.
        notes: Lines listed under the title (protocol, transductive pretraining, ...).
        health: Optional embedding health (:func:`health_table`), appended as a last section.
        predictions: Optional test predictions of the runs (see :data:`PREDICTION_COLUMNS`):
            adds a paired-tests table (:func:`paired_test`, each p also adjusted with
            :func:`holm` over the table) after each paired-wins table.

    Returns:
        The report as Markdown text, ending with a newline.

    Raises:
        ValueError: If ``runs`` is empty, lacks a column or has an unknown variant or role, or
            ``predictions`` lacks a column.
    """
    if runs.empty:
        raise ValueError("no runs to report")
    scores = fold_scores(runs)
    summary = summarise(runs)
    errors = None if predictions is None else tile_errors(predictions)
    tasks = list(dict.fromkeys(runs["task"]))
    binary = [task for task in tasks if (runs.loc[runs["task"] == task, "kind"] == "binary").any()]
    named = f" ({', '.join(binary)})" if binary else ""
    lines = [f"# {title}", "", *(f"- {note}" for note in notes)]
    lines += [
        "",
        (
            f"Test MAE (lower is better); binary tasks{named}: error rate. Cells: mean ± std over"
            " folds of the fold score (mean over probe seeds and pretraining replicates);"
            " **bold**: best in the column."
        ),
    ]
    for variant in VARIANTS:
        in_variant = summary[summary["variant"] == variant]
        if in_variant.empty:
            continue
        lines += ["", f"## {SECTION_TITLES[variant]}", ""]
        lines += _scores_table(in_variant, tasks)
        if not (in_variant["role"] == "model").any():
            continue
        lines += [
            "",
            "### Paired wins",
            "",
            (
                "Folds on which the model scores strictly lower than the other model or baseline"
                " (ties are not wins) / folds both have; other models and baselines with the same"
                " probe, and Dummy."
            ),
            "",
        ]
        lines += _wins_table(in_variant, scores, variant, tasks)
        if errors is not None:
            groups = errors.loc[errors["variant"] == variant, "group"].nunique()
            lines += ["", "### Paired tests", "", _tests_text(groups), "",
                      *_tests_table(in_variant, errors, variant, tasks)]
        replicates = _replicates_table(runs, variant, tasks)
        if replicates:
            lines += [
                "",
                "### Replicates",
                "",
                (
                    "Mean over folds of each pretraining replicate (`replicate` in `runs.csv`,"
                    " in the order given) and of the random initialisation it started from: the"
                    " spread between replicates is training-seed noise."
                ),
                "",
                *replicates,
            ]
    if health is not None and not health.empty:
        lines += ["", *health_table(health)]
    return "\n".join(lines) + "\n"


def _tests_text(groups: int) -> str:
    """The explanation above a paired-tests table of a variant whose test tiles lie in
    ``groups`` spatial groups."""
    exact = groups <= EXACT_GROUPS
    return (
        "Δ: the model's mean minus the other's (negative: the model errs less), as in the table"
        " above; p: two-sided sign-flip test over the"
        f" {groups} spatial groups of the test tiles (`group` in `predictions.parquet`): each"
        " group's tile-error differences (mean over probe seeds and replicates) keep or flip"
        " their sign together, "
        + (f"over all {2 ** groups:,} sign patterns (the smallest p possible is"
           f" {2 / 2 ** groups:.2g})" if exact else f"over {SIGN_FLIP_DRAWS:,} random sign"
           f" patterns (the smallest p possible is {1 / (SIGN_FLIP_DRAWS + 1):.2g})")
        + ". It weighs how sure the difference is over these test places for these fitted probes,"
        " not over pretraining or probe seeds. Holm: p adjusted (Holm-Bonferroni) for all the"
        " comparisons of this table (two models compared both ways count once); differences"
        " with Holm below 0.05 are sure at 5% together, where among many raw p-values some fall"
        " below 0.05 by chance."
    )


def health_table(health: pd.DataFrame) -> list[str]:
    """Markdown lines of the embedding health section: one row per method.

    Args:
        health: One row per method and input, with columns ``method``, ``input``, ``dims``,
            ``effective_rank`` and ``mean_cosine`` (:func:`geojepa.features.embedding_health`);
            the ``unmasked`` input is shown where present, else each method's first input; rows
            of several replicates of a method (column ``replicate``) are averaged.

    Returns:
        The section's lines.
    """
    order = list(dict.fromkeys(health["method"]))
    numbers = ["dims", "effective_rank", "mean_cosine"]
    means = health.groupby(["method", "input"], sort=False)[numbers].mean().reset_index()
    later = means["input"] != "unmasked"
    preferred = means.assign(_later=later).sort_values("_later", kind="stable")
    rows = preferred.drop_duplicates("method").set_index("method").loc[order]
    lines = [
        "## Embedding health",
        "",
        ("Collapse indicators of each method's tile features (probes standardise features, so a"
         " collapsed embedding can still probe well; cosine nearest-neighbour search cannot)."
         " Effective rank: exp of the entropy of the centred features' singular values (1 ="
         " one direction); mean cosine: over pairs of tiles (1 = all alike). All inputs:"
         " `health.csv`."),
        "",
    ]
    body = [[str(method), str(row["input"]), f"{int(row['dims'])}", f"{row['effective_rank']:.1f}",
             f"{row['mean_cosine']:.3f}"] for method, row in rows.iterrows()]
    return lines + _table(["method", "input", "dims", "effective rank", "mean cosine"], body)


def _plotted(runs: pd.DataFrame, task: str) -> tuple[pd.DataFrame, str]:
    """The runs of the task a plot shows, and its metric's name; ValueError if it has none."""
    runs = runs[runs["task"] == task]
    if runs.empty:
        raise ValueError(f"no runs of task {task!r}")
    return runs, "test error rate" if (runs["kind"] == "binary").any() else "test MAE"


def plot_task(runs: pd.DataFrame, task: str, path: Path) -> None:
    """Plot the fold scores of every probe on one task, one panel per variant, as a PNG.

    Each row is a ``(method, probe)``: its fold scores as jittered points and the mean with a
    ±std bar; a dashed line marks the Dummy mean. Needs no display.

    Args:
        runs: One row per probe run.
        task: The task to plot.
        path: Output PNG file (written as PNG whatever its suffix).

    Raises:
        ValueError: If there are no runs of ``task``, or ``runs`` lacks a column or has an
            unknown variant or role.
    """
    runs, metric = _plotted(runs, task)
    scores = fold_scores(runs)
    summary = summarise(runs)
    variants = [variant for variant in VARIANTS if (summary["variant"] == variant).any()]
    height = max(len(_ordered_rows(summary[summary["variant"] == v])) for v in variants)
    figure = Figure(figsize=(6.0 * len(variants), 1.2 + 0.45 * height), layout="constrained")
    axes = figure.subplots(1, len(variants), squeeze=False)[0]
    jitter = np.random.default_rng(0)
    for ax, variant in zip(axes, variants, strict=True):
        in_variant = summary[summary["variant"] == variant]
        rows = _ordered_rows(in_variant)
        for y, (method, role, probe) in enumerate(rows):
            entry = in_variant[(in_variant["method"] == method) & (in_variant["probe"] == probe)]
            folds = _fold_series(scores, task, variant, method, probe)
            colour = "grey" if probe == DUMMY_PROBE else "C0" if role == "model" else "C1"
            offsets = jitter.uniform(-0.15, 0.15, len(folds))
            ax.scatter(folds.to_numpy(), y + offsets, s=16, alpha=0.6, color=colour, linewidths=0)
            mean, std = float(entry["mean"].iloc[0]), float(entry["std"].iloc[0])
            ax.errorbar(mean, y, xerr=std, fmt="D", color=colour, markersize=5, capsize=3)
            if probe == DUMMY_PROBE:
                ax.axvline(mean, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)), [_label(method, probe) for method, _, probe in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel(f"{metric} (lower is better)")
        ax.set_title(variant)
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{task}: {metric}")
    figure.savefig(path, format="png", dpi=120)


def write_report(
    runs: pd.DataFrame,
    out_dir: Path,
    title: str,
    notes: Sequence[str],
    settings: dict[str, Any],
    health: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write the runs, the Markdown report, the settings and one plot per task into a folder.

    Files: ``runs.csv``, ``results.md`` (:func:`markdown_report`), ``settings.json`` (sorted
    keys, indent 2; values JSON cannot hold, such as paths, as strings) and ``plot_<task>.png``
    (:func:`plot_task`), ``health.csv`` when ``health`` is given and ``predictions.parquet``
    when ``predictions`` is. Each is written under a
    temporary name in ``out_dir`` and renamed when complete, so a reader never sees a partial
    file.

    Args:
        runs: One row per probe run.
        out_dir: Output folder, created if missing.
        title: Report title.
        notes: Lines listed under the title.
        settings: Evaluation settings to record.
        health: Embedding health per method and input (:func:`health_table`).
        predictions: Test predictions of the runs (:func:`markdown_report`).

    Returns:
        The written paths by file stem: ``runs``, ``results``, ``settings``, ``plot_<task>``,
        ``health`` and ``predictions``.

    Raises:
        ValueError: If ``runs`` is empty, lacks a column or has an unknown variant or role, or
            ``predictions`` lacks a column.
    """
    markdown = markdown_report(runs, title, notes, health, predictions)
    settings_text = json.dumps(settings, sort_keys=True, indent=2, default=str) + "\n"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "runs": out_dir / "runs.csv",
        "results": out_dir / "results.md",
        "settings": out_dir / "settings.json",
    }
    atomic_file(paths["runs"], lambda tmp: runs.to_csv(tmp, index=False))
    atomic_file(paths["results"], lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    atomic_file(paths["settings"], lambda tmp: tmp.write_text(settings_text, encoding="utf-8"))
    if health is not None:
        paths["health"] = out_dir / "health.csv"
        atomic_file(paths["health"], lambda tmp: health.to_csv(tmp, index=False))
    if predictions is not None:
        paths["predictions"] = out_dir / "predictions.parquet"
        atomic_file(paths["predictions"], lambda tmp: predictions.to_parquet(tmp, index=False))
    for task in dict.fromkeys(runs["task"]):
        path = paths[f"plot_{task}"] = out_dir / f"plot_{task}.png"
        atomic_file(path, lambda tmp, task=task: plot_task(runs, task, tmp))
    return paths


CURVE_COLUMN = "train_tiles"
"""Column of a learning curve's runs naming the train tiles per fold each run was fitted on
(``"10"``, ``"all"``); the runs also need ``n_train``, the train tiles of each fold."""


CURVE_TESTS_TEXT = (
    "Paired tests: Δ, the model's mean minus the other's (negative: the model errs less); p, the"
    " two-sided sign-flip test over the spatial groups of the test tiles; Holm, p adjusted for"
    " every comparison and size of this table (each size's `results.md` explains the test and"
    " adjusts over its own table).")
"""The explanation above a learning curve's paired-tests table."""


def _size_headers(runs: pd.DataFrame) -> dict[str, str]:
    """Each size of a learning curve's runs -> its column header, with the train tiles its
    folds fitted (fewer than the size where a fold had fewer)."""
    headers = {}
    for size, rows in runs.groupby(CURVE_COLUMN, sort=False):
        low, high = int(rows["n_train"].min()), int(rows["n_train"].max())
        tiles = f"{low}" if low == high else f"{low}-{high}"
        if size == "all":
            headers[size] = f"all ({tiles} tiles)"
        else:
            headers[str(size)] = f"{tiles} tiles" if low == high else f"≤{size} ({tiles} tiles)"
    return headers


def _by_size(rows: pd.DataFrame, task: str, headers: dict[str, str]) -> pd.DataFrame:
    """A learning curve's runs (or predictions) of one task with each row's size header
    (:func:`_size_headers`) in place of its task, so the report's tables lay the sizes out as
    they lay out tasks."""
    rows = rows[rows["task"] == task]
    return rows.assign(task=rows[CURVE_COLUMN].astype(str).map(headers))


def _check_curve(runs: pd.DataFrame) -> None:
    """Raise ``ValueError`` if a learning curve's runs lack its columns."""
    missing = [column for column in (CURVE_COLUMN, "n_train") if column not in runs.columns]
    if missing:
        raise ValueError(f"runs lack the columns {', '.join(missing)}")


def curve_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over folds at every size of a learning curve.

    Args:
        runs: One row per probe run, with :data:`CURVE_COLUMN` and ``n_train``.

    Returns:
        :func:`summarise` of each size in turn (in order of first appearance; the size in
        column :data:`CURVE_COLUMN`), with ``n_train``, the mean train tiles per fold.

    Raises:
        ValueError: If ``runs`` lacks a column or has an unknown variant or role.
    """
    _check_curve(runs)
    parts = []
    for size, rows in runs.groupby(CURVE_COLUMN, sort=False):
        tiles = rows.groupby("fold")["n_train"].first().mean()
        parts.append(summarise(rows).assign(**{CURVE_COLUMN: size, "n_train": tiles}))
    summary = pd.concat(parts, ignore_index=True)
    return summary[[*SUMMARY_KEYS, CURVE_COLUMN, "n_train", "mean", "std", "folds", "seeds", "constant_folds"]]


def curve_markdown(runs: pd.DataFrame, title: str, notes: Sequence[str],
                   predictions: pd.DataFrame | None = None) -> str:
    """The learning curve's report: per variant (masked first) and task, the mean ± std of
    every method and probe at each size, and each model's paired wins over the others.

    Args:
        runs: One row per probe run, with :data:`CURVE_COLUMN` and ``n_train``.
        title: Report title.
        notes: Lines listed under the title.
        predictions: Optional test predictions of the runs, with :data:`CURVE_COLUMN`: adds,
            per task, the paired tests (:func:`paired_test`) at every size, each p also adjusted
            with :func:`holm` over that task's table.

    Returns:
        The report as Markdown text, ending with a newline.

    Raises:
        ValueError: If ``runs`` is empty, lacks a column or has an unknown variant or role, or
            ``predictions`` lacks a column.
    """
    if runs.empty:
        raise ValueError("no runs to report")
    _check_curve(runs)
    lines = [f"# {title}", "", *(f"- {note}" for note in notes), "",
             ("Columns: train tiles per fold. Cells: mean ± std over folds of the test MAE (binary "
              "tasks: error rate; lower is better) of the fold score (mean over probe seeds and "
              "pretraining replicates); **bold**: best in the column. Paired wins: folds on which "
              "the model scores strictly lower than the other model or baseline / folds both have.")]
    for variant in VARIANTS:
        in_variant = runs[runs["variant"] == variant]
        if in_variant.empty:
            continue
        lines += ["", f"## {SECTION_TITLES[variant]}"]
        for task in dict.fromkeys(in_variant["task"]):
            headers = _size_headers(in_variant[in_variant["task"] == task])
            sized = _by_size(in_variant, task, headers)
            summary = summarise(sized)
            columns = list(dict.fromkeys(sized["task"]))
            metric = "error rate" if (sized["kind"] == "binary").any() else "MAE"
            lines += ["", f"### {task}: test {metric}", "", *_scores_table(summary, columns)]
            if not (summary["role"] == "model").any():
                continue
            lines += ["", "Paired wins:", "",
                      *_wins_table(summary, fold_scores(sized), variant, columns, _against_table)]
            if predictions is not None:
                errors = tile_errors(_by_size(predictions, task, headers))
                lines += ["", CURVE_TESTS_TEXT, "",
                          *_tests_table(summary, errors, variant, columns, _against_table)]
    return "\n".join(lines) + "\n"


def plot_curve(runs: pd.DataFrame, task: str, path: Path) -> None:
    """Plot the learning curve of one task, one panel per variant, as a PNG: the mean test
    score of every method and probe against the mean train tiles per fold (log scale); Dummy
    dashed grey, baselines dotted. Needs no display.

    Args:
        runs: One row per probe run, with :data:`CURVE_COLUMN` and ``n_train``.
        task: The task to plot.
        path: Output PNG file (written as PNG whatever its suffix).

    Raises:
        ValueError: If there are no runs of ``task``, or ``runs`` lacks a column or has an
            unknown variant or role.
    """
    runs, metric = _plotted(runs, task)
    summary = curve_summary(runs)
    variants = [variant for variant in VARIANTS if (summary["variant"] == variant).any()]
    figure = Figure(figsize=(6.0 * len(variants), 4.5), layout="constrained")
    axes = figure.subplots(1, len(variants), squeeze=False)[0]
    for ax, variant in zip(axes, variants, strict=True):
        in_variant = summary[summary["variant"] == variant]
        for i, (method, role, probe) in enumerate(_ordered_rows(in_variant)):
            line = in_variant[(in_variant["method"] == method) & (in_variant["probe"] == probe)]
            colour, style = ("grey", "--") if probe == DUMMY_PROBE else (f"C{i % 10}", "-" if role == "model" else ":")
            ax.plot(line["n_train"], line["mean"], marker="o", color=colour, linestyle=style,
                    label=_label(method, probe))
        ax.set_xscale("log")
        ticks = sorted(set(in_variant["n_train"]))
        ax.set_xticks(ticks, [f"{tick:.0f}" for tick in ticks])
        ax.minorticks_off()
        ax.set_xlabel("train tiles per fold (mean)")
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.set_title(variant)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(f"{task}: learning curve")
    figure.savefig(path, format="png", dpi=120)


def write_curve(
    runs: pd.DataFrame, out_dir: Path, title: str, notes: Sequence[str], settings: dict[str, Any],
    predictions: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write a learning curve into a folder, each file atomically: ``learning_curve.md``
    (:func:`curve_markdown`), ``learning_curve.csv`` (:func:`curve_summary`), ``settings.json``
    and ``learning_curve_<task>.png`` (:func:`plot_curve`).

    Args:
        runs: One row per probe run, with :data:`CURVE_COLUMN` and ``n_train``.
        out_dir: Output folder, created if missing.
        title: Report title.
        notes: Lines listed under the title.
        settings: Settings to record.
        predictions: Optional test predictions of the runs (:func:`curve_markdown`).

    Returns:
        The written paths by file name.

    Raises:
        ValueError: If ``runs`` is empty, lacks a column or has an unknown variant or role.
    """
    markdown = curve_markdown(runs, title, notes, predictions)
    summary = curve_summary(runs)
    settings_text = json.dumps(settings, sort_keys=True, indent=2, default=str) + "\n"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("learning_curve.md", "learning_curve.csv", "settings.json")}
    atomic_file(paths["learning_curve.md"], lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    atomic_file(paths["learning_curve.csv"], lambda tmp: summary.to_csv(tmp, index=False))
    atomic_file(paths["settings.json"], lambda tmp: tmp.write_text(settings_text, encoding="utf-8"))
    for task in dict.fromkeys(runs["task"]):
        path = paths[f"learning_curve_{task}.png"] = out_dir / f"learning_curve_{task}.png"
        atomic_file(path, lambda tmp, task=task: plot_curve(runs, task, tmp))
    return paths
