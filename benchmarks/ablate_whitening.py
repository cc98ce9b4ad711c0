"""Does whitening the probe inputs change who wins? The MLP and set probes with and without it.

On the 8 km synthetic city the pretrained model's MLP probe read masked max_speed *worse* than
its linear probe (2.0 against 1.7 km/h), while TagPool's MLP beat its linear probe: Adam steps
along the feature axes, and a label held in directions of low variance, which ridge regression
reads in closed form, is barely reached by an early-stopped MLP on standardised features. This
probes the same features with the inputs standardised only (``none``) and PCA-whitened with
shrinkage 0.1, 1 and 10 (:func:`geojepa.probes.whitener`), and with the default grid of
``geojepa evaluate`` (``none``, 1, 10, chosen per fit on the validation rows; for a regression
task that is the single setting with the lowest validation MAE, so it is read off the single
runs here rather than fitted again).

Methods: one checkpoint, its random initialisation and TagPool, on one masked task of a
dataset, on the 5 folds over zoom-14 groups of ``geojepa evaluate``; tile embeddings pooled by
modality as in the session-25/26 city reports. Fold scores of the MLP average ``--seeds`` probe
seeds; the set probe (``--set``, about 30 s a fit on the 8 km city) uses seed 0.

Run by hand from the repository root (venv active; about 25 minutes on one core for the MLP
rows of the 8 km city, 45 more with ``--set``):

    python benchmarks/ablate_whitening.py --checkpoint CKPT --dataset city8 --task max_speed \\
        --set --out benchmarks/ablate_whitening.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geojepa.dataset.reader import TileDataset
from geojepa.embed import load_checkpoint
from geojepa.evaluate import spatial_folds
from geojepa.features import Features, model_inputs, random_init, tag_pool_inputs
from geojepa.probes import Fold, Whitening, fit_mlp, fit_set, whitening_name
from geojepa.tasks import TASKS, load_labels, masked_dataset

SINGLES: dict[str, tuple[Whitening, ...]] = {"mlp": (None, 0.1, 1.0, 10.0), "set": (None, 1.0, 10.0)}
GRID: tuple[Whitening, ...] = (None, 1.0, 10.0)
"""``geojepa evaluate``'s default, read off the single runs."""


def method_features(checkpoint: Path, dataset: Path, task: str, tokens: bool) -> dict[str, Features]:
    """The masked task inputs of the checkpoint, its random initialisation and TagPool."""
    source = masked_dataset(dataset, task)
    ckpt = load_checkpoint(checkpoint)
    vocab = TileDataset(dataset).vocabulary().column("tag").to_pylist()
    return {
        "pretrained": model_inputs(ckpt, source, pool="modality", tokens=tokens),
        "random init": model_inputs(random_init(ckpt), source, pool="modality", tokens=tokens),
        "TagPool": tag_pool_inputs(source, vocab, dataset, tokens=tokens),
    }


def runs(features: dict[str, Features], y: np.ndarray, folds: list[Fold], probe: str, seeds: int,
         log_target: bool) -> pd.DataFrame:
    """One row per method, probe, whitening, seed and fold: test and validation MAE."""
    rows = []
    for method, x in features.items():
        for whitening in SINGLES[probe]:
            for seed in range(seeds if probe == "mlp" else 1):
                for fold in folds:
                    if probe == "mlp":
                        r = fit_mlp(x.tile, y, fold, "regression", log_target=log_target, seed=seed,
                                    whitening=[whitening])
                    else:
                        r = fit_set(x.tokens, y, fold, "regression", log_target=log_target,
                                    seed=seed, whitening=[whitening])
                    rows.append({"method": method, "probe": probe,
                                 "whitening": whitening_name(whitening), "seed": seed,
                                 "fold": fold.index, "metric": r.metric, "val": r.val_metric})
            print(f"{method} {probe} {whitening_name(whitening)} done", flush=True)
    return pd.DataFrame(rows)


def with_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Add the default grid's rows: per method, probe, seed and fold, the single setting of
    :data:`GRID` with the lowest validation MAE (ties: the earlier)."""
    order = {whitening_name(w): i for i, w in enumerate(GRID)}
    pool = table[table["whitening"].isin(order)].assign(order=lambda t: t["whitening"].map(order))
    chosen = (pool.sort_values(["val", "order"], kind="stable")
              .groupby(["method", "probe", "seed", "fold"], as_index=False).first())
    grid = chosen.drop(columns="order").assign(whitening="grid: " + " ".join(order))
    return pd.concat([table, grid], ignore_index=True)


def markdown(table: pd.DataFrame, header: list[str]) -> str:
    """Fold means and per-fold scores per method and setting, and folds won against TagPool
    and the random initialisation under the same setting."""
    folds = table.groupby(["probe", "whitening", "method", "fold"])["metric"].mean()
    lines = [*header, ""]
    for probe in sorted(set(table["probe"])):
        lines += [f"## {probe} probe", "",
                  "| inputs | method | fold mean | per fold | vs TagPool | vs random init |",
                  "|---|---|---|---|---|---|"]
        settings = list(dict.fromkeys(table.loc[table["probe"] == probe, "whitening"]))
        for setting in settings:
            per = folds.loc[(probe, setting)]
            for method in ("pretrained", "random init", "TagPool"):
                mine = per.loc[method]
                wins = [f"{int((mine < per.loc[other]).sum())}/{len(mine)}" if other != method else ""
                        for other in ("TagPool", "random init")]
                lines.append(f"| {setting} | {method} | {mine.mean():.3f} | "
                             f"{' / '.join(f'{v:.3f}' for v in mine)} | {wins[0]} | {wins[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Run the ablation and write its Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--task", choices=list(TASKS), default="max_speed")
    parser.add_argument("--seeds", type=int, default=3, help="MLP probe seeds")
    parser.add_argument("--set", action="store_true", help="also the set probe (seed 0)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = load_labels(args.dataset).to_pandas()
    y = labels[args.task].to_numpy().astype(np.float64)
    folds = spatial_folds(TileDataset(args.dataset), labels, None, 5, 0)
    log_target = TASKS[args.task].count
    features = method_features(args.checkpoint, args.dataset, args.task, args.set)
    table = runs(features, y, folds, "mlp", args.seeds, log_target)
    if args.set:
        table = pd.concat([table, runs(features, y, folds, "set", 1, log_target)], ignore_index=True)
    header = [f"# Probe input whitening: {args.dataset.name}, masked {args.task}", "",
              (f"Checkpoint `{args.checkpoint}`, its random initialisation and TagPool; 5 folds "
              "over zoom-14 groups; tile embeddings pooled by modality; MLP fold scores average "
              f"{args.seeds} probe seeds, the set probe's use seed 0. Test MAE (lower is better); "
              "wins are folds on which the method beats the other under the same inputs."),
              "", (f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
              f"({platform.processor() or platform.machine()}), torch {torch.__version__}, one thread.")]
    args.out.write_text(markdown(with_grid(table), header) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
