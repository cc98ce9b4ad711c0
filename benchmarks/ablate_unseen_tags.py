"""What reading the tags a model's pretraining never saw is worth on Helsinki (issue 4).

``geojepa.embed`` gives a frozen-tag-encoder model the text vectors of the embedded dataset's
unseen tags (:func:`geojepa.embed.with_dataset_tags`). This ablation re-evaluates the inductive
checkpoints of ``bench_evaluate.py --regions helsinki_transfer`` with that step replaced by the
old behaviour (unseen tags count as absent) on the same folds and probes, and compares every
cell with the committed report (``benchmarks/evaluate/helsinki_transfer_seeds/runs.csv``).

Run by hand from the repository root (venv active), after the helsinki_transfer run whose work
folder holds the checkpoints (about 3 minutes on 2 cores):

    python benchmarks/ablate_unseen_tags.py --work /tmp/geojepa-eval \
        --out benchmarks/ablate_unseen_tags.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import geojepa.embed
from geojepa.cli import main as geojepa_main

HERE = Path(__file__).resolve().parent
REPORT = HERE / "evaluate" / "helsinki_transfer_seeds" / "runs.csv"
MODELS = {"T-city8km": "scale8_T", "T-town": "town17_T"}
"""Inductive models of helsinki_transfer -> their run folders' prefix in the work folder."""
SEEDS = 5


def evaluate_without_unseen_tags(work: Path, out: Path) -> pd.DataFrame:
    """Run the helsinki_transfer evaluation of ``MODELS`` with unseen tags absent; its runs."""
    checkpoints = []
    for name, prefix in MODELS.items():
        for seed in range(SEEDS):
            ckpt = work / f"{prefix}_s{seed}" / "checkpoints" / "last.ckpt"
            checkpoints += ["--checkpoint", f"{name}={ckpt}"]
    geojepa.embed.with_dataset_tags = lambda checkpoint, dataset: checkpoint
    code = geojepa_main([
        "evaluate", *checkpoints, "--dataset", str(work / "hel17"), "-o", str(out),
        "--group-zoom", "15", "--folds", "5", "--variants", "masked", "--baselines", "dummy",
        "random", "--tasks", "building_count", "max_speed", "traffic_signals", "--overwrite",
    ])
    if code:
        raise SystemExit(code)
    return pd.read_csv(out / "runs.csv")


def compare(read: pd.DataFrame, absent: pd.DataFrame) -> pd.DataFrame:
    """Fold means of each model, task and probe both ways, and the folds reading wins."""
    methods = [*MODELS, *(f"{m} random init" for m in MODELS)]

    def folds(runs: pd.DataFrame) -> pd.Series:
        runs = runs[runs.method.isin(methods) & (runs.variant == "masked")]
        return runs.groupby(["method", "task", "probe", "fold"]).metric.mean()

    both = pd.concat({"read": folds(read), "absent": folds(absent)}, axis=1).dropna()
    both["wins"] = both.read < both.absent
    return both.groupby(["method", "task", "probe"]).agg(
        read=("read", "mean"), absent=("absent", "mean"), wins=("wins", "sum"),
        folds=("wins", "size"))


def main() -> None:
    """Run the ablation and write the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geojepa-eval"))
    parser.add_argument("--out", type=Path, default=HERE / "ablate_unseen_tags.md")
    args = parser.parse_args()
    table = compare(pd.read_csv(REPORT), evaluate_without_unseen_tags(
        args.work, args.work / "report_helsinki_transfer_absent"))
    rows = [f"| {m} | {t} | {p} | {r.read:.2f} | {r.absent:.2f} | {int(r.wins)}/{int(r.folds)} |"
            for (m, t, p), r in table.iterrows()]
    args.out.write_text("\n".join([
        "# Reading unseen tags vs counting them as absent (Helsinki, inductive models)", "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `python benchmarks/ablate_unseen_tags.py --work {args.work}`  ",
        (f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, 2 CPU cores, no GPU"), "",
        ("Masked test MAE, mean over 5 folds (and 5 pretraining seeds, 3 MLP seeds); `read`: "
        "the committed helsinki_transfer report; `absent`: the same checkpoints and folds with "
        "the tags their pretraining never saw counted as absent; wins: folds on which reading "
        "scores strictly lower."), "",
        "| model | task | probe | read | absent | reading wins |", "|---|---|---|---|---|---|",
        *rows, "",
    ]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
