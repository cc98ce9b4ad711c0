"""Diagnostics behind ``collapse_results.md`` that look inside checkpoints (issue 4).

Run by hand from the repository root:

    python benchmarks/probe_collapse_diagnostics.py drift CKPT [CKPT ...]
        relative distance of the target and online encoder weights from the seeded
        initialisation (how much of its init the EMA target still is)
    python benchmarks/probe_collapse_diagnostics.py tokens CKPT DATASET
        norms and mean pairwise cosines of the target tokeniser's entity content and
        position/modality prior, and of the layer-normed target tokens, on one batch of 32 tiles,
        trained vs initialisation
    python benchmarks/probe_collapse_diagnostics.py offset CKPT DATASET
        how much of the layer-normed target tokens is one direction shared by every token of
        the batch (32 tiles), and the mean cosine of the tokens within a tile before and after
        that shared mean is taken out, trained vs initialisation
    python benchmarks/probe_collapse_diagnostics.py predictor CKPT DATASET [--prior-norm]
        [--tile-norm]
        on one batch of 32 tiles with one seeded area mask, trained vs initialisation: the
        predictor's loss against the loss of predicting every target of a block as the block's
        mean target, the mean pairwise cosine of the predictions within a block and of the
        targets, and the norms of the mask token and of the position part of the queries
        (``--prior-norm``, ``--tile-norm``: the checkpoint was trained with that variant of
        ``probe_collapse.py``)
    python benchmarks/probe_collapse_diagnostics.py tokeniser DATASET [--gz 14]
        masked max_speed linear-probe MAE of [max, mean]-pooled entity tag vectors after each
        step of the tag encoder: raw sum (TagPool), layer norm, random projections to 384 and 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from geojepa.dataset.loader import TagVocabulary
from geojepa.dataset.reader import TileDataset
from geojepa.embed import Checkpoint, iter_embeddings, load_checkpoint
from geojepa.evaluate import EvalConfig, _folds
from geojepa.features import _pool, random_init
from geojepa.model.jepa import gather
from geojepa.model.losses import jepa_loss
from geojepa.model.masks import MaskConfig, gather_target_tokens, gather_tokens, sample_masks
from geojepa.model.text import tag_embedding_table
from geojepa.probes import fit_linear
from geojepa.tasks import load_labels, masked_dataset, select_tasks


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def drift(paths: list[Path]) -> None:
    """Print ||target - init|| / ||init|| and the same for the online encoder."""
    for path in paths:
        ckpt = load_checkpoint(path)
        init = _flat(random_init(ckpt).model.target.encoder)
        target, online = _flat(ckpt.model.target.encoder), _flat(ckpt.model.encoder)
        print(f"{path}: target {float((target - init).norm() / init.norm()):.3f}, "
              f"online {float((online - init).norm() / init.norm()):.3f}")


def _cosine(x: torch.Tensor) -> float:
    unit = F.normalize(x, dim=1)
    n = len(unit)
    return float((unit.sum(0).pow(2).sum() - n) / (n * (n - 1)))


def _first_batch(ckpt: Checkpoint, dataset: Path) -> object:
    seen: list[object] = []
    embed = ckpt.model.embed
    ckpt.model.embed = lambda batch: (seen.append(batch), embed(batch))[1]
    try:
        next(iter(iter_embeddings(ckpt, dataset, batch_size=32, tokens=True, progress=False)))
    finally:
        ckpt.model.embed = embed
    return seen[0]


def tokens(path: Path, dataset: Path) -> None:
    """Print content/prior norms and cosines of the target tokeniser, trained vs init."""
    ckpt = load_checkpoint(path)
    batch = _first_batch(ckpt, dataset)
    for name, model in (("trained", ckpt.model), ("init", random_init(ckpt).model)):
        with torch.no_grad():
            t = model.target.tokenizer(batch)
            content, prior = (t.x - t.pos_mod)[t.valid], t.pos_mod[t.valid]
            h = model.target.encoder(t.x, t.valid)
            targets = F.layer_norm(h, (h.shape[-1],))[t.valid]
        print(f"{name}: |content| {float(content.norm(dim=1).mean()):.2f} "
              f"|prior| {float(prior.norm(dim=1).mean()):.2f} cos(content) {_cosine(content):.3f} "
              f"cos(prior) {_cosine(prior):.3f} cos(targets) {_cosine(targets):.3f} "
              f"std(targets) {float(targets.std(0).mean()):.3f}")


def offset(path: Path, dataset: Path) -> None:
    """Print the shared direction of the target tokens and their within-tile cosines."""
    ckpt = load_checkpoint(path)
    batch = _first_batch(ckpt, dataset)
    for name, model in (("trained", ckpt.model), ("init", random_init(ckpt).model)):
        with torch.no_grad():
            target_tokens, targets = model.encode_targets(batch)
        valid = target_tokens.valid
        rows = targets[valid]
        shared = rows.mean(0)
        tile_means = torch.stack([row[ok].mean(0) for row, ok in zip(targets, valid, strict=True)])
        between = ((tile_means - shared) ** 2).sum(1) @ valid.sum(1).float()
        print(f"{name}: |shared mean| {float(shared.norm()):.2f} of |token| "
              f"{float(rows.norm(dim=1).mean()):.2f}; cos(tokens in a tile) "
              f"{_block_cosine(targets, valid):.3f}, without the shared mean "
              f"{_block_cosine(targets - shared, valid):.3f}; share of the variance between "
              f"tiles {float(between / ((rows - shared) ** 2).sum()):.2f}")


def _block_cosine(x: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over blocks (rows) with >= 2 real entries of their mean pairwise cosine."""
    rows = [row[ok] for row, ok in zip(x, valid, strict=True) if ok.sum() > 1]
    return float(np.mean([_cosine(row) for row in rows]))


def predictor(path: Path, dataset: Path, normed: bool) -> None:
    """Print whether the predictor tells its targets apart (see the module docstring)."""
    ckpt = load_checkpoint(path)
    batch = _first_batch(ckpt, dataset)
    only_area = MaskConfig(area_prob=1.0, random_prob=0.0, modality_prob=0.0)
    for name, model in (("trained", ckpt.model), ("init", random_init(ckpt).model)):
        model.eval()
        with torch.no_grad():
            target_tokens, targets = model.encode_targets(batch)
            masks = sample_masks(target_tokens.boxes, target_tokens.modality, target_tokens.valid,
                                 only_area, torch.Generator().manual_seed(0))
            tokens = model.tokenizer(batch)
            context_index, context_valid = gather_tokens(masks.context)
            context = model.encode_context(tokens.x, context_index, context_valid)
            index, valid, tile = gather_target_tokens(masks.targets)
            query_prior = gather(tokens.pos_mod, index, tile)
            pred = model.predictor(context, gather(tokens.pos_mod, context_index), context_valid,
                                   query_prior, valid, tile)
            wanted = gather(targets, index, tile)
            weights = valid[..., None].float()
            block_mean = (wanted * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
            oracle = jepa_loss(block_mean.expand_as(wanted), wanted, valid)
            if normed:
                query_prior = F.layer_norm(query_prior, (query_prior.shape[-1],))
            position = model.predictor.prior(query_prior)[valid]
        print(f"{name}: loss {float(jepa_loss(pred, wanted, valid)):.4f} block-mean loss "
              f"{float(oracle):.4f} cos(predictions in a block) {_block_cosine(pred, valid):.3f} "
              f"cos(targets in a block) {_block_cosine(wanted, valid):.3f} |mask token| "
              f"{float(model.predictor.mask_token.norm()):.3f} |query position part| "
              f"{float(position.norm(dim=1).mean()):.4f} (cos {_cosine(position):.3f})")


def tokeniser(dataset: Path, group_zoom: int) -> None:
    """Print the masked max_speed MAE of pooled tag vectors after each tag-encoder step."""
    ds, labels = TileDataset(dataset), load_labels(dataset).to_pandas()
    _, folds = _folds(ds, labels, EvalConfig(group_zoom=group_zoom))
    vocab = ds.vocabulary().column("tag").to_pylist()
    table, ids = tag_embedding_table(dataset, vocab).numpy(), TagVocabulary(vocab)
    rng = np.random.default_rng(0)
    width = table.shape[1]
    project = {d: rng.normal(size=(width, d)) / np.sqrt(width) for d in (384, 128)}
    task = select_tasks(["max_speed"])[0]
    steps: dict[str, list[np.ndarray]] = {"raw sum (TagPool)": [], "layer norm": [],
                                          "layer norm, 384": [], "layer norm, 128": []}
    for batch in TileDataset(masked_dataset(dataset, task.name)).iter_batches(columns=["entities"]):
        entities = pc.list_flatten(batch.column("entities"))
        tags = entities.field("tags")
        vectors = np.zeros((len(entities), table.shape[1]), np.float32)
        owner = pc.list_parent_indices(tags).to_numpy()
        np.add.at(vectors, owner, table[ids.ids(pc.list_flatten(tags))])
        normed = (vectors - vectors.mean(1, keepdims=True)) / (vectors.std(1, keepdims=True) + 1e-5)
        normed[np.abs(vectors).sum(1) == 0] = 0.0
        tile = pc.list_parent_indices(batch.column("entities")).to_numpy()
        for name, x in zip(steps, (vectors, normed, normed @ project[384], normed @ project[128]),
                           strict=True):
            steps[name].append(_pool(x.astype(np.float32), tile, batch.num_rows))
    y = labels[task.name].to_numpy().astype(float)
    for name, parts in steps.items():
        x = np.concatenate(parts)
        mae = np.mean([fit_linear(x, y, f, task.kind).metric for f in folds])
        print(f"{name:18s} max_speed MAE {mae:.3f}")


def main() -> None:
    """Dispatch to one diagnostic."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("drift").add_argument("checkpoints", type=Path, nargs="+")
    p = sub.add_parser("tokens")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("dataset", type=Path)
    p = sub.add_parser("offset")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("dataset", type=Path)
    p = sub.add_parser("predictor")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("dataset", type=Path)
    p.add_argument("--prior-norm", action="store_true")
    p.add_argument("--tile-norm", action="store_true")
    p = sub.add_parser("tokeniser")
    p.add_argument("dataset", type=Path)
    p.add_argument("--gz", type=int, default=14)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.what == "drift":
        drift(args.checkpoints)
    elif args.what == "tokens":
        tokens(args.checkpoint, args.dataset)
    elif args.what == "offset":
        offset(args.checkpoint, args.dataset)
    elif args.what == "predictor":
        if args.prior_norm:
            from probe_collapse import prior_norm

            prior_norm()
        if args.tile_norm:
            from probe_collapse import tile_norm_targets

            tile_norm_targets()
        predictor(args.checkpoint, args.dataset, args.prior_norm)
    else:
        tokeniser(args.dataset, args.gz)


if __name__ == "__main__":
    main()
