"""Prototype (not part of the package): continue pretraining a checkpoint on another dataset.

The model starts from the checkpoint's weights (online, target and predictor), its settings and
its vocabulary extended with the new dataset's tags (``with_dataset_tags``); the optimiser and
every schedule start afresh. Ran for this report as

    python continue_pretraining_prototype.py b8gtv_s0/checkpoints/epoch001.ckpt hel17 c1 \
        --epochs 10 --lr 1e-4 --seed 0

(60 optimiser steps of 16 tiles over all 95 Helsinki tiles: transductive; 10 min 24 s on 2 cores).
The checkpoints record only the new dataset's tiles as pretraining data.
"""

import argparse
from dataclasses import asdict
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from geojepa.dataset.loader import TagVocabulary, TileStream
from geojepa.dataset.reader import TileDataset
from geojepa.embed import load_checkpoint, with_dataset_tags
from geojepa.train import (
    GeoJEPAModule,
    TileDataModule,
    TrainConfig,
    _EpochStream,
    _PretrainingRecord,
)

parser = argparse.ArgumentParser()
parser.add_argument("checkpoint")
parser.add_argument("dataset", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--lr", type=float, default=1e-4)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

start = with_dataset_tags(load_checkpoint(args.checkpoint), args.dataset)
train = TrainConfig(preset="base", epochs=args.epochs, batch_size=16, lr=args.lr, seed=args.seed,
                    pretrain_splits="all", progress=False, ema_start=0.997, ema_end=0.9999)
vocab = TagVocabulary(start.vocabulary)


class ExtendedVocabulary(TileDataModule):
    """Batches whose tag ids follow the checkpoint's (extended) vocabulary."""

    def make_stream(self, rank: int = 0, world_size: int = 1) -> TileStream:
        c = self.config
        return TileStream(self.dataset, splits=c.splits(), batch_size=c.batch_size, shuffle=True,
                          seed=c.seed, image_size=None, max_tags=c.max_tags,
                          max_vertices=c.max_vertices, vocab=vocab)


L.seed_everything(args.seed, workers=True, verbose=False)
module = GeoJEPAModule(start.config.to_dict(), asdict(train))
module.model.load_state_dict(start.model.state_dict())
module.vocabulary = list(start.vocabulary)
data = ExtendedVocabulary(args.dataset, train, None)
trainer = L.Trainer(
    accelerator="cpu", max_epochs=args.epochs, gradient_clip_val=10.0, deterministic="warn",
    callbacks=[ModelCheckpoint(dirpath=args.out / "checkpoints", filename="epoch{epoch:03d}",
                               auto_insert_metric_name=False, every_n_epochs=1, save_top_k=-1,
                               save_last=True),
               _EpochStream(data), _PretrainingRecord(TileDataset(args.dataset), None)],
    logger=CSVLogger(args.out / "logs"), log_every_n_steps=1, use_distributed_sampler=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    default_root_dir=args.out,
)
trainer.fit(module, datamodule=data)
