"""Embedding speed: tiles batched by entity count (``iter_embeddings``) against stored order.

Attention costs the square of a batch's largest tile for every tile in it. ``iter_embeddings``
batches tiles of similar entity count together (within windows of ``SORT_WINDOW`` batches) and
puts them back in stored order; the baseline here batches them in stored order, as the loader
gives them, with the same model call. Both run in the same process on the same data, alternating,
and the script reports the median wall time of each, their ratio, and the largest difference
between the two sets of tile embeddings (attention ignores padded keys, so only floating-point
rounding differs). Run by hand from the repository root (venv active):

    python benchmarks/bench_embed.py --checkpoint CKPT --dataset DS [--dataset DS2 ...] \
        [--batch-size 64] [--repeats 3] [--pool tokens] [--out benchmarks/embed_results.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from geojepa.dataset.loader import TagVocabulary, TileStream
from geojepa.embed import SORT_WINDOW, Checkpoint, embed_dataset, load_checkpoint, with_dataset_tags


def stored_order(checkpoint: Checkpoint, dataset: Path, batch_size: int, pool: str) -> np.ndarray:
    """Tile embeddings with tiles batched in stored order (the baseline)."""
    checkpoint = with_dataset_tags(checkpoint, dataset)
    config = checkpoint.config
    stream = TileStream(dataset, splits=None, batch_size=batch_size, shuffle=False,
                        vocab=TagVocabulary(checkpoint.vocabulary),
                        image_size=config.image_size if config.uses_images else None,
                        max_tags=int(checkpoint.train.get("max_tags", 32)),
                        max_vertices=config.max_vertices)
    with torch.inference_mode():
        return np.concatenate([checkpoint.model.embed(b, 1, pool)[2].numpy() for b in stream])


def padding(dataset: Path, batch_size: int) -> tuple[float, float, float]:
    """Mean entities per tile, and attention work (sum over tiles of the batch width squared)
    over the real work, in stored order and with size-sorted windows."""
    stream = TileStream(dataset, splits=None, batch_size=batch_size, shuffle=False)
    sizes = np.array([it.num_entities for it in stream.items()])
    real = float((sizes**2).sum())

    def work(order: np.ndarray) -> float:
        return float(sum(len(b) * b.max() ** 2 for b in np.array_split(order, range(batch_size, len(order), batch_size))))

    window = SORT_WINDOW * batch_size
    sorted_sizes = np.concatenate([np.sort(sizes[i : i + window]) for i in range(0, len(sizes), window)])
    return float(sizes.mean()), work(sizes) / real, work(sorted_sizes) / real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, action="append", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool", default="tokens")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/embed_results.md"))
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    cfg = checkpoint.config
    rows = []
    for dataset in args.dataset:
        times: dict[str, list[float]] = {"stored": [], "sorted": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            base = stored_order(checkpoint, dataset, args.batch_size, args.pool)
            times["stored"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            new = embed_dataset(checkpoint, dataset, batch_size=args.batch_size, tokens=False,
                                progress=False, pool=args.pool).tile
            times["sorted"].append(time.perf_counter() - t0)
        stored, by_size = statistics.median(times["stored"]), statistics.median(times["sorted"])
        mean_size, pad_stored, pad_sorted = padding(dataset, args.batch_size)
        diff = float(np.abs(base - new).max())
        rows.append(f"| {dataset.name} | {len(base)} | {mean_size:.1f} | {pad_stored:.2f} / "
                    f"{pad_sorted:.2f} | {stored:.1f} | {by_size:.1f} | **{stored / by_size:.2f}x** "
                    f"| {diff:.1e} |")
        print(rows[-1], flush=True)
    command = (f"python benchmarks/bench_embed.py --checkpoint {args.checkpoint.name} "
               + " ".join(f"--dataset {d.name}" for d in args.dataset)
               + f" --batch-size {args.batch_size} --repeats {args.repeats} --pool {args.pool}")
    setting = (f"model: {''.join(cfg.modalities)}, d={cfg.d}, depth {cfg.depth}; "
               f"{torch.get_num_threads()} threads. Median wall seconds of {args.repeats} "
               "alternating runs of each; attention work is the sum over tiles of their batch's "
               "width squared, over the sum of their own entity counts squared (1 = no padding).")
    columns = ("| dataset | tiles | entities per tile | attention work, stored / by size "
               "| stored order, s | by size, s | speed-up | max abs difference |")
    header = ["# Embedding speed: tiles batched by entity count against stored order", "",
              f"`{command}`; {setting}", "", columns, "|---|---|---|---|---|---|---|---|"]
    args.out.write_text("\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
