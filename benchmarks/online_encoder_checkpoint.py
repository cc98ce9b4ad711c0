"""Copy a checkpoint with its online (context) encoder in place of the EMA target (issue 4).

`geojepa evaluate` embeds tiles with the target encoder (SPEC section 5). With the paper's EMA
(momentum 0.997 rising linearly to 0.99999 over a 30-epoch schedule of 1,410 steps), the
target after 235 steps still holds about half of the untrained weights (the product of the
momenta, 0.52), so its early checkpoints are a weight average of the initialisation and the
trained network. This script writes a copy of a checkpoint
whose target tokeniser and encoder are the online ones, so that `geojepa evaluate` probes what
pretraining itself learned (session 24: the online encoder of the epoch-5 base model reads
masked max_speed far worse than the target, 1.48 against 0.655 km/h with the set probe).
The optimiser state is dropped; everything else (vocabulary, pretraining record, settings) is
kept, so the copy is evaluated exactly like the original.

Run by hand from the repository root (venv active):

    python benchmarks/online_encoder_checkpoint.py CHECKPOINT OUT.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

TARGET = "model.target."
"""Prefix of the EMA target's weights in a checkpoint's state dict."""


def online_as_target(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every ``model.target.X`` replaced by a copy of ``model.X``.

    Raises:
        KeyError: If a target weight has no online counterpart.
    """
    out = dict(state)
    for key in (k for k in state if k.startswith(TARGET)):
        out[key] = state["model." + key[len(TARGET):]].clone()
    return out


def main() -> None:
    """Write the copy and print how many target tensors it replaced."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = online_as_target(ckpt["state_dict"])
    ckpt["optimizer_states"] = []
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(args.out)
    replaced = sum(k.startswith(TARGET) for k in ckpt["state_dict"])
    print(f"{args.out}: {replaced} target tensors replaced by the online encoder's")


if __name__ == "__main__":
    main()
