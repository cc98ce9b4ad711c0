"""``geojepa evaluate`` end to end on Helsinki: folds, baselines, honesty notes, report files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import osmium
import pandas as pd
import pytest
import torch

from geojepa.cli import main
from geojepa.dataset.overlap import TileKeys, places_covered, pretraining_record, seen_by, tile_keys
from geojepa.dataset.reader import TileDataset
from geojepa.embed import load_checkpoint
from geojepa.errors import GeoJepaError
from geojepa.evaluate import (
    EvalConfig,
    best_replicate,
    evaluate,
    fewer_train_tiles,
    select_on_validation,
    spatial_folds,
)
from geojepa.features import model_inputs, random_init, tag_pool_features
from geojepa.prepare import PrepareConfig, prepare
from geojepa.probes import grouped_folds
from geojepa.synth import SynthConfig, write_synthetic_city
from geojepa.tasks import build_tasks, load_labels, masked_dataset
from geojepa.train import TrainConfig, pretrain

TINY = {"d": 64, "depth": 2, "heads": 4, "predictor_d": 32, "predictor_depth": 1, "predictor_heads": 4}
TASKS = ("building_count", "traffic_signals", "bridge")


@pytest.fixture(scope="module")
def helsinki(helsinki_pbf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "hel17"
    prepare([helsinki_pbf], out, config=PrepareConfig(zoom=17, workers=0, max_entities=200),
            progress=False)
    build_tasks(out, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(helsinki: Path) -> Path:
    train = TrainConfig(preset="small", batch_size=16, epochs=1, max_steps=3, progress=False)
    return pretrain(helsinki, helsinki.parent / "run", train, TINY)


@pytest.fixture(scope="module")
def report(helsinki: Path, checkpoint: Path) -> Path:
    out = helsinki.parent / "report"
    config = EvalConfig(tasks=TASKS, folds=3, group_zoom=16, seeds=2)
    evaluate({"GeoJEPA-T": checkpoint}, helsinki, out, config, progress=False)
    return out


def _runs(report: Path) -> pd.DataFrame:
    return pd.read_csv(report / "runs.csv")


def test_every_method_probe_and_fold_is_reported(report: Path) -> None:
    runs = _runs(report)
    methods = set(runs["method"])
    assert methods == {"GeoJEPA-T", "GeoJEPA-T random init", "TagPool", "TagCount", "Dummy"}
    per_cell = runs.groupby(["task", "variant", "method", "probe"]).size()
    for (_, _, method, probe), n in per_cell.items():
        assert n == 3 * (2 if probe == "mlp" else 1), (method, probe)
    assert set(runs["probe"]) == {"dummy", "linear", "mlp"}
    assert set(runs["variant"]) == {"masked", "unmasked"}
    for name in ("runs.csv", "results.md", "settings.json", "predictions.parquet",
                 *(f"plot_{t}.png" for t in TASKS)):
        assert (report / name).is_file()


def test_predictions_of_every_run_score_it_and_name_each_tile_and_group(
    report: Path, helsinki: Path
) -> None:
    runs = _runs(report)
    predictions = pd.read_parquet(report / "predictions.parquet")
    keys = ["task", "variant", "method", "probe", "fold", "seed"]
    error = (predictions["prediction"] - predictions["label"]).abs()
    per_run = predictions.assign(error=error).groupby(keys)["error"].agg(["mean", "size"])
    scored = runs.set_index(keys)[["metric", "n_test"]].join(per_run, how="inner")
    assert len(scored) == len(runs) == len(per_run)
    np.testing.assert_allclose(scored["mean"], scored["metric"], rtol=0, atol=1e-12)
    assert (scored["size"] == scored["n_test"]).all()
    labels = load_labels(helsinki).to_pandas()
    folds = spatial_folds(TileDataset(helsinki), labels, 16, 3, 0)
    truth = labels.set_index(["x", "y"])
    for (task, fold), rows in predictions.groupby(["task", "fold"]):
        tiles = set(zip(labels["x"].to_numpy()[folds[fold].test], labels["y"].to_numpy()[folds[fold].test]))
        assert set(zip(rows["x"], rows["y"])) == tiles
        np.testing.assert_array_equal(rows["label"], truth.loc[list(zip(rows["x"], rows["y"])), task])
    assert (predictions["group"] == "16/" + (predictions["x"] // 2).astype(str) + "/"
            + (predictions["y"] // 2).astype(str)).all()
    groups = predictions["group"].nunique()
    text = (report / "results.md").read_text()
    assert "### Paired tests" in text and f"over the {groups} spatial groups of the test tiles" in text


def test_embedding_health_of_every_method_and_input(report: Path) -> None:
    health = pd.read_csv(report / "health.csv")
    featured = {"GeoJEPA-T", "GeoJEPA-T random init", "TagPool", "TagCount"}
    assert set(health["method"]) == featured  # Dummy has no features
    inputs = {"unmasked", "masked/building", "masked/signals", "masked/bridge"}
    assert set(zip(health["method"], health["input"])) == {(m, i) for m in featured for i in inputs}
    model = health[health["method"] == "GeoJEPA-T"]
    assert (model["dims"] == 2 * TINY["d"]).all()
    assert (health["effective_rank"] >= 1.0).all() and health["mean_cosine"].between(-1, 1).all()
    assert "## Embedding health" in (report / "results.md").read_text()


def test_all_methods_share_the_same_folds(report: Path) -> None:
    runs = _runs(report)
    sizes = runs.groupby("fold")[["n_train", "n_val", "n_test"]].nunique()
    assert (sizes == 1).all().all()
    assert runs.groupby("fold")["n_test"].first().sum() == TileDataset(report.parent / "hel17").num_tiles()


def test_dummy_is_the_train_median(report: Path, helsinki: Path) -> None:
    """Dummy's MAE recomputed from the labels on the same spatial folds."""
    runs = _runs(report)
    dummy = runs[(runs["method"] == "Dummy") & (runs["task"] == "building_count")
                 & (runs["variant"] == "masked")].sort_values("fold")
    assert dummy["constant"].all()
    labels = load_labels(helsinki).to_pandas()
    y = labels["building_count"].to_numpy().astype(float)
    groups = np.stack([labels["x"].to_numpy() >> 1, labels["y"].to_numpy() >> 1], axis=1)
    for fold, mae in zip(grouped_folds(groups, 3, 0), dummy["metric"], strict=True):
        assert mae == pytest.approx(np.mean(np.abs(y[fold.test] - np.median(y[fold.train]))))


def test_unmasked_tags_give_the_labels_away(report: Path) -> None:
    runs = _runs(report)
    cell = runs[(runs["task"] == "building_count") & (runs["probe"] == "linear")
                & (runs["method"] == "TagCount")].groupby("variant")["metric"].mean()
    dummy = runs[(runs["task"] == "building_count") & (runs["method"] == "Dummy")]["metric"].mean()
    assert cell["unmasked"] < 0.75 * dummy  # counts of building=* tags are the label


def test_report_states_transductive_pretraining_and_flags(report: Path) -> None:
    text = (report / "results.md").read_text()
    assert text.index("## Masked (headline)") < text.index("## Unmasked")
    # pretrained on the stored train split; cross-validation tests every tile once
    assert "pretraining saw the inputs of" in text and "transductive" in text
    assert "3-fold cross-validation over zoom-16 spatial groups" in text
    assert "Paired wins" in text


def test_same_settings_give_the_same_numbers(helsinki: Path, checkpoint: Path, tmp_path: Path) -> None:
    config = EvalConfig(tasks=("building_count",), folds=3, group_zoom=16, seeds=1,
                        baselines=("dummy", "tagcount"), variants=("masked",))
    a = evaluate({"m": checkpoint}, helsinki, tmp_path / "a", config, progress=False)
    b = evaluate({"m": checkpoint}, helsinki, tmp_path / "b", config, progress=False)
    assert a["runs"].read_text() == b["runs"].read_text()


def test_spatial_folds_keep_each_parent_tile_in_one_fold(helsinki: Path) -> None:
    labels = load_labels(helsinki).to_pandas()
    folds = spatial_folds(TileDataset(helsinki), labels, 16, 3, 0)
    parent = (labels["x"].to_numpy() >> 1) * 100_000 + (labels["y"].to_numpy() >> 1)
    tests = [set(parent[f.test]) for f in folds]
    assert sum(len(t) for t in tests) == len(set(parent))
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(len(labels)))
    for fold in folds:
        assert not set(parent[fold.test]) & (set(parent[fold.train]) | set(parent[fold.val]))
    with pytest.raises(GeoJepaError, match="group zoom must be in 0..17"):
        spatial_folds(TileDataset(helsinki), labels, 18, 3, 0)


def test_too_few_groups_is_a_clear_error(helsinki: Path, tmp_path: Path) -> None:
    config = EvalConfig(tasks=("bridge",), folds=5, group_zoom=13, baselines=("dummy",))
    with pytest.raises(GeoJepaError, match="group"):
        evaluate({}, helsinki, tmp_path / "r", config, progress=False)
    assert not (tmp_path / "r").exists()


def test_cli_evaluate_baselines_only(helsinki: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    args = ["evaluate", "--dataset", str(helsinki), "-o", str(out), "--tasks", "bridge",
            "--folds", "3", "--group-zoom", "16", "--probes", "linear", "--baselines", "dummy", "tagcount"]
    assert main(args) == 0
    assert "| TagCount (linear) |" in capsys.readouterr().out
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def _building_count_cli(helsinki: Path) -> list[str]:
    """A quick ``geojepa evaluate``: masked building_count, 3 folds, linear probe, Dummy and TagCount."""
    return ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "--folds", "3",
            "--group-zoom", "16", "--probes", "linear", "--baselines", "dummy", "tagcount",
            "--variants", "masked"]


def test_cli_repeats_cross_validate_with_other_group_assignments(
    helsinki: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = _building_count_cli(helsinki)
    assert main([*args, "-o", str(tmp_path / "once")]) == 0
    assert main([*args, "-o", str(tmp_path / "twice"), "--repeats", "2", "--seed", "4"]) == 0
    labels = load_labels(helsinki).to_pandas()
    predictions = pd.read_parquet(tmp_path / "twice" / "predictions.parquet")
    tagcount = predictions[predictions["method"] == "TagCount"]
    assignments = []
    for repeat in range(2):  # repeat 0: the default folds; later ones: groups in random order
        folds = spatial_folds(TileDataset(helsinki), labels, 16, 3, 4 + repeat, by_size=repeat == 0)
        assignments.append([f.test.tolist() for f in folds])
        for fold in folds:  # fold i of repeat r is fold r * 3 + i, on that repeat's own groups
            rows = tagcount[tagcount["fold"] == repeat * 3 + fold.index]
            assert sorted(zip(rows["x"], rows["y"])) == sorted(
                zip(labels["x"].to_numpy()[fold.test], labels["y"].to_numpy()[fold.test]))
    assert tagcount.groupby(["x", "y"]).size().eq(2).all()  # every tile tested once per repeat
    assert assignments[0] != assignments[1]
    first = pd.read_csv(tmp_path / "once" / "runs.csv")
    twice = pd.read_csv(tmp_path / "twice" / "runs.csv")
    assert sorted(set(twice["fold"])) == list(range(6))
    assert set(first["fold"]) == {0, 1, 2}
    text = (tmp_path / "twice" / "results.md").read_text()
    assert "repeated 2 times with other assignments of the groups to folds (seeds 4-5" in text
    sizes = text.split("test tiles per fold: ")[1].split(")")[0].split(", ")
    assert len(sizes) == 6 and sum(map(int, sizes)) == 2 * len(labels)
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "bad"), "--repeats", "0"]) == 2
    assert "1 repeat" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "split"), "--repeats", "2", "--protocol", "split"]) == 2
    assert "repeats need the cv protocol" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "split").exists()


def test_fewer_train_tiles_draw_a_seeded_subset_and_keep_validation_and_test() -> None:
    fold = grouped_folds(np.arange(120) // 6, 4, seed=0)[1]
    fewer = fewer_train_tiles(fold, 10, seed=3)
    assert len(fewer.train) == 10 and set(fewer.train) < set(fold.train)
    assert np.all(np.diff(fewer.train) > 0)
    assert fewer.val is fold.val and fewer.test is fold.test and fewer.index == fold.index
    assert np.array_equal(fewer_train_tiles(fold, 10, seed=3).train, fewer.train)  # same seed, same tiles
    assert not np.array_equal(fewer_train_tiles(fold, 10, seed=4).train, fewer.train)
    assert fewer_train_tiles(fold, len(fold.train), seed=3) is fold


def test_cli_train_tiles_fit_every_method_on_the_same_few_tiles(
    helsinki: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [*_building_count_cli(helsinki), "--checkpoint", str(checkpoint)]
    assert main([*args, "-o", str(tmp_path / "all")]) == 0
    assert main([*args, "-o", str(tmp_path / "few"), "--train-tiles", "8"]) == 0
    full, few = (pd.read_csv(tmp_path / name / "runs.csv") for name in ("all", "few"))
    assert set(few["n_train"]) == {8} and full["n_train"].min() > 8
    for column in ("n_val", "n_test"):  # validation and test tiles stay whole
        assert few[column].tolist() == full[column].tolist()
    labels = load_labels(helsinki).to_pandas()
    dummy = few[few["method"] == "Dummy"]
    assert dummy["metric"].tolist() != full[full["method"] == "Dummy"]["metric"].tolist()
    medians = {float(np.median(labels["building_count"].to_numpy()[fewer_train_tiles(f, 8, 0).train]))
               for f in spatial_folds(TileDataset(helsinki), labels, 16, 3, 0)}
    predictions = pd.read_parquet(tmp_path / "few" / "predictions.parquet")
    assert set(predictions.loc[predictions["method"] == "Dummy", "prediction"]) == medians
    assert "fitted on at most 8 of each fold's train tiles" in (tmp_path / "few" / "results.md").read_text()
    assert json.loads((tmp_path / "few" / "settings.json").read_text())["train_tiles"] == 8

    # several sizes: one report per size, the same as evaluating each alone, and the curve
    assert main([*args, "-o", str(tmp_path / "curve"), "--train-tiles", "all", "8"]) == 0
    curve = tmp_path / "curve"
    assert {p.name for p in curve.iterdir()} == {
        "train_8", "train_all", "learning_curve.md", "learning_curve.csv", "settings.json",
        "learning_curve_building_count.png"}
    for size, alone in (("8", "few"), ("all", "all")):
        for name in ("runs.csv", "results.md", "health.csv"):  # embeddings shared, health per report
            assert (curve / f"train_{size}" / name).read_text() == (tmp_path / alone / name).read_text()
    summary = pd.read_csv(curve / "learning_curve.csv", dtype={"train_tiles": str})
    assert summary["train_tiles"].drop_duplicates().tolist() == ["8", "all"]  # smallest first
    for size, runs in (("8", few), ("all", full)):
        at = summary[summary["train_tiles"] == size].set_index(["method", "probe"])
        means = runs.groupby(["method", "probe", "fold"])["metric"].mean().groupby(["method", "probe"]).mean()
        assert np.allclose(at["mean"].sort_index(), means.sort_index())
        assert np.allclose(at["n_train"], runs.groupby("fold")["n_train"].first().mean())
    text = (curve / "learning_curve.md").read_text()
    assert "### building_count: test MAE" in text and "| 8 tiles | all (" in text
    assert "| GeoJEPA-T (linear) | TagCount | " in text and "**transductive**" in text
    tests = text[text.index("Paired tests: Δ"):]  # one per size, as in each size's own report
    for size in ("8", "all"):
        own = (curve / f"train_{size}" / "results.md").read_text()
        raw = own[own.index("### Paired tests"):].split("| GeoJEPA-T (linear) | vs TagCount ")[1].split(" ·")[0]
        assert raw.split(", Holm")[0] in tests  # the same delta and p; Holm over the curve's table
    assert json.loads((curve / "settings.json").read_text())["train_tiles"] == [8, None]
    assert "each size drawn on its own" in capsys.readouterr().out  # the curve is printed

    for bad, message in ((["2"], "train_tiles must be at least 5"), (["8", "3"], "at least 5"),
                         (["8", "8"], "two or more distinct")):
        assert main([*args, "-o", str(tmp_path / "bad"), "--train-tiles", *bad]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "bad"), "--train-tiles", "ten"])
    assert "expected a number of tiles or all" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_external_embeddings_are_a_model_on_the_same_folds(
    helsinki: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """TagPool's own features, written as external embeddings (unmasked in a list column with
    the rows reversed, masked building in numeric columns), score exactly as TagPool."""
    vocab = TileDataset(helsinki).vocabulary().column("tag").to_pylist()
    labels = load_labels(helsinki).to_pandas()
    folder = tmp_path / "emb"
    (folder / "masked").mkdir(parents=True)
    unmasked = tag_pool_features(helsinki, vocab, helsinki)
    pd.DataFrame({"x": labels["x"], "y": labels["y"], "embedding": list(unmasked)}).iloc[::-1].to_parquet(
        folder / "unmasked.parquet")
    masked = tag_pool_features(masked_dataset(helsinki, "building_count"), vocab, helsinki)
    wide = pd.DataFrame(masked, columns=[f"e{i}" for i in range(masked.shape[1])])
    pd.concat([labels[["x", "y"]], wide], axis=1).to_parquet(folder / "masked" / "building.parquet")
    args = ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "traffic_signals",
            "--folds", "3", "--group-zoom", "16", "--probes", "linear", "--baselines", "dummy", "tagpool",
            "--embeddings", f"Ext={folder}"]
    assert main([*args, "-o", str(tmp_path / "r")]) == 0
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")
    ext, tagpool = (runs[runs["method"] == m].set_index(["task", "variant", "fold"]) for m in ("Ext", "TagPool"))
    assert ext["role"].eq("model").all()
    assert sorted(set(ext.index.droplevel("fold"))) == [  # no masked signals file: no such cells
        ("building_count", "masked"), ("building_count", "unmasked"), ("traffic_signals", "unmasked")]
    assert np.allclose(ext["metric"], tagpool.loc[ext.index, "metric"], rtol=1e-6, atol=0)
    text = (tmp_path / "r" / "results.md").read_text()
    assert f"Ext: tile embeddings read from `{folder}` (masked building, unmasked)" in text
    assert "No masked input for traffic_signals" in text and "treat as transductive" in text
    assert "| Ext (linear) | vs TagPool " in text  # the same features, up to rounding
    settings = json.loads((tmp_path / "r" / "settings.json").read_text())
    assert settings["embeddings"] == {"Ext": str(folder.resolve())}
    health = pd.read_csv(tmp_path / "r" / "health.csv")
    assert set(health.loc[health["method"] == "Ext", "input"]) == {"unmasked", "masked/building"}

    # one tile short in a lone file: refused before any probe, naming the file
    short = tmp_path / "short.parquet"
    pd.read_parquet(folder / "unmasked.parquet").iloc[1:].to_parquet(short)
    for bad, message in (([f"Ext={short}"], f"{short}: no embedding for 1 of the dataset's"),
                         ([f"Ext={tmp_path / 'none'}"], "no such embeddings file or folder"),
                         ([f"Dummy2={tmp_path / 'masked_only'}"], "no embeddings for the evaluated inputs"),
                         ([f"TagPool={folder}"], "the name 'TagPool' is taken"),
                         (["Ext"], "expected NAME=PATH")):
        (tmp_path / "masked_only").mkdir(exist_ok=True)
        capsys.readouterr()
        if bad == ["Ext"]:
            with pytest.raises(SystemExit):
                main([*args[:-2], "--embeddings", *bad, "-o", str(tmp_path / "bad")])
        else:
            assert main([*args[:-2], "--embeddings", *bad, "-o", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_seen_by_reads_the_pretraining_record(helsinki: Path) -> None:
    m = TileDataset(helsinki).manifest
    splits = ["train", "val", "test"]
    assert seen_by(m.tile_record(("train",)), m, splits) == [True, False, False]
    assert seen_by(m.tile_record(None), m, splits) == [True, True, True]
    assert seen_by({}, m, splits) == [None, None, None]
    other = {**m.tile_record(None), "inputs": ["0" * 64]}
    assert seen_by(other, m, splits) == [None, None, None]  # other files, no tile keys
    regrouped = {**m.tile_record(None), "groups": {}}
    assert seen_by(regrouped, m, splits) == [None, None, None]


def test_image_only_baseline_ignores_the_entities(tmp_path: Path) -> None:
    """A model with images gets an image-only baseline; masking entities cannot change it."""
    synth = write_synthetic_city(tmp_path / "src", SynthConfig(size_km=0.8, seed=2, pixel_size_m=2.0))
    ds = tmp_path / "city"
    prepare([synth.pbf_path], ds, imagery=[synth.image_path],
            config=PrepareConfig(zoom=17, workers=0, image_size=32), progress=False)
    train = TrainConfig(preset="small", batch_size=16, epochs=1, max_steps=2, progress=False,
                        pretrain_splits="all")
    ckpt = pretrain(ds, tmp_path / "run", train, {**TINY, "modalities": "TI", "image_size": 32})
    config = EvalConfig(tasks=("building_count",), folds=3, group_zoom=16, probes=("linear",),
                        baselines=("dummy", "image"))
    evaluate({"TI": ckpt}, ds, tmp_path / "r", config, progress=False)
    runs = _runs(tmp_path / "r")
    assert set(runs["method"]) == {"TI", "TI image only", "Dummy"}
    image = runs[runs["method"] == "TI image only"].pivot(index="fold", columns="variant", values="metric")
    assert (image["masked"] == image["unmasked"]).all()
    model = runs[runs["method"] == "TI"].pivot(index="fold", columns="variant", values="metric")
    assert (model["masked"] != model["unmasked"]).any()
    # entities and patches pooled apart: every feature of the model doubles, the note says so
    apart = replace(config, pool="modality", baselines=("image", "random"))
    evaluate({"TI": ckpt}, ds, tmp_path / "p", apart, progress=False)
    dims = pd.read_csv(tmp_path / "p" / "health.csv").groupby("method")["dims"].unique()
    assert {m: list(v) for m, v in dims.items()} == {
        "TI": [4 * TINY["d"]], "TI image only": [4 * TINY["d"]], "TI random init": [4 * TINY["d"]]}
    assert "pool their entity tokens and their image patches apart" in (
        tmp_path / "p" / "results.md").read_text()
    pooled = _runs(tmp_path / "p")
    image = pooled[pooled["method"] == "TI image only"].pivot(index="fold", columns="variant",
                                                              values="metric")
    assert (image["masked"] == image["unmasked"]).all()
    together = runs[runs["method"] == "TI"].set_index(["variant", "fold"])["metric"]
    assert (pooled[pooled["method"] == "TI"].set_index(["variant", "fold"])["metric"]
            != together).any()
    with pytest.raises(GeoJepaError, match="pool must be one of tokens, modality, kind, predicted, got"):
        evaluate({"TI": ckpt}, ds, tmp_path / "q", replace(config, pool="patches"), progress=False)
    # the set probe reads the token embeddings of every method that has some (not TagCount)
    sets = replace(config, probes=("linear", "set"), seeds=1, baselines=("image", "tagpool", "tagcount"))
    evaluate({"TI": ckpt}, ds, tmp_path / "s", sets, progress=False)
    runs = _runs(tmp_path / "s")
    assert set(runs.loc[runs["probe"] == "set", "method"]) == {"TI", "TI image only", "TagPool"}
    assert set(runs.loc[runs["probe"] == "linear", "method"]) == {"TI", "TI image only", "TagPool",
                                                                  "TagCount"}
    image = runs[(runs["method"] == "TI image only") & (runs["probe"] == "set")]
    image = image.pivot(index="fold", columns="variant", values="metric")
    assert (image["masked"] == image["unmasked"]).all()
    text = (tmp_path / "s" / "results.md").read_text()
    assert "TI (set)" in text and "Set probe (`set`)" in text


def test_stored_split_protocol_is_inductive_for_a_train_only_checkpoint(
    helsinki: Path, checkpoint: Path, tmp_path: Path
) -> None:
    config = EvalConfig(tasks=("building_count",), protocol="split", probes=("linear",),
                        baselines=("dummy",), variants=("masked",))
    evaluate({"T": checkpoint}, helsinki, tmp_path / "r", config, progress=False)
    runs = _runs(tmp_path / "r")
    counts = TileDataset(helsinki).manifest.counts
    assert set(runs["fold"]) == {0}
    assert (runs["n_test"] == counts["test"]["tiles"]).all()
    assert (runs["n_train"] == counts["train"]["tiles"]).all()
    text = (tmp_path / "r" / "results.md").read_text()
    assert "stored split" in text and "saw none of the evaluated test tiles (inductive)" in text


def test_checkpoints_of_one_architecture_share_one_random_init(
    helsinki: Path, checkpoint: Path, tmp_path: Path
) -> None:
    config = EvalConfig(tasks=("building_count",), folds=3, group_zoom=16, probes=("linear",),
                        baselines=("random",), variants=("masked",))
    evaluate({"a": checkpoint, "b": checkpoint}, helsinki, tmp_path / "r", config, progress=False)
    assert set(_runs(tmp_path / "r")["method"]) == {"a", "b", "random init of a, b"}


@pytest.fixture(scope="module")
def seeded(helsinki: Path) -> tuple[Path, Path]:
    """Two runs of one setting: seed 7 with a zero learning rate (so it keeps the weights it
    started from) and seed 3, trained."""
    runs = []
    for seed, lr in ((7, 0.0), (3, 1e-3)):
        train = TrainConfig(preset="small", batch_size=16, epochs=1, max_steps=2, lr=lr,
                            min_lr=min(lr, 1e-6), progress=False, seed=seed)
        runs.append(pretrain(helsinki, helsinki.parent / f"seed{seed}", train, TINY))
    return runs[0], runs[1]


ONE_TASK = EvalConfig(tasks=("building_count",), folds=3, group_zoom=16, probes=("linear",),
                      baselines=("random",), variants=("masked",))


def test_random_init_baseline_is_the_checkpoints_own_initialisation(
    helsinki: Path, seeded: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt = load_checkpoint(seeded[0])
    start = ckpt.model.state_dict()
    own = random_init(ckpt).model.state_dict()
    assert all(torch.equal(own[k], start[k]) for k in start)
    other = random_init(ckpt, seed=0).model.state_dict()
    assert not all(torch.equal(other[k], start[k]) for k in start)
    # Checkpoints with other training seeds get their own twins.
    evaluate({"a": seeded[0], "b": seeded[1]}, helsinki, tmp_path / "r", ONE_TASK, progress=False)
    assert set(_runs(tmp_path / "r")["method"]) == {"a", "b", "a random init", "b random init"}


def test_replicates_of_one_setting_are_averaged_per_fold(
    helsinki: Path, seeded: tuple[Path, Path], tmp_path: Path
) -> None:
    evaluate({"T": list(seeded)}, helsinki, tmp_path / "r", ONE_TASK, progress=False)
    runs = _runs(tmp_path / "r")
    for method in ("T", "T random init"):
        assert sorted(set(runs.loc[runs["method"] == method, "replicate"])) == [0, 1]
    # Replicate 0 of the twin is seed 7's initialisation, i.e. seed 7's checkpoint itself.
    alone = tmp_path / "alone"
    evaluate({"T": seeded[0]}, helsinki, alone, ONE_TASK, progress=False)
    single = _runs(alone).set_index(["method", "fold"])["metric"]
    rep0 = runs[runs["replicate"] == 0].set_index(["method", "fold"])["metric"]
    assert rep0.loc["T random init"].to_numpy() == pytest.approx(single.loc["T"].to_numpy())
    # The table's cell is the mean over folds of the replicates' mean.
    model = runs[runs["method"] == "T"].groupby("fold")["metric"].mean().mean()
    text = (tmp_path / "r" / "results.md").read_text()
    assert f"| T (linear) | {model:.3g}" in text.replace("**", "")
    assert "2 pretraining replicates (training seeds 7, 3)" in text
    health = pd.read_csv(tmp_path / "r" / "health.csv")
    assert len(health[health["method"] == "T"]) == 2


def test_replicates_must_share_their_settings(
    helsinki: Path, seeded: tuple[Path, Path], checkpoint: Path, tmp_path: Path
) -> None:
    wider = TrainConfig(preset="small", batch_size=16, epochs=1, max_steps=1, progress=False)
    other = pretrain(helsinki, tmp_path / "wide", wider, {**TINY, "d": 32})
    with pytest.raises(GeoJepaError, match="different model settings"):
        evaluate({"T": [seeded[0], other]}, helsinki, tmp_path / "r", ONE_TASK, progress=False)
    assert not (tmp_path / "r").exists()


def test_cli_names_replicates_and_rejects_unnamed_twins(
    helsinki: Path, seeded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "--folds", "3",
            "--group-zoom", "16", "--probes", "linear", "--baselines", "dummy", "--variants", "masked"]
    assert main([*base, "-o", str(tmp_path / "a"), "--checkpoint", f"T={seeded[0]}",
                 "--checkpoint", f"T={seeded[1]}"]) == 0
    assert set(_runs(tmp_path / "a").query("method == 'T'")["replicate"]) == {0, 1}
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint", str(seeded[0]),
                 "--checkpoint", str(seeded[1])]) == 2
    assert "two checkpoints named 'GeoJEPA-T'" in capsys.readouterr().err


def test_dummy_only_evaluation_writes_no_health_table(helsinki: Path, tmp_path: Path) -> None:
    config = EvalConfig(tasks=("building_count",), folds=3, group_zoom=16, baselines=("dummy",))
    files = evaluate({}, helsinki, tmp_path / "r", config, progress=False)
    assert "health" not in files and "Embedding health" not in files["results"].read_text()


def test_selection_takes_the_best_validation_score_not_the_best_test_score() -> None:
    rows = []
    for fold, (a_val, b_val) in enumerate(((1.0, 2.0), (3.0, 2.0), (2.0, 2.0))):
        for method, val, test in (("a", a_val, 10.0), ("b", b_val, 0.0), ("TagPool", 0.0, 5.0)):
            for seed, noise in ((0, -0.5), (1, 0.5)):  # MLP seeds: their mean is compared
                rows.append({"task": "t", "variant": "masked", "probe": "mlp", "fold": fold,
                             "replicate": 0, "seed": seed, "method": method,
                             "role": "baseline" if method == "TagPool" else "model",
                             "val_metric": val + noise, "metric": test, "selected": "epochs=3"})
    runs = pd.DataFrame(rows)
    chosen = select_on_validation(runs, "best", ["a", "b"])
    assert list(chosen.columns) == list(runs.columns) and len(chosen) == 6
    assert set(chosen["method"]) == {"best"} and set(chosen["role"]) == {"model"}
    # Fold 0: a validates better (its test score is worse); fold 1: b; fold 2: a tie -> a.
    picked = chosen.groupby("fold")["selected"].first().str.split(";").str[0].tolist()
    assert picked == ["a", "b", "a"]
    assert chosen.groupby("fold")["metric"].first().tolist() == [10.0, 0.0, 10.0]
    assert chosen["selected"].str.endswith("; epochs=3").all()


def test_best_replicate_is_chosen_on_validation_per_fold_and_keeps_the_role() -> None:
    rows = []
    for fold, vals in enumerate(((1.0, 2.0, 3.0), (3.0, 2.0, 1.0), (2.0, 2.0, 5.0))):
        for replicate, val in enumerate(vals):
            for seed, noise in ((0, -0.5), (1, 0.5)):  # MLP seeds: their mean is compared
                rows.append({"task": "t", "variant": "masked", "probe": "mlp", "fold": fold,
                             "replicate": replicate, "seed": seed, "method": "m random init",
                             "role": "baseline", "val_metric": val + noise,
                             "metric": 10.0 * replicate + fold, "selected": "epochs=3"})
    runs = pd.DataFrame(rows)
    chosen = best_replicate(runs, "m random init", "m random init, best")
    assert list(chosen.columns) == list(runs.columns) and len(chosen) == 6
    assert set(chosen["method"]) == {"m random init, best"} and set(chosen["role"]) == {"baseline"}
    assert set(chosen["replicate"]) == {0}
    # Fold 0: replicate 0 validates best; fold 1: replicate 2, whose test score is the worst;
    # fold 2: a tie between 0 and 1 -> 0.
    assert chosen.groupby("fold")["metric"].first().tolist() == [0.0, 21.0, 2.0]
    picked = chosen.groupby("fold")["selected"].first().tolist()
    assert picked == ["replicate 0; epochs=3", "replicate 2; epochs=3", "replicate 0; epochs=3"]


def test_one_replicate_is_kept_for_every_task_by_its_validation_relative_to_the_others() -> None:
    # Two tasks in different units: on "km" replicate 1 validates 10% worse than replicate 0, on
    # "count" 50% better. The raw mean would keep replicate 0 (the km scores are 100x larger);
    # relative to each task's typical score replicate 1 wins. A third task on which every
    # replicate validates perfectly (0) is a tie and must not break the choice.
    rows = []
    for task, vals in (("km", (100.0, 110.0)), ("count", (2.0, 1.0)), ("flag", (0.0, 0.0))):
        for replicate, val in enumerate(vals):
            for fold in range(2):
                for seed in range(2):
                    rows.append({"task": task, "variant": "masked", "probe": "mlp", "fold": fold,
                                 "replicate": replicate, "seed": seed, "method": "m",
                                 "role": "model", "val_metric": val,
                                 "metric": 10.0 * replicate + fold, "selected": "epochs=3"})
    runs = pd.DataFrame(rows)
    per_task = best_replicate(runs, "m", "m, best")
    assert per_task.groupby("task")["selected"].first().str[:11].to_dict() == {
        "km": "replicate 0", "count": "replicate 1", "flag": "replicate 0"}
    one = best_replicate(runs, "m", "m, one", across_tasks=True)
    assert list(one.columns) == list(runs.columns) and len(one) == 12
    assert set(one["selected"]) == {"replicate 1; epochs=3"} and set(one["replicate"]) == {0}
    assert one.groupby("fold")["metric"].unique().map(list).tolist() == [[10.0], [11.0]]
    # The test rows choose nothing: making replicate 1's test scores terrible keeps it.
    worse = runs.assign(metric=runs["metric"] + 1000.0 * runs["replicate"])
    assert set(best_replicate(worse, "m", "m, one", across_tasks=True)["selected"]) == {
        "replicate 1; epochs=3"}


def test_cli_best_replicate_adds_a_chosen_model_and_a_chosen_initialisation(
    helsinki: Path, seeded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "traffic_signals",
            "--folds", "3", "--group-zoom", "16", "--probes", "linear", "--baselines", "dummy",
            "random", "--variants", "masked", "--best-replicate", "--one-replicate"]
    assert main([*base, "-o", str(tmp_path / "r"), "--checkpoint", f"T={seeded[0]}",
                 "--checkpoint", f"T={seeded[1]}"]) == 0
    runs = _runs(tmp_path / "r")
    roles = runs.groupby("method")["role"].first()
    assert roles["T, best replicate"] == "model"
    assert roles["T random init, best replicate"] == "baseline"
    assert "Dummy, best replicate" not in roles
    assert roles["T, one replicate"] == "model"
    assert roles["T random init, one replicate"] == "baseline"
    for method in ("T", "T random init"):
        mine = runs[runs["method"] == method].set_index(["task", "fold", "replicate"]).sort_index()
        best = runs[runs["method"] == f"{method}, best replicate"].set_index(["task", "fold"])
        one = runs[runs["method"] == f"{method}, one replicate"].set_index(["task", "fold"])
        for fold in range(3):
            for task in ("building_count", "traffic_signals"):
                pair = mine.loc[(task, fold)]
                expect = pair.sort_values("val_metric", kind="stable").iloc[0]
                assert best.loc[(task, fold), "metric"] == expect["metric"]
                assert best.loc[(task, fold), "selected"].startswith(f"replicate {expect.name}; ")
            kept = {one.loc[(task, fold), "selected"][:11] for task in ("building_count", "traffic_signals")}
            assert len(kept) == 1  # one checkpoint for both tasks
            replicate = int(kept.pop().split()[1])
            for task in ("building_count", "traffic_signals"):
                assert one.loc[(task, fold), "metric"] == mine.loc[(task, fold, replicate), "metric"]
    predictions = pd.read_parquet(tmp_path / "r" / "predictions.parquet")
    tile = ["task", "fold", "x", "y"]
    one = runs[runs["method"] == "T, one replicate"]
    kept_replicates = one.set_index(["task", "fold"])["selected"].str.extract(r"^replicate (\d+);")[0]
    for (task, fold), replicate in kept_replicates.astype(int).items():
        kept, source = (predictions[(predictions["method"] == m) & (predictions["task"] == task)
                                    & (predictions["fold"] == fold)] for m in ("T, one replicate", "T"))
        source = source[source["replicate"] == replicate]
        pd.testing.assert_series_equal(kept.set_index(tile)["prediction"].sort_index(),
                                       source.set_index(tile)["prediction"].sort_index())
    text = (tmp_path / "r" / "results.md").read_text()
    assert "| T, best replicate (linear) |" in text and "| T, one replicate (linear) |" in text
    assert "`one replicate`: per probe and fold, the one replicate kept for every task" in text
    one = runs[runs["method"] == "T, one replicate"].groupby("fold")["selected"].first()
    kept = one.str.split().str[1].str.rstrip(";").astype(int).tolist()
    top = max((0, 1), key=lambda r: (kept.count(r), -r))  # most folds, ties to the lower
    assert (f"- T, one replicate (linear): replicate {top} kept on {kept.count(top)}/3 folds, "
            f"`{seeded[top].resolve()}` (per fold: {', '.join(map(str, kept))}).") in text
    assert "T random init, one replicate (linear): replicate" not in text  # only models
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "s"), "--checkpoint", f"T={seeded[0]}"]) == 2
    assert "best replicate needs a checkpoint name given two or more" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_selection_of_two_checkpoints_is_reported_as_a_model(
    helsinki: Path, checkpoint: Path, seeded: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "--folds", "3",
            "--group-zoom", "16", "--probes", "linear", "--baselines", "dummy", "--variants", "masked",
            "--checkpoint", f"a={checkpoint}", "--checkpoint", f"b={seeded[1]}"]
    assert main([*base, "-o", str(tmp_path / "r"), "--select", "best=a,b"]) == 0
    runs = _runs(tmp_path / "r").set_index(["method", "fold"])
    for fold in range(3):
        a, b = runs.loc[("a", fold)], runs.loc[("b", fold)]
        expect = a if a["val_metric"] <= b["val_metric"] else b
        assert runs.loc[("best", fold), "metric"] == expect["metric"]
    text = (tmp_path / "r" / "results.md").read_text()
    assert "| best (linear) |" in text and "whichever of a, b scored best" in text
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "s"), "--select", "best=a,c"]) == 2
    assert "selection 'best' needs two or more of the checkpoint names a, b" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_multi_layer_probing_widens_every_model_feature(
    helsinki: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "--folds", "3",
            "--group-zoom", "16", "--probes", "linear", "--variants", "masked",
            "--baselines", "random", "tagpool", "--checkpoint", f"m={checkpoint}"]
    assert main([*base, "-o", str(tmp_path / "r"), "--layers", "2"]) == 0
    dims = pd.read_csv(tmp_path / "r" / "health.csv").set_index("method")["dims"]
    width = 2 * 2 * TINY["d"]  # [max | mean] of each of the last two blocks
    assert dims["m"] == width and dims["m random init"] == width and dims["TagPool"] == 2 * 384
    assert "last 2 blocks" in (tmp_path / "r" / "results.md").read_text()
    # a model without images has one kind of token: pooling by modality changes nothing
    assert main([*base, "-o", str(tmp_path / "m"), "--pool", "modality"]) == 0
    same = pd.read_csv(tmp_path / "m" / "runs.csv")
    assert pd.read_csv(tmp_path / "m" / "health.csv").set_index("method")["dims"]["m"] == 2 * TINY["d"]
    assert "apart" not in (tmp_path / "m" / "results.md").read_text()
    assert main([*base, "-o", str(tmp_path / "t")]) == 0
    assert pd.read_csv(tmp_path / "t" / "runs.csv")["metric"].equals(same["metric"])
    # the predictor's answers on a grid: every model and untrained twin gets 2d more numbers
    assert main([*base, "-o", str(tmp_path / "p"), "--pool", "predicted"]) == 0
    dims = pd.read_csv(tmp_path / "p" / "health.csv").set_index("method")["dims"]
    assert dims["m"] == dims["m random init"] == 2 * 2 * TINY["d"] and dims["TagPool"] == 2 * 384
    assert "what the JEPA predictor expects" in (tmp_path / "p" / "results.md").read_text()
    predicted = pd.read_csv(tmp_path / "p" / "runs.csv")
    tagpool = predicted["method"] == "TagPool"
    assert predicted.loc[tagpool, "metric"].equals(same.loc[same["method"] == "TagPool", "metric"])
    assert not predicted.loc[~tagpool, "metric"].equals(same.loc[same["method"] != "TagPool", "metric"])
    # each entity kind pooled apart: 4 times the numbers for the models and TagPool alike
    assert main([*base, "-o", str(tmp_path / "k"), "--pool", "kind"]) == 0
    dims = pd.read_csv(tmp_path / "k" / "health.csv").set_index("method")["dims"]
    assert dims["m"] == dims["m random init"] == 4 * 2 * TINY["d"] and dims["TagPool"] == 4 * 2 * 384
    assert "pool each entity kind apart" in (tmp_path / "k" / "results.md").read_text()
    by_kind = pd.read_csv(tmp_path / "k" / "runs.csv").set_index(["method", "fold"])["metric"]
    assert (by_kind != same.set_index(["method", "fold"])["metric"]).groupby("method").any().all()
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "s"), "--layers", "3"]) == 2
    assert "layers must be between 1 and the model's depth 2, got 3" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_set_probe_tokens_concatenate_the_pooled_blocks(helsinki: Path, checkpoint: Path) -> None:
    """With multi-layer probing the set probe reads the same blocks as the tile embedding."""
    ckpt = load_checkpoint(checkpoint)
    one = model_inputs(ckpt, helsinki, tokens=True).tokens
    two = model_inputs(ckpt, helsinki, layers=2, tokens=True).tokens
    assert one is not None and two is not None
    assert one.x.shape[1] == TINY["d"] and two.x.shape == (len(one.x), 2 * TINY["d"])
    np.testing.assert_allclose(two.x[:, TINY["d"]:], one.x, atol=1e-5)  # the last block last
    assert np.array_equal(two.tile, one.tile) and np.array_equal(two.kind, one.kind)
    assert not np.allclose(two.x[:, :TINY["d"]], one.x, atol=1e-2)


def _rewrite_osm(src: Path, dest: Path, id_offset: int) -> Path:
    """Write the objects of ``src`` into a new file (other bytes), their ids moved by ``id_offset``."""
    with osmium.SimpleWriter(str(dest)) as writer:
        for o in osmium.FileProcessor(str(src)):
            if o.is_node():
                writer.add_node(o.replace(id=o.id + id_offset))
            elif o.is_way():
                writer.add_way(o.replace(id=o.id + id_offset, nodes=[n.ref + id_offset for n in o.nodes]))
            else:
                members = [(m.type, m.ref + id_offset, m.role) for m in o.members]
                writer.add_relation(o.replace(id=o.id + id_offset, members=members))
    return dest


@pytest.fixture(scope="module")
def other_files(helsinki: Path, helsinki_pbf: Path) -> dict[str, Path]:
    """Helsinki prepared again from other files: a copy of the extract, and one whose OSM ids
    are all renumbered (other data at the same places)."""
    out = {}
    for name, offset in (("copy", 0), ("renumbered", 10**12)):
        pbf = _rewrite_osm(helsinki_pbf, helsinki.parent / f"{name}.osm.pbf", offset)
        out[name] = helsinki.parent / name
        prepare([pbf], out[name], config=PrepareConfig(zoom=17, workers=0, max_entities=200),
                progress=False)
    return out


def _test_keys(ds: Path) -> tuple[TileDataset, list[str], TileKeys]:
    labels = load_labels(ds).to_pandas()
    return (TileDataset(ds), labels["split"].tolist(),
            tile_keys(TileDataset(ds)).at(labels["x"].to_numpy(), labels["y"].to_numpy()))


def test_seen_by_recognises_the_same_tiles_from_other_input_files(
    helsinki: Path, other_files: dict[str, Path]
) -> None:
    ds, splits, keys = _test_keys(helsinki)
    copy, renumbered = (TileDataset(other_files[n]) for n in ("copy", "renumbered"))
    assert copy.manifest.inputs[0].sha256 != ds.manifest.inputs[0].sha256
    record = pretraining_record(copy, None)
    assert seen_by(record, ds.manifest, splits, keys) == [True] * len(splits)
    assert seen_by(record, ds.manifest, splits) == [None] * len(splits)  # keys not given
    only_train = pretraining_record(copy, ("train",))
    assert seen_by(only_train, ds.manifest, splits, keys) == [s == "train" for s in splits]
    old = {k: v for k, v in record.items() if k != "tiles"}  # a record without tile keys
    assert seen_by(old, ds.manifest, splits, keys) == [None] * len(splits)
    other = pretraining_record(renumbered, None)
    assert seen_by(other, ds.manifest, splits, keys) == [False] * len(splits)
    assert places_covered(other, keys).all()
    assert places_covered(old, keys) is None


def test_tile_keys_hash_place_and_entities(helsinki: Path, other_files: dict[str, Path]) -> None:
    keys, copy = tile_keys(TileDataset(helsinki)), tile_keys(TileDataset(other_files["copy"]))
    same = copy.at(keys.x, keys.y)
    np.testing.assert_array_equal(same.content, keys.content)
    assert len(np.unique(keys.content)) == len(keys.content)
    renumbered = tile_keys(TileDataset(other_files["renumbered"])).at(keys.x, keys.y)
    assert not np.isin(renumbered.content, keys.content).any()
    train = tile_keys(TileDataset(helsinki), ("train",))
    assert len(train.x) == TileDataset(helsinki).num_tiles("train")
    with pytest.raises(GeoJepaError, match="missing"):
        keys.at(keys.x + 10**6, keys.y)


def test_report_says_pretraining_on_other_files_saw_the_tiles(
    helsinki: Path, other_files: dict[str, Path]
) -> None:
    train = TrainConfig(preset="small", batch_size=16, epochs=1, max_steps=2, progress=False,
                        pretrain_splits="all")
    checkpoints = {name: pretrain(other_files[name], helsinki.parent / f"run_{name}", train, TINY)
                   for name in ("copy", "renumbered")}
    out = helsinki.parent / "report_other_files"
    config = EvalConfig(tasks=("bridge",), folds=3, group_zoom=16, probes=("linear",),
                        baselines=("dummy",))
    evaluate(checkpoints, helsinki, out, config, progress=False)
    text = (out / "results.md").read_text()
    assert "- copy: pretraining saw the inputs of 100% of the evaluated test tiles" in text
    assert ("- renumbered: pretraining saw none of the evaluated test tiles (inductive). "
            "Pretraining (on other input files) covered the places of 100%") in text


def test_cli_whitening_grid_is_chosen_on_validation_and_reported(
    helsinki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["evaluate", "--dataset", str(helsinki), "--tasks", "building_count", "--folds", "3",
            "--group-zoom", "16", "--probes", "mlp", "--seeds", "1", "--variants", "masked",
            "--baselines", "tagcount"]
    # TagCount on ~30 train rows per fold has more columns than rows: the default grid cannot
    # estimate a covariance there and fits standardised inputs only, as `--whitening none` does.
    assert main([*base, "-o", str(tmp_path / "d")]) == 0
    default = _runs(tmp_path / "d")
    dims = pd.read_csv(tmp_path / "d" / "health.csv")["dims"]
    assert (default["n_train"] <= dims.min()).all()
    assert default["selected"].str.match(r"^whitening=none,epochs=\d+$").all()
    text = (tmp_path / "d" / "results.md").read_text()
    assert ("standardised only or PCA-whitened with shrinkage 1 or PCA-whitened with shrinkage 10, "
            "chosen per fit on the validation rows (standardised only where a fold has no more "
            "train rows than feature columns)") in text
    assert main([*base, "-o", str(tmp_path / "n"), "--whitening", "none"]) == 0
    plain = _runs(tmp_path / "n")
    assert plain["metric"].tolist() == default["metric"].tolist()
    settings = json.loads((tmp_path / "n" / "settings.json").read_text())
    assert settings["whitening"] == [None]
    assert "chosen per fit" not in (tmp_path / "n" / "results.md").read_text()
    # Asked for whitenings only, the probe whitens (thin SVD) and chooses between them.
    assert main([*base, "-o", str(tmp_path / "w"), "--whitening", "1", "10"]) == 0
    whitened = _runs(tmp_path / "w")
    chosen = whitened["selected"].str.extract(r"^whitening=([^,]+),epochs=\d+$")[0]
    assert chosen.notna().all() and set(chosen) <= {"1", "10"}
    assert not np.allclose(whitened["metric"], plain["metric"])
    assert ("PCA-whitened with shrinkage 1 or PCA-whitened with shrinkage 10, chosen per fit on the "
            "validation rows (`selected`") in (tmp_path / "w" / "results.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "-o", str(tmp_path / "s"), "--whitening", "-1"])
    assert exit_info.value.code == 2
    assert "expected none or a shrinkage >= 0, got '-1'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
