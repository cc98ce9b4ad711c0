"""Peak memory of the reference training step over many steps (the `bench_train.py` workload).

`bench_train.py` reports the peak over its 13 steps; this probe runs the same step (base preset,
tags only, batch 32 x 64 entities x 6 tags, random 2000-tag table) for longer and prints the
process's peak RSS after every step, to show how the peak grows with heap fragmentation. Run by
hand from the repository root (venv active):

    python benchmarks/probe_train_memory.py --steps 40 [--checkpointing] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _batch

from geojepa.model.jepa import GeoJEPA, config_from_preset
from geojepa.model.schedules import param_groups

VOCAB = 2000


def peak_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the steps and print the peak after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(VOCAB, 384, generator=gen), dim=1)
    table = torch.cat([table.new_zeros(1, 384), table])
    config = config_from_preset("base", vocab_size=VOCAB, modalities="T",
                                activation_checkpointing=args.checkpointing)
    torch.manual_seed(0)
    model = GeoJEPA(config, table).train()
    batch = _batch({"tiles": 32, "entities": 64, "tags": 6, "vertices": 16, "vocab": VOCAB,
                    "image_size": 224}, "T")
    groups = param_groups(model.online_modules(), 0.04)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    masks = torch.Generator().manual_seed(0)
    print(f"after build: {peak_mib():.0f} MiB", flush=True)
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.forward_loss(batch, masks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        model.ema_step(0.998)
        print(f"step {step:3d}: peak {peak_mib():.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
