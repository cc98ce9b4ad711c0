"""``geojepa evaluate``: probes on frozen tile embeddings against honest baselines (SPEC section 6).

For every task, input variant (masked: the label-bearing tags and entities removed; unmasked) and
method, probes are fitted on the same spatial folds:

* methods: each GeoJEPA checkpoint (or several replicates of one setting: independent
  pretraining runs, e.g. other seeds, whose fold scores are averaged), and the baselines - Dummy
  (train median), TagPool, TagCount, each checkpoint's own random initialisation (its weights
  before pretraining), and, for a checkpoint that uses images, the same model fed the image
  patches alone;
* protocol ``cv``: k folds over spatial groups (zoom-14 tiles by default); fold ``i`` tests on
  group fold ``i``, selects hyper-parameters and stops early on fold ``i + 1``, trains on the rest;
  optionally repeated with other assignments of the groups to folds;
  protocol ``split``: the dataset's stored train/val/test split, one fold (for large datasets);
  optionally (label efficiency) every fold's train tiles cut to a random few, the same for every
  method, or to several sizes in turn for a learning curve (:func:`learning_curve`; the tile
  embeddings are computed once);
* probes: linear (ridge / logistic) and MLP (several seeds); count tasks are fitted in log space;
* checkpoint selection (optional): a model that takes, per task, fold and replicate, whichever of
  several checkpoints (e.g. epochs of one run) scored best on the fold's validation rows - the
  honest form of the paper's best checkpoint per task, which it chose on the test split;
* replicate selection (optional): for every method with several replicates, and for their
  random initialisations, the one replicate that scored best on the fold's validation rows
  (the seed a user keeps), beside the mean over the replicates.

The report states whether pretraining saw the evaluated test tiles' inputs (never their labels),
from the record each checkpoint keeps of its pretraining tiles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from geojepa.atomic import atomic_folder
from geojepa.dataset.overlap import places_covered, seen_by, tile_keys
from geojepa.dataset.reader import TileDataset
from geojepa.embed import Checkpoint, check_layers, check_pool, load_checkpoint, new_tags
from geojepa.errors import GeoJepaError
from geojepa.features import (
    Features,
    check_tile_embeddings,
    embedding_health,
    model_inputs,
    random_init,
    read_tile_embeddings,
    tag_count_features,
    tag_pool_inputs,
    training_seed,
)
from geojepa.model.jepa import PREDICTED_GRID, TilePool
from geojepa.probes import (
    DEFAULT_WHITENING,
    Fold,
    ProbeResult,
    Whitening,
    check_whitening,
    fit_dummy,
    fit_linear,
    fit_mlp,
    fit_set,
    grouped_folds,
)
from geojepa.report import CURVE_COLUMN, VARIANTS, write_curve, write_report
from geojepa.tasks import (
    LABELS_NAME,
    MASKED_DIR,
    TASKS,
    Task,
    build_tasks,
    load_labels,
    masked_dataset,
    select_tasks,
    tasks_folder,
)

Protocol = Literal["auto", "cv", "split"]
BASELINES = ("dummy", "tagpool", "tagcount", "random", "image")
PROBES = ("linear", "mlp", "set")
MIN_TRAIN_TILES = 5
"""Fewest train tiles per fold that ``train_tiles`` may ask for."""


@dataclass
class EvalConfig:
    """Settings of ``geojepa evaluate``.

    Attributes:
        tasks: Task names (default: all five).
        variants: ``masked`` (the headline) and/or ``unmasked``.
        protocol: ``cv`` (spatial k-fold), ``split`` (the stored split) or ``auto`` (``split``
            when the stored test split has at least ``split_min_test`` tiles, else ``cv``).
        folds: k of the cross-validation.
        repeats: Cross-validations with other assignments of the groups to folds (seeds
            ``seed .. seed + repeats - 1``); fold ``i`` of repeat ``r`` is fold ``r * folds + i``
            of the report. Repeat 0 is the default assignment (largest groups first); later
            ones take the groups in their seed's random order, each to the fold with the fewest
            rows so far (groups of distinct sizes would otherwise land alike every time). More
            repeats make a small region's result depend less on one assignment; each tile is
            then tested once per repeat.
        group_zoom: Zoom of the spatial groups (default: the dataset's split-group zoom, 14).
        probes: Any of ``linear``, ``mlp`` (both on the tile features) and ``set`` (on the
            tiles' token embeddings, :func:`~geojepa.probes.fit_set`; every method with tokens:
            the models, their untrained twins and image-only views, and TagPool's entity tag
            vectors).
        seeds: Seeds per fold of the MLP and set probes.
        baselines: Any of ``dummy``, ``tagpool``, ``tagcount``, ``random`` (untrained model),
            ``image`` (image-only model; only for checkpoints that use images).
        log_counts: Fit count tasks in log space.
        split_min_test: Test tiles that make the stored split large enough for ``auto``.
        tag_count_vocab: Most frequent tags used by TagCount.
        seed: Seed of the folds and of the MLP probes (the random-init baseline is each
            checkpoint's own initialisation, from its training seed).
        batch_size: Tiles per forward pass when embedding.
        layers: Tile embeddings pool the outputs of the encoder's last ``layers`` blocks (1:
            the last block only, SPEC section 4), and the set probe's tokens concatenate them,
            for every model and untrained twin alike.
        pool: ``"tokens"`` (SPEC section 5) pools all of a tile's tokens together;
            ``"modality"`` pools the entities and the image patches of models with both apart
            and concatenates the two (see :meth:`~geojepa.model.jepa.GeoJEPA.embed`);
            ``"kind"`` pools each entity kind (points, lines, polygons, relations) apart too,
            TagPool's tag vectors included; ``"predicted"`` adds the predictor's expectations
            on a grid over the tile (:meth:`~geojepa.model.jepa.GeoJEPA.predict_grid`); for
            every model, untrained twin and image-only baseline alike.
        best_replicate: Also report, for every method with several replicates (pretraining
            runs, and their random initialisations), the replicate chosen per task, probe and
            fold on the validation rows (see :func:`best_replicate`).
        one_replicate: Also report, for the same methods, the one replicate kept for every task
            and input variant, chosen per probe and fold on the validation rows (see
            :func:`best_replicate` with ``across_tasks``), as a user keeps one checkpoint.
        whitening: Input whitenings the MLP and set probes choose from on validation (None:
            standardised only; a number: :func:`~geojepa.probes.whitener`'s shrinkage).
        train_tiles: Label efficiency: fit every probe and baseline on at most this many of
            each fold's train tiles, drawn at random per fold (:func:`fewer_train_tiles`; the
            validation and test tiles stay whole). None: all of them.
    """

    tasks: tuple[str, ...] = tuple(TASKS)
    variants: tuple[str, ...] = VARIANTS
    protocol: Protocol = "auto"
    folds: int = 5
    repeats: int = 1
    group_zoom: int | None = None
    probes: tuple[str, ...] = ("linear", "mlp")
    seeds: int = 3
    baselines: tuple[str, ...] = BASELINES
    log_counts: bool = True
    split_min_test: int = 1000
    tag_count_vocab: int = 2000
    seed: int = 0
    batch_size: int = 64
    layers: int = 1
    pool: TilePool = "tokens"
    best_replicate: bool = False
    one_replicate: bool = False
    whitening: tuple[Whitening, ...] = DEFAULT_WHITENING
    train_tiles: int | None = None

    def validate(self) -> None:
        """Reject unknown names and impossible numbers.

        Raises:
            GeoJepaError: On the first bad setting.
        """
        select_tasks(self.tasks)
        for name, values, allowed in (("variant", self.variants, VARIANTS),
                                      ("probe", self.probes, PROBES),
                                      ("baseline", self.baselines, BASELINES)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise GeoJepaError(f"unknown {name} {bad[0]!r}; choose from {', '.join(allowed)}")
        if self.protocol not in ("auto", "cv", "split"):
            raise GeoJepaError(f"protocol must be auto, cv or split, got {self.protocol!r}")
        if self.folds < 3 or self.seeds < 1 or self.repeats < 1:
            raise GeoJepaError("need at least 3 folds, 1 seed and 1 repeat")
        if self.layers < 1:
            raise GeoJepaError(f"layers must be at least 1, got {self.layers}")
        if self.train_tiles is not None and self.train_tiles < MIN_TRAIN_TILES:
            raise GeoJepaError(f"train_tiles must be at least {MIN_TRAIN_TILES}, got {self.train_tiles}")
        try:
            check_whitening(self.whitening)
        except ValueError as err:
            raise GeoJepaError(str(err)) from err
        check_pool(self.pool)


@dataclass
class Method:
    """Something that turns a dataset into probe inputs (``features(dataset, tokens)``)."""

    name: str
    role: Literal["model", "baseline"]
    features: Callable[[Path, bool], Features | None] | None  # None: Dummy (no features); it
    # returns None for an input it has no features of (external embeddings without that file)
    replicate: int = 0  # which pretraining run of the method (fold scores average them)
    tokens: bool = True  # whether it has token embeddings for the set probe


def default_name(checkpoint: Checkpoint) -> str:
    """``GeoJEPA-<modalities>``, e.g. ``GeoJEPA-GT``."""
    return f"GeoJEPA-{checkpoint.config.modalities}"


CheckpointLike = str | Path | Checkpoint
"""A checkpoint file or a loaded checkpoint."""


def evaluate(
    checkpoints: dict[str, CheckpointLike | Sequence[CheckpointLike]],
    dataset: str | Path,
    out: str | Path,
    config: EvalConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    select: dict[str, Sequence[str]] | None = None,
    embeddings: dict[str, str | Path] | None = None,
) -> dict[str, Path]:
    """Evaluate checkpoints and baselines on a dataset's downstream tasks; write the report.

    Args:
        checkpoints: Display name -> checkpoint file or loaded :class:`Checkpoint`, or a list
            of them: replicates of one setting (independent pretraining runs, e.g. other seeds;
            same model settings), whose fold scores are averaged. May be empty: baselines only.
        dataset: The dataset; its tasks are built first when ``geojepa tasks`` was not run.
        out: Report folder (``runs.csv``, ``results.md``, ``settings.json``,
            ``predictions.parquet``, plots).
        config: Settings.
        overwrite: Replace an existing report folder.
        progress: Show progress.
        select: New model name -> names of ``checkpoints`` to choose from on validation (see
            :func:`select_on_validation`); the candidates must have as many replicates each.
        embeddings: Model name -> tile embeddings another tool made, evaluated as a model
            beside the checkpoints (see :func:`external_file` for the files).

    Returns:
        The written files by stem (see :func:`geojepa.report.write_report`).

    Raises:
        GeoJepaError: Bad settings, missing files, or too few spatial groups for the folds.
    """
    config = config or EvalConfig()
    inputs = _prepare(checkpoints, dataset, out, config, overwrite, progress, select, embeddings)
    out = Path(out)
    with atomic_folder(out, overwrite) as tmp:
        _report(inputs, config, tmp, {}, progress)
    return {p.stem: out / p.name for p in out.iterdir()}


def learning_curve(
    checkpoints: dict[str, CheckpointLike | Sequence[CheckpointLike]],
    dataset: str | Path,
    out: str | Path,
    sizes: Sequence[int | None],
    config: EvalConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    select: dict[str, Sequence[str]] | None = None,
    embeddings: dict[str, str | Path] | None = None,
) -> dict[str, Path]:
    """Evaluate at several numbers of labelled train tiles per fold: the label efficiency of
    every method, on the same folds, probes and baselines.

    Each size is an evaluation of its own (``config`` with ``train_tiles`` set to it), whose
    full report goes to ``out/train_<size>/``; the tile embeddings are computed once for all
    of them (the set probe's token embeddings once per size and task). ``out`` also holds the curve: ``learning_curve.md`` (per variant and task, the mean
    test score of every method and probe at each size, and its paired wins and tests against
    the baselines), ``learning_curve.csv``, ``learning_curve_<task>.png`` and ``settings.json``
    (see :func:`geojepa.report.write_curve`).

    Args:
        checkpoints: As for :func:`evaluate`.
        dataset: As for :func:`evaluate`.
        out: Output folder.
        sizes: Train tiles per fold, at least two distinct; None: all of them. Each is drawn
            at random per fold, independently of the other sizes (:func:`fewer_train_tiles`).
        config: Settings; its ``train_tiles`` is replaced by each size in turn.
        overwrite: Replace an existing output folder.
        progress: Show progress.
        select: As for :func:`evaluate`.
        embeddings: As for :func:`evaluate`.

    Returns:
        The curve's files and the size folders (``train_10``, ``train_all``) by name.

    Raises:
        GeoJepaError: Fewer than two distinct sizes, a size under :data:`MIN_TRAIN_TILES`, or
            any error of :func:`evaluate`.
    """
    config = config or EvalConfig()
    sizes = curve_sizes(sizes)
    inputs = _prepare(checkpoints, dataset, out, config, overwrite, progress, select, embeddings)
    out = Path(out)
    cache: _FeatureCache = {}
    tables, predictions = [], []
    with atomic_folder(out, overwrite) as tmp:
        for n in sizes:
            label = size_label(n)
            table, predicted = _report(inputs, replace(config, train_tiles=n), tmp / f"train_{label}",
                                       cache, progress)
            tables.append(table.assign(**{CURVE_COLUMN: label}))
            predictions.append(predicted.assign(**{CURVE_COLUMN: label}))
        whole = replace(config, train_tiles=None)
        protocol, folds = _folds(inputs.ds, inputs.labels, whole)
        notes = [*_notes(inputs.loaded, inputs.ds, inputs.labels, folds, protocol, whole, inputs.external),
                 _curve_note(sizes, config.seed)]
        settings = {**inputs.settings(protocol, whole), "train_tiles": list(sizes)}
        write_curve(pd.concat(tables, ignore_index=True), tmp, f"Learning curve: {inputs.title}",
                    notes, settings, pd.concat(predictions, ignore_index=True))
    return {p.name: out / p.name for p in out.iterdir()}


def curve_sizes(sizes: Sequence[int | None]) -> list[int | None]:
    """The sizes of :func:`learning_curve`, smallest first, all of them (None) last.

    Raises:
        GeoJepaError: Fewer than two distinct sizes, or one under :data:`MIN_TRAIN_TILES`.
    """
    small = [n for n in sizes if n is not None and n < MIN_TRAIN_TILES]
    if small:
        raise GeoJepaError(f"train_tiles must be at least {MIN_TRAIN_TILES}, got {small[0]}")
    distinct = sorted(set(sizes), key=lambda n: (n is None, n or 0))
    if len(distinct) < 2 or len(distinct) < len(sizes):
        raise GeoJepaError("a learning curve needs two or more distinct train-tile sizes")
    return distinct


def size_label(n: int | None) -> str:
    """A size of :func:`learning_curve` as its report names it: the number, or ``all``."""
    return "all" if n is None else str(n)


def _curve_note(sizes: Sequence[int | None], seed: int) -> str:
    """The learning curve's note on its columns."""
    named = ", ".join(size_label(n) for n in sizes)
    return (f"Learning curve: each column ({named}) fits every probe and baseline on that many "
            f"of each fold's train tiles (`all`: every one), drawn at random per fold (seed "
            f"{seed}; each size drawn on its own, not nested), with the fold's whole validation "
            "and test tiles; a fold with fewer train tiles fits them all. `train_<size>/` holds "
            "each column's full report: fold scores, paired tests, test predictions, embedding "
            "health.")


@dataclass
class _Inputs:
    """What every report of one call shares: the dataset, its labels, the checkpoints and the
    methods built from them."""

    dataset: Path
    ds: TileDataset
    labels: pd.DataFrame
    loaded: dict[str, list[Checkpoint]]
    methods: list[Method]
    select: dict[str, list[str]]
    external: dict[str, Path]

    @property
    def title(self) -> str:
        """The report title's dataset part."""
        return f"{self.dataset.name} (zoom {self.ds.manifest.zoom}, {len(self.labels)} tiles)"

    def settings(self, protocol: str, config: EvalConfig) -> dict[str, Any]:
        """The settings a report records."""
        files = {k: [c.path and str(c.path.resolve()) for c in cs] for k, cs in self.loaded.items()}
        return {"dataset": str(self.dataset.resolve()), "protocol": protocol, **asdict(config),
                "select": self.select, "checkpoints": files,
                "embeddings": {k: str(p.resolve()) for k, p in self.external.items()}}


_FeatureCache = dict[tuple[str, int, Path], tuple[Features, dict[str, Any]]]
"""Features of a method replicate on an input dataset, with their embedding health."""


def _prepare(
    checkpoints: dict[str, CheckpointLike | Sequence[CheckpointLike]], dataset: str | Path,
    out: str | Path, config: EvalConfig, overwrite: bool, progress: bool,
    select: dict[str, Sequence[str]] | None, embeddings: dict[str, str | Path] | None,
) -> _Inputs:
    """Check the settings and the output folder, load the checkpoints and the labels (building
    the tasks first when needed), check the external embeddings and list the methods."""
    config.validate()
    chosen = {name: list(candidates) for name, candidates in (select or {}).items()}
    _check_selections(chosen, checkpoints)
    kept = _replicate_choices(config)
    if kept and not any(len(_replicates(c)) > 1 for c in checkpoints.values()):
        raise GeoJepaError(f"{kept[0][1].removeprefix(', ')} needs a checkpoint name given two or "
                           "more replicates")
    dataset, out = Path(dataset), Path(out)
    if out.exists() and not overwrite:
        raise GeoJepaError("output exists; pass --overwrite to replace it", out)
    ds = TileDataset(dataset)
    loaded = {name: _load_replicates(name, c) for name, c in checkpoints.items()}
    for cs in loaded.values():
        check_layers(cs[0], config.layers)  # replicates share their settings
    if not (tasks_folder(dataset) / LABELS_NAME).is_file():
        build_tasks(dataset, progress=progress)
    labels = load_labels(dataset).to_pandas()
    external = _check_external(embeddings or {}, [*loaded, *chosen], ds, labels, config)
    methods = _methods(loaded, external, ds, labels, config)
    return _Inputs(dataset, ds, labels, loaded, methods, chosen, external)


BASELINE_NAMES = ("Dummy", "TagPool", "TagCount")
"""Method names of the baselines that do not come from a checkpoint."""
EXTERNAL_UNMASKED = "unmasked.parquet"
"""A folder of external embeddings: the file of the unmasked input."""


def external_file(path: Path, source: Path, dataset: Path) -> Path | None:
    """The file of external tile embeddings for one input of the evaluation, or None.

    ``path`` is a Parquet file (see :func:`~geojepa.features.read_tile_embeddings`) of the
    unmasked dataset's tiles, or a folder holding ``unmasked.parquet`` and, for the masked
    inputs, ``masked/<mask>.parquet``: the embeddings of the masked copy ``geojepa tasks``
    wrote to ``DATASET/tasks/masked/<mask>/`` (``building``, ``maxspeed``, ``signals``,
    ``bridge``), each made from that copy alone, so that they never saw the hidden tags.

    Args:
        path: The embeddings' file or folder.
        source: The input: ``dataset`` (unmasked) or a masked copy of it.
        dataset: The evaluated dataset.

    Returns:
        The file for ``source``, or None when there is none (a lone file has no masked input).
    """
    if path.is_file():
        return path if source == dataset else None
    name = EXTERNAL_UNMASKED if source == dataset else f"{MASKED_DIR}/{source.name}.parquet"
    file = path / name
    return file if file.is_file() else None


def _check_external(embeddings: dict[str, str | Path], taken: Sequence[str], ds: TileDataset,
                    labels: pd.DataFrame, config: EvalConfig) -> dict[str, Path]:
    """The external embeddings by name, each file the evaluation reads checked for every
    labelled tile (:func:`~geojepa.features.check_tile_embeddings`)."""
    external = {name: Path(path) for name, path in embeddings.items()}
    x, y = labels["x"].to_numpy(), labels["y"].to_numpy()
    dataset = ds.folder
    for name, path in external.items():
        if name in taken or name in BASELINE_NAMES:
            raise GeoJepaError(f"the name {name!r} is taken by a checkpoint, a selection or a "
                               "baseline", path)
        if not path.exists():
            raise GeoJepaError("no such embeddings file or folder", path)
        files = {file for source in _sources(dataset, config) if (file := external_file(path, source, dataset))}
        if not files:
            raise GeoJepaError(f"no embeddings for the evaluated inputs: expected {EXTERNAL_UNMASKED} "
                               f"or {MASKED_DIR}/<mask>.parquet in the folder (a lone file is the "
                               "unmasked input)", path)
        for file in sorted(files):
            check_tile_embeddings(file, x, y, ds.manifest.zoom)
    return external


def _sources(dataset: Path, config: EvalConfig) -> list[Path]:
    """The input datasets of the evaluated tasks and variants."""
    return list(dict.fromkeys(
        dataset if variant == "unmasked" else masked_dataset(dataset, task.name)
        for task in select_tasks(config.tasks) for variant in config.variants))


def _replicate_choices(config: EvalConfig) -> list[tuple[bool, str, str]]:
    """The :data:`REPLICATE_CHOICES` that ``config`` asks for."""
    return [choice for choice, on in zip(REPLICATE_CHOICES, (config.best_replicate, config.one_replicate),
                                         strict=True) if on]


def _report(inputs: _Inputs, config: EvalConfig, out: Path, cache: _FeatureCache,
            progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit every probe under ``config`` and write the report into ``out``; ``cache`` keeps the
    features for later reports of the same inputs.

    Returns:
        The runs, one row per probe run (without their test predictions), and the test
        predictions (:func:`prediction_table`).
    """
    kept = _replicate_choices(config)
    protocol, folds = _folds(inputs.ds, inputs.labels, config)
    tasks = select_tasks(config.tasks)
    runs, health = _run_all(inputs.methods, tasks, inputs.labels, folds, inputs.dataset, config,
                            cache, progress)
    table = pd.DataFrame(runs)
    table = pd.concat([table, *(select_on_validation(table, name, candidates)
                                for name, candidates in inputs.select.items())], ignore_index=True)
    several = replicated_methods(table) if kept else []
    table = pd.concat([table, *(best_replicate(table, method, f"{method}{suffix}", across)
                                for across, suffix, _ in kept for method in several)], ignore_index=True)
    gz, parents = _parent_tiles(inputs.ds, inputs.labels, config.group_zoom)
    predictions = prediction_table(table, inputs.labels, folds, [f"{gz}/{x}/{y}" for x, y in parents])
    table = table.drop(columns="predictions")
    notes = _notes(inputs.loaded, inputs.ds, inputs.labels, folds, protocol, config, inputs.external)
    notes += [f"{name}: per task, fold and replicate, whichever of {', '.join(candidates)} scored "
              "best on the fold's validation rows (never its test rows); `selected` in runs.csv "
              "names it." for name, candidates in inputs.select.items()]
    notes += [note for _, _, note in kept] if several else []
    settings = inputs.settings(protocol, config)
    notes += deployed_notes(table, settings["checkpoints"]) if several and config.one_replicate else []
    write_report(table, out, f"GeoJEPA downstream evaluation: {inputs.title}", notes, settings,
                 pd.DataFrame(health) if health else None, predictions)
    return table, predictions


SELECTION_KEYS = ["task", "variant", "probe", "fold", "replicate"]
BEST_SUFFIX = ", best replicate"
"""Appended to a method's name for its replicate chosen on validation per task."""
BEST_REPLICATE_NOTE = (
    f"`{BEST_SUFFIX.removeprefix(', ')}`: per task, probe and fold, the one replicate (pretraining "
    "run, or the random initialisation of one) whose probe scored best on the fold's validation "
    "rows (never its test rows): one model kept out of several, as a user keeps the seed that "
    "validates best; compare it with the random initialisations chosen the same way, not with "
    "their mean. `selected` in runs.csv names the replicate.")
"""The report's note on :data:`BEST_SUFFIX` methods."""
ONE_SUFFIX = ", one replicate"
"""Appended to a method's name for its one replicate chosen on validation for all tasks."""
ONE_REPLICATE_NOTE = (
    f"`{ONE_SUFFIX.removeprefix(', ')}`: per probe and fold, the one replicate kept for every "
    "task and input variant: the lowest mean, over them, of its validation score divided by the "
    "mean validation score of all the method's replicates (never the test rows): one checkpoint "
    "kept out of several for all tasks, as a user deploys one. Compare it with the random "
    "initialisations kept the same way. `selected` in runs.csv names it.")
"""The report's note on :data:`ONE_SUFFIX` methods."""
REPLICATE_CHOICES = ((False, BEST_SUFFIX, BEST_REPLICATE_NOTE), (True, ONE_SUFFIX, ONE_REPLICATE_NOTE))
"""``(across_tasks, suffix, note)`` of ``--best-replicate`` and ``--one-replicate``."""


def _lowest_validation(rows: pd.DataFrame, keys: list[str], choice: str,
                       order: Sequence[object], scores: pd.Series | None = None) -> pd.DataFrame:
    """The rows of whichever value of column ``choice`` has the lowest mean validation score
    (over MLP seeds, or over whatever else ``keys`` leaves out) per ``keys``; ties go to the
    value earlier in ``order``. ``scores`` replaces the rows' ``val_metric`` in the choice."""
    val = rows.assign(val_metric=rows["val_metric"] if scores is None else scores)
    val = val.groupby([*keys, choice], as_index=False)["val_metric"].mean()
    val["order"] = val[choice].map(list(order).index)
    best = (val.sort_values([*keys, "val_metric", "order"])
            .drop_duplicates(keys)[[*keys, choice]])
    return rows.merge(best, on=[*keys, choice])


def select_on_validation(runs: pd.DataFrame, name: str, candidates: Sequence[str]) -> pd.DataFrame:
    """The runs of a model that picks one of several checkpoints on the validation rows.

    Per task, input variant, probe, fold and pretraining replicate, it takes the candidate whose
    probe has the lowest validation score (mean over the MLP seeds; ties go to the earlier
    candidate) and copies that candidate's runs, test scores included. The test rows choose
    nothing, as they choose no probe setting.

    Args:
        runs: Probe runs (the rows of ``runs.csv``) that include the candidates' runs.
        name: Method name of the selected model.
        candidates: Model names in ``runs`` to choose from, in order of preference on ties.

    Returns:
        The chosen runs, renamed ``name``; ``selected`` starts with the chosen candidate.
    """
    rows = runs[runs["method"].isin(candidates) & (runs["role"] == "model")]
    chosen = _lowest_validation(rows, SELECTION_KEYS, "method", candidates)
    chosen = chosen.assign(selected=chosen["method"] + "; " + chosen["selected"].astype(str),
                           method=name)
    return chosen[list(runs.columns)]


def best_replicate(runs: pd.DataFrame, method: str, name: str, across_tasks: bool = False) -> pd.DataFrame:
    """The runs of one replicate of a method, chosen per task, variant, probe and fold on the
    validation rows, or per probe and fold for every task and variant alike.

    A replicate is one pretraining run (or the random initialisation of one); keeping the run
    whose probe validates best is what a user with several seeds does. The replicate with the
    lowest validation score (mean over the MLP seeds; ties go to the lower replicate) gives its
    runs, test scores included; the test rows choose nothing. Across tasks, each task's (and
    variant's) validation scores are first divided by their mean over the method's replicates,
    so that tasks in different units weigh alike, and the lowest mean ratio wins: the one
    checkpoint a user would keep for all tasks.

    Args:
        runs: Probe runs (the rows of ``runs.csv``) that include the method's replicates.
        method: Method whose replicates to choose from; the chosen runs keep its role.
        name: Method name of the chosen replicate.
        across_tasks: Keep one replicate per probe and fold for every task and variant.

    Returns:
        The chosen runs, renamed ``name``, as replicate 0; ``selected`` starts with
        ``replicate R``, the chosen one.
    """
    rows = runs[runs["method"] == method]
    keys = [key for key in SELECTION_KEYS if key != "replicate"]
    order = sorted(set(rows["replicate"]))
    if across_tasks:
        typical = rows.groupby(keys)["val_metric"].transform("mean")
        ratios = (rows["val_metric"] / typical.where(typical > 0)).fillna(1.0)  # all perfect: a tie
        chosen = _lowest_validation(rows, ["probe", "fold"], "replicate", order, ratios)
    else:
        chosen = _lowest_validation(rows, keys, "replicate", order)
    chosen = chosen.assign(
        selected="replicate " + chosen["replicate"].astype(str) + "; "
        + chosen["selected"].astype(str), method=name, replicate=0)
    return chosen[list(runs.columns)]


def deployed_notes(runs: pd.DataFrame, paths: dict[str, Sequence[object]]) -> list[str]:
    """Report lines on the checkpoint to deploy: per one-replicate model and probe, the replicate
    kept on most folds (ties: the lower), its file, and the replicate kept on each fold.

    Args:
        runs: Probe runs that include the ``ONE_SUFFIX`` methods.
        paths: Per checkpoint name, its replicates' files (None for one built in memory).
    """
    notes = []
    rows = runs[runs["method"].str.endswith(ONE_SUFFIX) & (runs["role"] == "model")]
    for (method, probe), group in rows.groupby(["method", "probe"], sort=False):
        kept = kept_replicates(group.groupby("fold")["selected"].first())
        counts = kept.value_counts()
        top = int(min(counts.index[counts == counts.max()]))
        files = paths.get(method.removesuffix(ONE_SUFFIX))
        path = files[top] if files else None
        notes.append(f"{method} ({probe}): replicate {top} kept on {counts[top]}/{len(kept)} folds"
                     + (f", `{path}`" if path else "")
                     + f" (per fold: {', '.join(str(r) for r in kept)}).")
    return notes


def kept_replicates(selected: pd.Series) -> pd.Series:
    """The replicate each kept run came from, read from the ``selected`` column that
    :func:`best_replicate` writes (``replicate R; ...``)."""
    return selected.str.extract(r"^replicate (\d+);", expand=False).astype(int)


def replicated_methods(runs: pd.DataFrame) -> list[str]:
    """Methods of ``runs`` with two or more replicates (pretraining runs), in order of first
    appearance."""
    counts = runs.groupby("method", sort=False)["replicate"].nunique()
    return list(counts.index[counts > 1])


def _check_selections(
    select: dict[str, list[str]], checkpoints: dict[str, CheckpointLike | Sequence[CheckpointLike]],
) -> None:
    """Reject selections whose name is taken or whose candidates are unknown or unmatched, before
    any checkpoint is loaded or task built."""
    for name, candidates in select.items():
        if name in checkpoints:
            raise GeoJepaError(f"selection {name!r} has the name of a checkpoint; give it another")
        unknown = [c for c in candidates if c not in checkpoints]
        if unknown or len(candidates) < 2:
            raise GeoJepaError(f"selection {name!r} needs two or more of the checkpoint names "
                               f"{', '.join(checkpoints) or '(none given)'}; got {', '.join(candidates)}")
        if len({len(_replicates(checkpoints[c])) for c in candidates}) > 1:
            raise GeoJepaError(f"the candidates of selection {name!r} have different numbers of "
                               "replicates")


def _folds(ds: TileDataset, labels: pd.DataFrame, config: EvalConfig) -> tuple[str, list[Fold]]:
    protocol = config.protocol
    if protocol == "auto":
        protocol = "split" if int((labels["split"] == "test").sum()) >= config.split_min_test else "cv"
    if protocol == "split":
        if config.repeats > 1:
            raise GeoJepaError("repeats need the cv protocol; the stored split is one fold", ds.folder)
        idx = {s: np.flatnonzero(labels["split"].to_numpy() == s) for s in ("train", "val", "test")}
        if any(len(v) == 0 for v in idx.values()):
            raise GeoJepaError("the stored split has an empty train, val or test part; use --protocol cv",
                               ds.folder)
        folds = [Fold(0, idx["train"], idx["val"], idx["test"])]
    else:
        folds = repeated_spatial_folds(ds, labels, config.group_zoom, config.folds, config.seed, config.repeats)
    if config.train_tiles is not None:
        folds = [fewer_train_tiles(fold, config.train_tiles, config.seed) for fold in folds]
    return protocol, folds


def fewer_train_tiles(fold: Fold, n: int, seed: int) -> Fold:
    """``fold`` with ``n`` of its train rows, drawn at random (seeded by ``seed`` and the fold's
    index, so every method and probe gets the same ones), sorted; the whole fold when it has
    no more than ``n``. Validation and test rows are kept."""
    if n >= len(fold.train):
        return fold
    rng = np.random.default_rng([seed, fold.index])
    return replace(fold, train=np.sort(rng.choice(fold.train, n, replace=False)))


def repeated_spatial_folds(ds: TileDataset, labels: pd.DataFrame, group_zoom: int | None, folds: int,
                           seed: int, repeats: int) -> list[Fold]:
    """The folds of :func:`evaluate` under the cv protocol: ``repeats`` assignments of the groups
    to ``folds`` folds (:func:`spatial_folds` with seeds ``seed .. seed + repeats - 1``; the first
    places the largest groups first, the others take them in random order). Fold ``i`` of repeat
    ``r`` has index ``r * folds + i``.

    Raises:
        GeoJepaError: As :func:`spatial_folds`.
    """
    return [replace(fold, index=repeat * folds + fold.index)
            for repeat in range(repeats)
            for fold in spatial_folds(ds, labels, group_zoom, folds, seed + repeat, by_size=repeat == 0)]


def spatial_folds(ds: TileDataset, labels: pd.DataFrame, group_zoom: int | None, folds: int,
                  seed: int, by_size: bool = True) -> list[Fold]:
    """The cross-validation folds of :func:`evaluate`: tiles grouped by their zoom-``group_zoom``
    parent tile, whole groups per fold (:func:`geojepa.probes.grouped_folds`).

    Args:
        ds: The dataset (its zoom; its default group zoom when ``group_zoom`` is None).
        labels: One row per tile with tile columns ``x`` and ``y``, in the order the folds index.
        group_zoom: Zoom of the groups; None = the dataset's.
        folds: Number of folds.
        seed: Seed of the assignment of groups to folds.
        by_size: Place the largest groups first (see :func:`geojepa.probes.grouped_folds`).

    Raises:
        GeoJepaError: If ``group_zoom`` is outside ``0..zoom`` or there are too few groups.
    """
    gz, groups = _parent_tiles(ds, labels, group_zoom)
    try:
        return grouped_folds(groups, folds, seed, by_size)
    except ValueError as err:
        raise GeoJepaError(f"{err} (zoom-{gz} groups)", ds.folder) from err


def _parent_tiles(ds: TileDataset, labels: pd.DataFrame, group_zoom: int | None,
                  ) -> tuple[int, NDArray[np.int64]]:
    """The group zoom (None: the dataset's) and every tile's ``[N, 2]`` parent ``(x, y)`` there."""
    gz = ds.manifest.group_zoom if group_zoom is None else group_zoom
    if not 0 <= gz <= ds.manifest.zoom:
        raise GeoJepaError(f"group zoom must be in 0..{ds.manifest.zoom}, got {gz}")
    shift = ds.manifest.zoom - gz
    return gz, np.stack([labels["x"].to_numpy() >> shift, labels["y"].to_numpy() >> shift], axis=1)


PREDICTION_KEYS = ["task", "variant", "method", "role", "replicate", "probe", "fold", "seed"]
"""Columns of ``predictions.parquet`` copied from the probe run a prediction belongs to."""


def prediction_table(runs: pd.DataFrame, labels: pd.DataFrame, folds: Sequence[Fold],
                     groups: Sequence[str]) -> pd.DataFrame:
    """One row per test tile of every probe run: what the probe predicted and the true label.

    Args:
        runs: Probe runs with a ``predictions`` column: each run's predictions on its fold's
            test rows, in the fold's order.
        labels: One row per tile (columns ``x``, ``y`` and one per task), in the folds' order.
        folds: The folds the runs name by ``fold``.
        groups: Every tile's spatial group, as ``"z/x/y"`` of its parent tile.

    Returns:
        Columns :data:`PREDICTION_KEYS`, ``x``, ``y`` (the tile), ``group``, ``label`` and
        ``prediction`` (original label space; binary tasks 0/1). The mean absolute difference of
        ``label`` and ``prediction`` over one run's rows is its ``metric``.
    """
    tests = {fold.index: fold.test for fold in folds}
    rows = [tests[fold] for fold in runs["fold"]]
    table = runs[PREDICTION_KEYS].loc[runs.index.repeat([len(r) for r in rows])].reset_index(drop=True)
    index = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    names = np.asarray(groups, dtype=object)
    return table.assign(
        x=labels["x"].to_numpy()[index], y=labels["y"].to_numpy()[index], group=names[index],
        label=np.concatenate([labels[task].to_numpy(np.float64)[r]
                              for task, r in zip(runs["task"], rows, strict=True)] or [[]]),
        prediction=np.concatenate([np.asarray(p, np.float64) for p in runs["predictions"]] or [[]]))


def _replicates(given: CheckpointLike | Sequence[CheckpointLike]) -> list[CheckpointLike]:
    """One method's checkpoints as a list: one checkpoint, or its replicates."""
    return [given] if isinstance(given, (str, Path, Checkpoint)) else list(given)


def _load_replicates(name: str, given: CheckpointLike | Sequence[CheckpointLike]) -> list[Checkpoint]:
    """Load one method's checkpoints; replicates must share the model settings."""
    items = _replicates(given)
    if not items:
        raise GeoJepaError(f"no checkpoint given for {name!r}")
    loaded = [c if isinstance(c, Checkpoint) else load_checkpoint(c) for c in items]
    for other in loaded[1:]:
        if other.config.to_dict() != loaded[0].config.to_dict():
            raise GeoJepaError(f"the replicates of {name!r} have different model settings; give "
                               "them different names", other.path)
    return loaded


def _methods(loaded: dict[str, list[Checkpoint]], external: dict[str, Path], ds: TileDataset,
             labels: pd.DataFrame, config: EvalConfig) -> list[Method]:
    vocab = ds.vocabulary().column("tag").to_pylist()
    x, y = labels["x"].to_numpy(), labels["y"].to_numpy()

    def features(ckpt: Checkpoint, image_only: bool = False) -> Callable[[Path, bool], Features]:
        return lambda d, tokens: model_inputs(ckpt, d, image_only, config.batch_size, config.layers,
                                              config.pool, tokens)

    def read(path: Path) -> Callable[[Path, bool], Features | None]:
        def inputs(source: Path, _tokens: bool) -> Features | None:
            file = external_file(path, source, ds.folder)
            return None if file is None else Features(read_tile_embeddings(file, x, y, ds.manifest.zoom))
        return inputs

    methods = [Method(name, "model", features(c), r)
               for name, cs in loaded.items() for r, c in enumerate(cs)]
    methods.extend(Method(name, "model", read(path), tokens=False) for name, path in external.items())
    if "random" in config.baselines:
        for names, inits in _same_initialisations(loaded):
            label = f"{names[0]} random init" if len(names) == 1 else f"random init of {', '.join(names)}"
            methods.extend(Method(label, "baseline", features(random_init(c)), r)
                           for r, c in enumerate(inits))
    for name, cs in loaded.items():
        if "image" in config.baselines and cs[0].config.uses_images:
            methods.extend(Method(f"{name} image only", "baseline", features(c, True), r)
                           for r, c in enumerate(cs))
    if "tagpool" in config.baselines:
        methods.append(Method("TagPool", "baseline",
                              lambda d, tokens: tag_pool_inputs(d, vocab, ds.folder, tokens,
                                                                by_kind=config.pool == "kind")))
    if "tagcount" in config.baselines:
        methods.append(Method("TagCount", "baseline", lambda d, _: Features(
            tag_count_features(d, vocab, config.tag_count_vocab)), tokens=False))
    if "dummy" in config.baselines:
        methods.append(Method("Dummy", "baseline", None))
    return methods


def _same_initialisations(loaded: dict[str, list[Checkpoint]]) -> list[tuple[list[str], list[Checkpoint]]]:
    """Methods grouped by the initial weights of their replicates (settings, vocabulary and
    training seed of each): each group gets one untrained twin per distinct initialisation, in
    the order of the first method's replicates."""
    groups: dict[str, tuple[list[str], list[Checkpoint]]] = {}
    for name, cs in loaded.items():
        inits: dict[str, Checkpoint] = {}  # first checkpoint of each initialisation, in order
        for c in cs:
            inits.setdefault(_initial_weights(c), c)
        groups.setdefault(json.dumps(sorted(inits)), ([], list(inits.values())))[0].append(name)
    return list(groups.values())


def _initial_weights(ckpt: Checkpoint) -> str:
    """What fixes a checkpoint's initial weights: its settings, vocabulary and training seed."""
    return json.dumps([ckpt.config.to_dict(), ckpt.vocabulary, training_seed(ckpt)],
                      sort_keys=True, default=str)


def _run_all(
    methods: list[Method], tasks: list[Task], labels: pd.DataFrame, folds: list[Fold],
    dataset: Path, config: EvalConfig, cache: _FeatureCache, progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fit every probe; tile features are computed once per method and input dataset (kept in
    ``cache``), token embeddings (for the set probe) once per method and task, and dropped
    after it.

    Returns:
        One row per probe run, and the embedding health of every method's features on every
        input dataset.
    """
    health: list[dict[str, Any]] = []
    reported: set[tuple[str, int, Path]] = set()
    need_tokens = "set" in config.probes
    fits_per_fold = sum(_probe_runs(config, m) for m in methods)
    total = len(tasks) * len(config.variants) * len(folds) * fits_per_fold
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), disable=not progress)
    runs: list[dict[str, Any]] = []
    with bar:
        job = bar.add_task("probes", total=total)
        for task in tasks:
            y = labels[task.name].to_numpy().astype(np.float64)
            for variant in config.variants:
                source = dataset if variant == "unmasked" else masked_dataset(dataset, task.name)
                input_name = variant if variant == "unmasked" else f"{variant}/{source.name}"
                for method in methods:
                    bar.update(job, description=f"{task.name} {variant} {method.name}")
                    x = None
                    if method.features is not None:
                        key = (method.name, method.replicate, source)
                        tokens = need_tokens and method.tokens
                        if key not in cache or (tokens and cache[key][0].tokens is None):
                            given = method.features(source, tokens)
                            if given is None:  # no input of this variant: no cells
                                bar.advance(job, len(folds) * _probe_runs(config, method))
                                continue
                            x = _checked(given, len(y), source)
                            stats = cache[key][1] if key in cache else {
                                "method": method.name, "replicate": method.replicate,
                                "input": input_name, **embedding_health(x.tile)}
                            cache[key] = (x, stats)
                        x, stats = cache[key]
                        if key not in reported:
                            reported.add(key)
                            health.append(stats)
                        cache[key] = (Features(x.tile), stats)  # tokens are big: keep them for this fit only
                    with _one_thread():
                        rows = _fit_method(method, x, y, task, folds, config)
                    for row in rows:
                        runs.append({"task": task.name, "kind": task.kind, "variant": variant,
                                     "method": method.name, "role": method.role,
                                     "replicate": method.replicate, **row})
                        bar.advance(job)
    return runs, health


@contextmanager
def _one_thread() -> Iterator[None]:
    """Fit probes on one thread: small matrices gain nothing from more, and the numbers then do
    not depend on the machine's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _probe_runs(config: EvalConfig, method: Method) -> int:
    """Probe fits per fold of one method (the Dummy's one)."""
    if method.features is None:
        return 1
    sets = "set" in config.probes and method.tokens
    return ("linear" in config.probes) + (("mlp" in config.probes) + sets) * config.seeds


def _checked(x: Features, rows: int, source: Path) -> Features:
    for n in [x.tile.shape[0]] + ([] if x.tokens is None else [x.tokens.num_tiles]):
        if n != rows:
            raise GeoJepaError(f"features have {n} rows for {rows} labelled tiles", source)
    return x


def _fit_method(
    method: Method, x: Features | None, y: NDArray[np.float64], task: Task,
    folds: list[Fold], config: EvalConfig,
) -> list[dict[str, Any]]:
    log = config.log_counts and task.count
    seeds = range(config.seeds)  # the run's seed index; the probe's seed is config.seed + it
    rows = []
    for fold in folds:
        fits: list[tuple[str, int, ProbeResult]] = []
        if x is None:
            fits.append(("dummy", 0, fit_dummy(y, fold, task.kind)))
        else:
            if "linear" in config.probes:
                fits.append(("linear", 0, fit_linear(x.tile, y, fold, task.kind, log_target=log)))
            if "mlp" in config.probes:
                fits.extend(("mlp", s, fit_mlp(x.tile, y, fold, task.kind, log_target=log,
                                               seed=config.seed + s, whitening=config.whitening))
                            for s in seeds)
            if x.tokens is not None:
                fits.extend(("set", s, fit_set(x.tokens, y, fold, task.kind, log_target=log,
                                               seed=config.seed + s, whitening=config.whitening))
                            for s in seeds)
        for probe, seed, r in fits:
            rows.append({"probe": probe, "fold": fold.index, "seed": seed, "metric": r.metric,
                         "val_metric": r.val_metric, "constant": r.constant,
                         "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
                         "selected": r.selected, "predictions": r.predictions})
    return rows


def _notes(
    loaded: dict[str, list[Checkpoint]], ds: TileDataset, labels: pd.DataFrame, folds: list[Fold],
    protocol: str, config: EvalConfig, external: dict[str, Path],
) -> list[str]:
    if protocol == "cv":
        gz = ds.manifest.group_zoom if config.group_zoom is None else config.group_zoom
        sizes = ", ".join(str(len(f.test)) for f in folds)
        repeated = "" if config.repeats == 1 else (
            f", repeated {config.repeats} times with other assignments of the groups to folds "
            f"(seeds {config.seed}-{config.seed + config.repeats - 1}; repeat 0 places the "
            "largest groups first, the others take the groups in random order; fold "
            f"r*{config.folds}+i is fold i of repeat r; each tile is tested once per repeat, so "
            f"the {len(folds)} folds are not independent)")
        notes = [(f"Protocol: {config.folds}-fold cross-validation over zoom-{gz} spatial groups"
                  f"{repeated} (test tiles per fold: {sizes}); validation = the next fold of the "
                  "same repeat; the test fold is never used for selection or early stopping.")]
    else:
        notes = [(f"Protocol: the dataset's stored split ({len(folds[0].train)} train, "
                 f"{len(folds[0].val)} val, {len(folds[0].test)} test tiles).")]
    if config.train_tiles is not None:
        fitted = sorted({len(f.train) for f in folds})
        notes.append(f"Label efficiency: every probe and baseline is fitted on at most "
                     f"{config.train_tiles} of each fold's train tiles ({', '.join(map(str, fitted))} "
                     f"here), drawn at random per fold (seed {config.seed}); the validation and test "
                     "tiles are the whole fold's.")
    if "mlp" in config.probes:
        notes.append(f"MLP probe: 512 hidden, GELU, AdamW, early stopping on validation; "
                     f"{config.seeds} seeds per fold (cells average them).")
    if {"mlp", "set"} & set(config.probes):
        notes.append(_whitening_note(config.whitening))
    if "set" in config.probes:
        notes.append("Set probe (`set`): on each tile's token embeddings (entities, image patches; "
                     "TagPool's entity tag vectors), not the pooled tile embedding: a shared "
                     "2-layer token MLP (64 wide), [mean, max] pooled per kind of token, a linear "
                     f"head; AdamW, early stopping on validation; {config.seeds} seeds per fold. "
                     "TagCount and embeddings given as files have no tokens, so no set-probe cells.")
    if config.layers > 1:
        notes.append(f"Tile embeddings (of every model and random-init twin) pool the outputs of "
                     f"the encoder's last {config.layers} blocks, not only the last (SPEC: 1); "
                     "the set probe's tokens concatenate the same blocks' outputs.")
    if config.pool == "predicted":
        notes.append("Tile embeddings (of every model and random-init twin) add, to the pooled "
                     "tokens, [max, mean] of what the JEPA predictor expects at each cell of an "
                     f"{PREDICTED_GRID} x {PREDICTED_GRID} grid over the tile from all its tokens "
                     "(not in the SPEC): what the inputs imply about entities they lack.")
    if config.pool == "kind":
        notes.append("Tile embeddings (of every model, random-init twin and TagPool) pool each "
                     "entity kind apart, [max, mean] over the tile's points, lines, polygons and "
                     "relations, concatenated (zeros for a kind the tile lacks), and the image "
                     "patches of models with images apart too, not all tokens together (SPEC).")
    if config.pool not in ("tokens", "kind") and any(cs[0].config.uses_images for cs in loaded.values()):
        notes.append("Tile embeddings of models with images pool their entity tokens and their "
                     "image patches apart ([max, mean] of each, concatenated), not all tokens "
                     "together (SPEC).")
    if config.log_counts:
        notes.append("Count tasks (building_count, traffic_signals) are fitted in log space; "
                     "predictions are clamped to the training label range.")
    test_rows = np.concatenate([f.test for f in folds])
    splits = labels["split"].to_numpy()[test_rows].tolist()
    keys = None
    if any(_other_inputs(c, ds) for cs in loaded.values() for c in cs):
        x, y = (labels[c].to_numpy().astype(np.int64)[test_rows] for c in ("x", "y"))
        keys = tile_keys(ds).at(x, y)
    for name, cs in loaded.items():
        seen = [seen_by(c.pretrain_data, ds.manifest, splits, keys) for c in cs]
        most = max(range(len(cs)), key=lambda i: _seen_share(seen[i]))  # the one that saw most
        note = _seen_note(seen[most])
        if keys is not None and _other_inputs(cs[most], ds):
            covered = places_covered(cs[most].pretrain_data, keys)
            note += _place_note(covered, _seen_share(seen[most]))
        note += _vocabulary_note(cs[0], ds)
        if len(cs) > 1:
            seeds = ", ".join(str(training_seed(c)) for c in cs)
            note += (f" {len(cs)} pretraining replicates (training seeds {seeds}); its cells and "
                     "its random-init twins average them per fold.")
        notes.append(f"{name}: {note}")
    notes.extend(f"{name}: {_external_note(path, ds.folder, config)}" for name, path in external.items())
    return notes


def _external_note(path: Path, dataset: Path, config: EvalConfig) -> str:
    """What the report says of external embeddings: where from, which inputs, what is unknown."""
    given = [source for source in _sources(dataset, config) if external_file(path, source, dataset)]
    named = ", ".join("unmasked" if s == dataset else f"masked {s.name}" for s in given)
    note = (f"tile embeddings read from `{path}` ({named}); not a GeoJEPA checkpoint, so no "
            "random-init twin, and geojepa cannot tell which tiles their training saw: treat as "
            "transductive unless you know otherwise.")
    lacking = [task.name for task in select_tasks(config.tasks) if "masked" in config.variants
               and masked_dataset(dataset, task.name) not in given]
    if lacking:
        note += (f" No masked input for {', '.join(lacking)}: those cells are empty (embeddings "
                 "of the unmasked tiles hold the tags the masked input hides).")
    return note


def _whitening_note(whitening: Sequence[Whitening]) -> str:
    """How the MLP and set probes' inputs were whitened."""
    names = " or ".join("standardised only" if w is None else f"PCA-whitened with shrinkage {w:g}"
                        for w in whitening)
    chosen = ", chosen per fit on the validation rows" if len(whitening) > 1 else ""
    if len(whitening) > 1 and None in whitening:
        chosen += " (standardised only where a fold has no more train rows than feature columns)"
    return (f"MLP and set probes: inputs {names}{chosen} (`selected` in runs.csv names it; "
            "whitening lets a gradient-trained probe read directions of low variance that "
            "ridge regression reads in closed form).")


def _vocabulary_note(ckpt: Checkpoint, ds: TileDataset) -> str:
    """What a note adds when the dataset has tags the model's pretraining never saw."""
    if "T" not in ckpt.config.modalities:
        return ""
    new = len(new_tags(ckpt, ds.folder))
    if not new:
        return ""
    total = ds.vocabulary().num_rows
    if ckpt.config.uses_tag_table:
        return (f" {new} of the dataset's {total} tags are not in its pretraining vocabulary; its "
                "frozen text tag encoder reads them (trained weights unchanged).")
    return (f" {new} of the dataset's {total} tags are not in its pretraining vocabulary; its "
            "learned tag table has no row for them, so they count as absent.")


def _other_inputs(ckpt: Checkpoint, ds: TileDataset) -> bool:
    """Whether a checkpoint records pretraining on input files none of which made ``ds``."""
    record = ckpt.pretrain_data
    return bool(record) and not set(record["inputs"]) & {f.sha256 for f in ds.manifest.inputs}


def _place_note(covered: NDArray[np.bool_] | None, seen_share: float) -> str:
    """What a note adds when pretraining read other input files: the share of test tiles whose
    places it covered with other data."""
    if covered is None or seen_share > 1.0 or covered.mean() <= seen_share:
        return ""
    return (f" Pretraining (on other input files) covered the places of {covered.mean():.0%} of "
            "the test tiles with other data (another extract or version of the OSM data, or a "
            "synthetic city at the same coordinates).")


def _seen_share(seen: Sequence[bool | None]) -> float:
    """Share of the test tiles pretraining saw; 2 when unknown (worse than all of them)."""
    if any(s is None for s in seen):
        return 2.0
    return sum(bool(s) for s in seen) / max(1, len(seen))


def _seen_note(seen: Sequence[bool | None]) -> str:
    share = _seen_share(seen)
    if share > 1.0:
        return ("cannot tell which test tiles pretraining saw (no record, the same OSM data cut "
                "into other tiles, or other input files and no tile keys): treat as "
                "transductive.")
    if share == 0:
        return "pretraining saw none of the evaluated test tiles (inductive)."
    return (f"pretraining saw the inputs of {share:.0%} of the evaluated test tiles, never their "
            "labels: **transductive**.")

