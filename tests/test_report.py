"""Fold scores, summaries, paired wins, the Markdown report and the plots on hand-made runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geojepa.report import (
    CURVE_COLUMN,
    SIGN_FLIP_DRAWS,
    curve_markdown,
    curve_summary,
    fold_scores,
    holm,
    markdown_report,
    paired_test,
    paired_wins,
    plot_task,
    sign_flip_p,
    summarise,
    write_curve,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOTES = ("Pretraining saw the test tiles' inputs (never their labels): transductive.", "3 folds")

# (task, variant, method, role, probe) -> per fold, per seed: metric, or (metric, constant).
PLAN: dict[tuple[str, str, str, str, str], list[list[float | tuple[float, bool]]]] = {
    ("building_count", "masked", "Dummy", "baseline", "dummy"): [[30.0], [32.0], [34.0]],
    ("building_count", "masked", "GeoJEPA-T", "model", "linear"): [[20.0], [25.0], [30.0]],
    ("building_count", "masked", "GeoJEPA-T", "model", "mlp"): [
        [10.0, 12.0],
        [14.0, 16.0],
        [18.0, 20.0],
    ],
    ("building_count", "masked", "TagPool", "baseline", "linear"): [[21.0], [25.0], [29.0]],
    # TagPool's MLP lacks fold 2.
    ("building_count", "masked", "TagPool", "baseline", "mlp"): [[15.0, 15.0], [17.0, 17.0]],
    ("bridge", "masked", "Dummy", "baseline", "dummy"): [[(0.3, True)]] * 3,
    ("bridge", "masked", "GeoJEPA-T", "model", "linear"): [[0.2], [0.25], [0.15]],
    ("bridge", "masked", "GeoJEPA-T", "model", "mlp"): [[0.1, 0.2], [0.3, (0.3, True)], [0.2, 0.2]],
    ("bridge", "masked", "TagPool", "baseline", "linear"): [[0.25], [0.25], [0.25]],
    ("building_count", "unmasked", "GeoJEPA-T", "model", "linear"): [[5.0], [6.0], [7.0]],
}


def make_runs(plan: dict = PLAN) -> pd.DataFrame:
    """One row per planned run, with every column the evaluation writes."""
    rows = []
    for (task, variant, method, role, probe), folds in plan.items():
        for fold, seeds in enumerate(folds):
            for seed, value in enumerate(seeds):
                metric, constant = value if isinstance(value, tuple) else (value, False)
                rows.append(
                    {
                        "task": task,
                        "kind": "binary" if task == "bridge" else "regression",
                        "variant": variant,
                        "method": method,
                        "role": role,
                        "probe": probe,
                        "fold": fold,
                        "seed": seed,
                        "metric": metric,
                        "val_metric": metric + 1.0,
                        "constant": constant,
                        "n_train": 80,
                        "n_val": 10,
                        "n_test": 10,
                        "selected": "epoch=3",
                    }
                )
    return pd.DataFrame(rows)


def select(frame: pd.DataFrame, **values: object) -> pd.DataFrame:
    """Rows of ``frame`` whose columns equal ``values``."""
    mask = pd.Series(True, index=frame.index)
    for column, value in values.items():
        mask &= frame[column] == value
    return frame[mask]


def test_fold_scores_average_seeds_and_flag_constant_folds() -> None:
    scores = fold_scores(make_runs())
    assert len(scores) == sum(len(folds) for folds in PLAN.values())
    mlp = select(scores, task="building_count", variant="masked", method="GeoJEPA-T", probe="mlp")
    assert mlp["fold"].tolist() == [0, 1, 2]
    assert mlp["metric"].tolist() == pytest.approx([11.0, 15.0, 19.0])
    assert mlp["seeds"].tolist() == [2, 2, 2]
    bridge = select(scores, task="bridge", method="GeoJEPA-T", probe="mlp")
    assert bridge["metric"].tolist() == pytest.approx([0.15, 0.3, 0.2])
    assert bridge["constant"].tolist() == [False, True, False]
    assert list(dict.fromkeys(scores["task"])) == ["building_count", "bridge"]


def test_summarise_mean_std_and_counts() -> None:
    summary = summarise(make_runs())
    assert len(summary) == len(PLAN)
    row = select(summary, task="building_count", method="GeoJEPA-T", probe="mlp").iloc[0]
    assert (row["mean"], row["std"]) == pytest.approx((15.0, 4.0))
    assert (row["folds"], row["seeds"], row["constant_folds"]) == (3, 2, 0)
    row = select(summary, task="building_count", method="TagPool", probe="mlp").iloc[0]
    assert (row["mean"], row["std"], row["folds"]) == pytest.approx((16.0, math.sqrt(2.0), 2))
    row = select(summary, task="bridge", method="GeoJEPA-T", probe="mlp").iloc[0]
    mean = (0.15 + 0.3 + 0.2) / 3
    std = math.sqrt(((0.15 - mean) ** 2 + (0.3 - mean) ** 2 + (0.2 - mean) ** 2) / 2)
    assert (row["mean"], row["std"]) == pytest.approx((mean, std))
    assert row["constant_folds"] == 1
    one_fold = summarise(make_runs()[lambda frame: frame["fold"] == 0])
    assert (one_fold["std"] == 0.0).all()
    assert (one_fold["folds"] == 1).all()


def test_paired_wins_count_strict_wins_on_shared_folds() -> None:
    runs = make_runs()

    def wins(baseline: str, task: str, probe: str, variant: str = "masked") -> tuple[int, int]:
        return paired_wins(runs, "GeoJEPA-T", baseline, task, variant, probe)

    # 20 < 21, 25 = 25 (a tie is no win), 30 > 29.
    assert wins("TagPool", "building_count", "linear") == (1, 3)
    # TagPool's MLP has folds 0 and 1 only: 11 < 15, 15 < 17.
    assert wins("TagPool", "building_count", "mlp") == (2, 2)
    # Dummy (probe "dummy") is compared with any probe: 0.15 < 0.3, 0.3 = 0.3, 0.2 < 0.3.
    assert wins("Dummy", "bridge", "mlp") == (2, 3)
    assert wins("Dummy", "building_count", "linear") == (3, 3)
    # No TagPool MLP on bridge, no unmasked baseline at all.
    assert wins("TagPool", "bridge", "mlp") == (0, 0)
    assert wins("Dummy", "building_count", "linear", variant="unmasked") == (0, 0)


def table_row(markdown: str, label: str, start: int = 0) -> list[str]:
    """Cells of the first table row labelled ``label`` at or after character ``start``."""
    line = next(line for line in markdown[start:].splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_markdown_cells_bold_best_constant_marker_and_sections() -> None:
    markdown = markdown_report(make_runs(), "GeoJEPA eval", NOTES)
    lines = markdown.splitlines()
    assert lines[0] == "# GeoJEPA eval"
    assert f"- {NOTES[0]}" in lines and f"- {NOTES[1]}" in lines
    assert "Test MAE (lower is better); binary tasks (bridge): error rate." in markdown
    masked = markdown.index("## Masked (headline)")
    unmasked = markdown.index("## Unmasked (label-bearing tags present; not the headline)")
    assert masked < unmasked
    assert "| model | building_count | bridge |" in lines
    section = markdown[masked:unmasked]
    assert table_row(section, "GeoJEPA-T (linear)") == ["25.0 ± 5.0", "**0.200 ± 0.050**"]
    assert table_row(section, "GeoJEPA-T (mlp)") == ["**15.0 ± 4.0**", "0.217 ± 0.076 †1/3"]
    assert table_row(section, "TagPool (mlp)") == ["16.0 ± 1.4", "—"]
    # The Dummy is constant by design: no marker.
    assert table_row(section, "Dummy") == ["32.0 ± 2.0", "0.300 ± 0.000"]
    assert "† k/K: constant prediction on k of K folds — the probe learned nothing." in section
    # Models before baselines, although the Dummy runs come first.
    assert section.index("| GeoJEPA-T (mlp) |") < section.index("| Dummy |")
    wins = section.index("### Paired wins")
    assert table_row(section, "GeoJEPA-T (linear)", wins) == [
        "vs Dummy 3/3 · vs TagPool 1/3",
        "vs Dummy 3/3 · vs TagPool 2/3",
    ]
    assert table_row(section, "GeoJEPA-T (mlp)", wins) == [
        "vs Dummy 3/3 · vs TagPool 2/2",
        "vs Dummy 2/3",
    ]
    assert "| TagPool (linear) |" not in section[wins:]
    rest = markdown[unmasked:]
    assert table_row(rest, "GeoJEPA-T (linear)") == ["**6.00 ± 1.00**", "—"]
    assert table_row(rest, "GeoJEPA-T (linear)", rest.index("### Paired wins")) == ["—", "—"]
    assert markdown.endswith("\n")


def test_models_are_compared_with_each_other_before_the_baselines() -> None:
    # Images against no images: the comparison of two pretrained models.
    plan = {
        ("building_count", "masked", "Dummy", "baseline", "dummy"): [[30.0], [32.0], [34.0]],
        ("building_count", "masked", "GeoJEPA-GT", "model", "linear"): [[20.0], [25.0], [30.0]],
        ("building_count", "masked", "GeoJEPA-GTI", "model", "linear"): [[18.0], [26.0], [29.0]],
        ("building_count", "masked", "GeoJEPA-GTI", "model", "mlp"): [[10.0], [11.0], [12.0]],
    }
    markdown = markdown_report(make_runs(plan), "t", NOTES)
    wins = markdown.index("### Paired wins")
    assert table_row(markdown, "GeoJEPA-GTI (linear)", wins) == [
        "vs GeoJEPA-GT 2/3 · vs Dummy 3/3"
    ]
    assert table_row(markdown, "GeoJEPA-GT (linear)", wins) == [
        "vs GeoJEPA-GTI 1/3 · vs Dummy 3/3"
    ]
    # Only models with the same probe are compared.
    assert table_row(markdown, "GeoJEPA-GTI (mlp)", wins) == ["vs Dummy 3/3"]


def test_markdown_without_unmasked_runs_has_no_unmasked_section() -> None:
    runs = make_runs()
    markdown = markdown_report(runs[runs["variant"] == "masked"], "t", [])
    assert "## Masked (headline)" in markdown
    assert "Unmasked" not in markdown
    regression = runs[(runs["variant"] == "masked") & (runs["task"] == "building_count")]
    markdown = markdown_report(regression, "t", [])
    assert "binary tasks: error rate" in markdown
    assert "†" not in markdown
    baselines_only = markdown_report(runs[runs["role"] == "baseline"], "t", [])
    assert "| Dummy | 32.0 ± 2.0 | 0.300 ± 0.000 |" in baselines_only
    assert "Paired wins" not in baselines_only


def test_bad_runs_are_refused() -> None:
    runs = make_runs()
    with pytest.raises(ValueError, match="metric"):
        fold_scores(runs.drop(columns=["metric"]))
    with pytest.raises(ValueError, match="variant"):
        summarise(runs.assign(variant="partly"))
    with pytest.raises(ValueError, match="no runs"):
        markdown_report(runs.iloc[:0], "t", [])


def test_write_report_writes_every_file_atomically(tmp_path: Path) -> None:
    runs = make_runs()
    out_dir = tmp_path / "report"
    settings = {"seeds": 3, "folds": 3, "cache": tmp_path / "cache"}
    paths = write_report(runs, out_dir, "GeoJEPA eval", NOTES, settings)
    names = {
        "runs.csv",
        "results.md",
        "settings.json",
        "plot_building_count.png",
        "plot_bridge.png",
    }
    assert {path.name for path in paths.values()} == names
    assert {path.name for path in out_dir.iterdir()} == names  # no temporary file left over
    assert set(paths) == {"runs", "results", "settings", "plot_building_count", "plot_bridge"}
    back = pd.read_csv(paths["runs"])
    pd.testing.assert_frame_equal(back, runs, check_dtype=False)
    assert paths["results"].read_text(encoding="utf-8") == markdown_report(
        runs, "GeoJEPA eval", NOTES
    )
    text = paths["settings"].read_text(encoding="utf-8")
    assert json.loads(text) == {"cache": str(tmp_path / "cache"), "folds": 3, "seeds": 3}
    assert text.index('"cache"') < text.index('"folds"') < text.index('"seeds"')
    assert '\n  "folds": 3' in text
    for task in ("building_count", "bridge"):
        data = paths[f"plot_{task}"].read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 5_000
    # Writing again replaces the files and still leaves nothing else.
    write_report(runs, out_dir, "again", [], settings)
    assert {path.name for path in out_dir.iterdir()} == names
    assert paths["results"].read_text(encoding="utf-8").startswith("# again\n")


def test_plot_task_with_one_fold_and_one_variant(tmp_path: Path) -> None:
    runs = make_runs()
    one_fold = runs[(runs["fold"] == 0) & (runs["variant"] == "masked")]
    path = tmp_path / "bridge.png"
    plot_task(one_fold, "bridge", path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    with pytest.raises(ValueError, match="max_speed"):
        plot_task(runs, "max_speed", tmp_path / "none.png")


def test_health_section_prefers_the_unmasked_input_and_is_written(tmp_path: Path) -> None:
    health = pd.DataFrame([
        {"method": "GeoJEPA-T", "input": "masked/building", "dims": 256.0, "effective_rank": 3.0,
         "mean_cosine": 0.5},
        {"method": "GeoJEPA-T", "input": "unmasked", "dims": 256.0, "effective_rank": 41.25,
         "mean_cosine": 0.99912},
        {"method": "TagPool", "input": "masked/building", "dims": 768.0, "effective_rank": 12.0,
         "mean_cosine": 0.25},
    ])
    text = markdown_report(make_runs(), "t", NOTES, health)
    section = text[text.index("## Embedding health"):]
    assert "| GeoJEPA-T | unmasked | 256 | 41.2 | 0.999 |" in section
    assert "| TagPool | masked/building | 768 | 12.0 | 0.250 |" in section
    assert section.index("GeoJEPA-T") < section.index("TagPool")
    paths = write_report(make_runs(), tmp_path / "r", "t", NOTES, {}, health)
    pd.testing.assert_frame_equal(pd.read_csv(paths["health"]), health)
    assert paths["results"].read_text(encoding="utf-8") == text


def test_replicates_are_averaged_and_listed_one_row_each() -> None:
    plan = {
        ("building_count", "masked", "GeoJEPA-T", "model", "linear"): [[20.0], [30.0], [40.0]],
        ("building_count", "masked", "GeoJEPA-T random init", "baseline", "linear"): [[25.0]] * 3,
        ("building_count", "masked", "Dummy", "baseline", "dummy"): [[50.0]] * 3,
    }
    first = make_runs(plan).assign(replicate=0)
    second = make_runs(plan).assign(replicate=1).query("method != 'Dummy'")  # one Dummy
    second.loc[second["method"] == "GeoJEPA-T", "metric"] += 6.0  # replicate 1: 26, 36, 46
    runs = pd.concat([first, second], ignore_index=True)
    scores = fold_scores(runs)
    model = scores[scores["method"] == "GeoJEPA-T"].set_index("fold")["metric"]
    assert model.tolist() == [23.0, 33.0, 43.0]  # each fold averages the replicates
    # 23 < 25 on fold 0 only.
    assert paired_wins(runs, "GeoJEPA-T", "GeoJEPA-T random init", "building_count", "masked",
                       "linear") == (1, 3)
    text = markdown_report(runs, "t", NOTES)
    section = text.split("### Replicates")[1]
    assert ("| GeoJEPA-T (linear) | 0 | 30.0 |\n| GeoJEPA-T (linear) | 1 | 36.0 |\n"
            "| GeoJEPA-T random init (linear) | 0 | 25.0 |") in section
    assert "Dummy" not in section
    assert "### Replicates" not in markdown_report(first, "t", NOTES)


def test_sign_flip_p_counts_the_sign_patterns_at_least_as_extreme() -> None:
    # +-1 +-2 +-3: |sums| 6, 4, 2, 0, 0, 2, 4, 6; two of eight reach 6, four reach 4.
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == 0.25
    assert sign_flip_p(np.array([1.0, 2.0, -3.0])) == 1.0  # sum 0: every pattern is as far
    assert sign_flip_p(np.array([3.0, -1.0, 2.0])) == 0.5
    assert sign_flip_p(np.full(5, 0.5)) == 2 / 32  # all groups agree: the smallest p there is
    assert sign_flip_p(np.zeros(4)) == 1.0
    many = np.linspace(1.0, 2.0, 20)  # beyond exact enumeration: seeded random patterns
    p = sign_flip_p(many)
    assert p == sign_flip_p(-many) == 1 / (SIGN_FLIP_DRAWS + 1)  # no random pattern reaches it
    noisy = np.random.default_rng(1).normal(size=20)
    assert sign_flip_p(noisy) == sign_flip_p(noisy)
    assert 0.05 < sign_flip_p(noisy) <= 1.0


def test_holm_scales_the_sorted_p_values_and_keeps_their_order() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> 0.06 kept
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.2, 0.6, 0.9]), [0.6, 1.0, 1.0])  # capped at 1
    assert holm([0.037]).tolist() == [0.037]  # one test: nothing to adjust for
    assert holm([]).size == 0
    rng = np.random.default_rng(0)
    raw = rng.uniform(size=30)
    adjusted = holm(raw)
    assert (adjusted >= raw).all() and (adjusted <= 1).all()
    order = np.argsort(raw)
    assert (np.diff(adjusted[order]) >= 0).all()  # a smaller p never gets a larger adjustment


def make_predictions(shift: float, seed: int = 0) -> pd.DataFrame:
    """Test predictions of model A (2 replicates x 2 seeds), model B and Dummy on 3 folds of
    unequal size over 6 groups; A errs ``shift`` less than B on average, and 2 less than Dummy
    on every tile."""
    rng = np.random.default_rng(seed)
    tiles = pd.DataFrame({"fold": [0] * 6 + [1] * 4 + [2] * 10, "x": range(20), "y": 0})
    tiles["group"] = [f"14/{g}/0" for g in [0, 0, 0, 1, 1, 1, 2, 2, 3, 3] + [4] * 5 + [5] * 5]
    tiles["label"] = rng.integers(0, 10, len(tiles)).astype(float)
    # B errs 3 on average, more in some groups and less in others.
    offsets = {"14/0/0": 1.0, "14/1/0": -1.0, "14/2/0": 0.5, "14/3/0": -0.5, "14/4/0": 1.2,
               "14/5/0": -1.2}
    base = tiles["label"] + 3.0 + tiles["group"].map(offsets)
    frames = []
    for method, probe, replicates, seeds, error in (
        ("A", "linear", 2, 2, 3.0 - shift), ("B", "linear", 1, 1, 3.0), ("Dummy", "dummy", 1, 1, 5.0)
    ):
        for replicate in range(replicates):
            for s in range(seeds):
                wobble = rng.uniform(-0.5, 0.5, len(tiles))
                frames.append(tiles.assign(
                    task="t", kind="regression", variant="masked", method=method,
                    role="model" if method == "A" else "baseline", replicate=replicate, probe=probe,
                    seed=s, prediction=tiles["label"] + error + wobble if method != "B" else base))
    return pd.concat(frames, ignore_index=True)


def runs_of(predictions: pd.DataFrame) -> pd.DataFrame:
    """The runs table the predictions belong to: one metric per run, the tiles' mean error."""
    keys = ["task", "kind", "variant", "method", "role", "replicate", "probe", "fold", "seed"]
    error = (predictions["prediction"] - predictions["label"]).abs()
    runs = predictions[keys].assign(metric=error).groupby(keys, as_index=False)["metric"].mean()
    return runs.assign(constant=False)


def test_paired_test_delta_is_the_difference_of_the_table_means() -> None:
    predictions = make_predictions(shift=0.4)
    means = summarise(runs_of(predictions)).set_index("method")["mean"]
    for other in ("B", "Dummy"):  # Dummy: the Dummy probe stands in for the linear one
        test = paired_test(predictions, "A", other, "t", "masked", "linear")
        assert test is not None and test.groups == 6
        assert test.delta == pytest.approx(means["A"] - means[other], abs=1e-12)
    assert paired_test(predictions, "A", "C", "t", "masked", "linear") is None
    assert paired_test(predictions, "A", "B", "t", "unmasked", "linear") is None


def test_paired_test_is_sure_only_when_every_group_agrees() -> None:
    always = paired_test(make_predictions(shift=0.4), "A", "Dummy", "t", "masked", "linear")
    assert always is not None and always.delta < -1.5 and always.p_value == 2 / 2**6
    # B's errors are noise around A's level: some groups favour one, some the other.
    mixed = paired_test(make_predictions(shift=0.0), "A", "B", "t", "masked", "linear")
    assert mixed is not None and mixed.p_value > 0.1
    swapped = paired_test(make_predictions(shift=0.0), "B", "A", "t", "masked", "linear")
    assert swapped is not None and swapped.delta == pytest.approx(-mixed.delta)
    assert swapped.p_value == mixed.p_value


def test_report_with_predictions_adds_paired_tests_and_writes_them(tmp_path: Path) -> None:
    predictions = make_predictions(shift=0.4)
    runs = runs_of(predictions)
    text = markdown_report(runs, "t", NOTES, predictions=predictions)
    assert "### Paired tests" in text and "over the 6 spatial groups" in text
    assert "over all 64 sign patterns (the smallest p possible is 0.031)" in text
    test = paired_test(predictions, "A", "Dummy", "t", "masked", "linear")
    against_b = paired_test(predictions, "A", "B", "t", "masked", "linear")
    assert test is not None and against_b is not None
    holm_b, holm_dummy = holm([against_b.p_value, test.p_value])  # the table's two tests
    assert f"vs Dummy {test.delta:+.2f} (p 0.031, Holm {holm_dummy:.2g})" in text
    assert f"(p {against_b.p_value:.2g}, Holm {holm_b:.2g}) · vs Dummy" in text
    assert "### Paired tests" not in markdown_report(runs, "t", NOTES)
    two_models = predictions.assign(role=predictions["role"].mask(predictions["method"] == "B", "model"))
    text = markdown_report(runs_of(two_models), "t", NOTES, predictions=two_models)
    b_dummy = paired_test(two_models, "B", "Dummy", "t", "masked", "linear")
    assert b_dummy is not None
    # A vs B and B vs A are one test: the family is {A-B, A-Dummy, B-Dummy}
    holm_ab = holm([against_b.p_value, test.p_value, b_dummy.p_value])[0]
    assert text.count(f"(p {against_b.p_value:.2g}, Holm {holm_ab:.2g})") == 2
    every_tile = predictions.assign(group="14/" + predictions["x"].astype(str) + "/0")
    text = markdown_report(runs, "t", NOTES, predictions=every_tile)  # 20 groups: random patterns
    assert "over 10,000 random sign patterns (the smallest p possible is 0.0001)" in text
    assert f"vs Dummy {test.delta:+.2f} (p 0.0001, Holm 0.0002)" in text
    paths = write_report(runs, tmp_path / "r", "t", NOTES, {}, predictions=predictions)
    back = pd.read_parquet(paths["predictions"])
    pd.testing.assert_frame_equal(back, predictions, check_dtype=False)
    with pytest.raises(ValueError, match="group"):
        markdown_report(runs, "t", NOTES, predictions=predictions.drop(columns="group"))


def make_curve() -> pd.DataFrame:
    """The planned runs at two sizes: 10 train tiles per fold (fold 2 has only 8), where the
    model's errors are 10 higher, and all 80."""
    full = make_runs().assign(**{CURVE_COLUMN: "all"})
    few = make_runs().assign(**{CURVE_COLUMN: "10"})
    few["n_train"] = np.where(few["fold"] == 2, 8, 10)
    few.loc[few["role"] == "model", "metric"] += 10.0
    return pd.concat([few, full], ignore_index=True)


def test_learning_curve_lays_the_sizes_out_as_columns(tmp_path: Path) -> None:
    runs = make_curve()
    summary = curve_summary(runs)
    assert summary[CURVE_COLUMN].drop_duplicates().tolist() == ["10", "all"]
    for size in ("10", "all"):  # each size is the ordinary summary of its runs
        expected = summarise(runs[runs[CURVE_COLUMN] == size])
        got = summary[summary[CURVE_COLUMN] == size].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[expected.columns], expected)
    assert set(summary.loc[summary[CURVE_COLUMN] == "10", "n_train"]) == {28 / 3}
    assert set(summary.loc[summary[CURVE_COLUMN] == "all", "n_train"]) == {80}

    text = curve_markdown(runs, "curve", NOTES)
    masked = text.index("## Masked")
    unmasked = text.index("## Unmasked")
    assert masked < text.index("### building_count: test MAE") < text.index("### bridge: test error rate") < unmasked
    header = "| model | ≤10 (8-10 tiles) | all (80 tiles) |"
    assert header in text
    # linear building_count: 25 ± 5 with all tiles, 35 ± 5 with 10; Dummy the same at both
    assert table_row(text, "GeoJEPA-T (linear)", masked) == ["35.0 ± 5.0", "25.0 ± 5.0"]
    assert table_row(text, "Dummy", masked) == ["32.0 ± 2.0", "32.0 ± 2.0"]
    wins = text.index("Paired wins:", masked)
    assert table_row(text, "GeoJEPA-T (linear)", wins) == ["Dummy", "0/3", "3/3"]
    assert "| GeoJEPA-T (linear) | TagPool | 0/3 | 1/3 |" in text

    paths = write_curve(runs, tmp_path / "curve", "curve", NOTES, {"train_tiles": [10, None]})
    names = {"learning_curve.md", "learning_curve.csv", "settings.json",
             "learning_curve_building_count.png", "learning_curve_bridge.png"}
    assert set(paths) == names and {p.name for p in (tmp_path / "curve").iterdir()} == names
    assert paths["learning_curve.md"].read_text(encoding="utf-8") == text
    assert paths["learning_curve_bridge.png"].read_bytes().startswith(PNG_SIGNATURE)
    back = pd.read_csv(paths["learning_curve.csv"], dtype={CURVE_COLUMN: str})
    pd.testing.assert_frame_equal(back, summary, check_dtype=False)
    with pytest.raises(ValueError, match=CURVE_COLUMN):
        curve_summary(runs.drop(columns=CURVE_COLUMN))


def test_learning_curve_tests_each_size_like_its_own_report() -> None:
    """At each size the paired test is the one of that size's predictions alone; Holm adjusts
    over every comparison and size of the task's table."""
    sizes = {"10": make_predictions(shift=0.0, seed=1), "all": make_predictions(shift=0.4)}
    predictions = pd.concat([pred.assign(**{CURVE_COLUMN: size}) for size, pred in sizes.items()],
                            ignore_index=True)
    runs = pd.concat([runs_of(pred).assign(**{CURVE_COLUMN: size}) for size, pred in sizes.items()],
                     ignore_index=True).assign(n_train=50)
    text = curve_markdown(runs, "curve", NOTES, predictions)
    tests = text.index("Paired tests: Δ")
    p_values = []
    for other in ("B", "Dummy"):
        cells = table_row_against(text, "A (linear)", other, tests)
        for size, cell in zip(sizes, cells, strict=True):
            test = paired_test(sizes[size], "A", other, "t", "masked", "linear")
            assert test is not None and f"(p {test.p_value:.2g}," in cell
            assert float(cell.split(" ")[0]) == pytest.approx(test.delta, rel=5e-3)
            p_values.append(test.p_value)
    adjusted = holm(p_values)
    got = [float(cell.split("Holm ")[1].rstrip(")"))
           for other in ("B", "Dummy") for cell in table_row_against(text, "A (linear)", other, tests)]
    assert got == pytest.approx([float(f"{a:.2g}") for a in adjusted])
    assert "Paired tests" not in curve_markdown(runs, "curve", NOTES)  # only with predictions


def table_row_against(markdown: str, label: str, other: str, start: int) -> list[str]:
    """Cells after ``against`` of the first row of ``label`` against ``other`` from ``start``."""
    prefix = f"| {label} | {other} |"
    line = next(line for line in markdown[start:].splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")][2:]
