"""``geojepa pretrain``: self-supervised JEPA pretraining with PyTorch Lightning.

CPU by default; ``accelerator="gpu", devices=N, num_nodes=M`` trains with DDP, and
``precision="bf16-mixed"`` uses bfloat16 autocast on CPU and GPU. Learning rate (warm-up + cosine),
weight decay (rising) and EMA momentum (rising) follow the optimiser step, so they continue
exactly on ``--resume``, as do the optimiser state, the mask generator and the data order (the
order of epoch ``e`` depends only on the seed and ``e``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from geojepa.config import build, save_yaml
from geojepa.dataset.loader import TagVocabulary, TileStream
from geojepa.dataset.overlap import pretraining_record
from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError
from geojepa.model.jepa import GeoJEPA, GeoJEPAConfig, config_from_preset
from geojepa.model.schedules import (
    apply_schedules,
    cosine_increase,
    linear,
    param_groups,
    warmup_cosine,
)

# The streaming dataset deals batches to workers and ranks itself, and the EMA target and
# frozen encoders are in eval mode on purpose: Lightning's generic warnings about both do not apply.
warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")

RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainConfig:
    """Pretraining settings (the model's own settings live in ``GeoJEPAConfig``).

    Attributes:
        preset: Model preset: ``small`` (minutes on a laptop CPU) or ``base`` (the paper's).
        epochs: Passes over the pretraining tiles.
        batch_size: Tiles per batch (per device).
        accumulate: Batches per optimiser step.
        lr: Peak learning rate.
        min_lr: Final learning rate of the cosine schedule.
        warmup_frac: Fraction of optimiser steps spent warming up.
        weight_decay_start: Weight decay at the start (rises with a cosine).
        weight_decay_end: Weight decay at the end.
        ema_start: EMA momentum of the target encoder at the start (rises linearly).
        ema_end: EMA momentum at the end.
        grad_clip: Gradient-norm clip (0 = none).
        precision: Lightning precision: 32-true, bf16-mixed, 16-mixed.
        accelerator: cpu, gpu or auto.
        devices: Devices per node.
        num_nodes: Nodes.
        strategy: Lightning strategy (auto picks DDP for several devices).
        num_workers: Data-loader worker processes per device.
        seed: Seed of initialisation, masks and data order.
        deterministic: Deterministic algorithms (a warning where an op has none): the same seed
            then gives the same weights on a machine with the same thread count. Without it,
            multi-threaded CPU kernels that accumulate into indexed tensors add in varying
            order, and long runs of one seed drift apart. The process's setting is restored
            after training.
        checkpoint_every: Keep a checkpoint every this many epochs (early ones often probe best).
        pretrain_splits: Tiles seen in pretraining: train (default), or all (transductive; then
            evaluation must say that pretraining saw the test tiles, never their labels).
        max_tags: Tags per entity.
        max_vertices: Vertices per entity shape.
        max_steps: Stop after this many optimiser steps (-1: run all epochs).
        log_every: Log every this many optimiser steps.
        progress: Show a progress bar.
    """

    preset: str = "small"
    epochs: int = 10
    batch_size: int = 32
    accumulate: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_frac: float = 0.1
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    ema_start: float = 0.997
    ema_end: float = 0.99999
    grad_clip: float = 10.0
    precision: str = "32-true"
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = True
    checkpoint_every: int = 1
    pretrain_splits: str = "train"
    max_tags: int = 32
    max_vertices: int = 64
    max_steps: int = -1
    log_every: int = 10
    progress: bool = True

    def splits(self) -> tuple[str, ...] | None:
        """Dataset splits used for pretraining."""
        if self.pretrain_splits == "train":
            return ("train",)
        if self.pretrain_splits == "all":
            return None
        raise GeoJepaError(f"pretrain_splits must be train or all, got {self.pretrain_splits!r}")


class GeoJEPAModule(L.LightningModule):
    """Lightning wrapper: schedules, EMA after every optimiser step, logging, NaN guard.

    Args:
        model: Model settings as a plain dict (``GeoJEPAConfig`` fields).
        train: Training settings as a plain dict (``TrainConfig`` fields).
    """

    def __init__(self, model: dict[str, Any], train: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"model": model, "train": train})
        self.model_config = GeoJEPAConfig.from_dict(model)
        self.train_config = build(TrainConfig, train, "train config")
        self.model = GeoJEPA(self.model_config)
        self.mask_generator = torch.Generator().manual_seed(self.train_config.seed)
        self.vocabulary: list[str] = []
        self.pretrain_data: dict[str, Any] = {}
        self._tick: float | None = None

    def setup(self, stage: str) -> None:
        """Give each DDP rank its own mask stream."""
        self.mask_generator.manual_seed(self.train_config.seed * 1000 + self.global_rank)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW with decay and no-decay groups (biases and norms never decay)."""
        groups = param_groups(self.model.online_modules(), self.train_config.weight_decay_start)
        return torch.optim.AdamW(groups, lr=self.train_config.lr, betas=(0.9, 0.95))

    def _schedule(self) -> tuple[float, float, float]:
        c = self.train_config
        # Planned optimiser steps of the whole run: --max-steps may stop it early, and --resume
        # continues it, without changing the schedules.
        batches = int(self.trainer.num_training_batches)
        total = max(1, batches * c.epochs // max(1, c.accumulate))
        step = self.global_step
        lr = warmup_cosine(step, total, c.warmup_frac, c.lr, c.min_lr)
        wd = cosine_increase(step, total, c.weight_decay_start, c.weight_decay_end)
        momentum = linear(step, total, c.ema_start, c.ema_end)
        return lr, wd, momentum

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One JEPA step; raises a clear error when the loss stops being finite."""
        lr, wd, momentum = self._schedule()
        apply_schedules(self.optimizers().optimizer, lr, wd)
        loss, logs = self.model.forward_loss(batch, self.mask_generator)
        if not torch.isfinite(loss):
            raise GeoJepaError(
                f"training stopped: the loss became {loss.item()} at step {self.global_step}"
                " (lower --lr, raise --warmup-frac or use --precision 32-true)"
            )
        size = batch.size
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for key, value in logs.items():
            if key != "loss" and isinstance(value, (int, float)) and math.isfinite(value):
                self.log(f"train/{key}", float(value), batch_size=size)
        self.log_dict({"sched/lr": lr, "sched/weight_decay": wd, "sched/ema_momentum": momentum}, batch_size=size)
        now = time.perf_counter()
        if self._tick is not None:
            self.log("speed/tiles_per_s", size / max(now - self._tick, 1e-9), prog_bar=True, batch_size=size)
        self._tick = now
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step the optimiser, then move the target encoder towards the online one."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.model.ema_step(self._schedule()[2])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the mask generator's state (a resumed run draws the same masks), the tag
        vocabulary (so the checkpoint embeds any dataset, wherever it is loaded) and which tiles
        pretraining saw (so an evaluation can say whether it is transductive)."""
        checkpoint["mask_generator"] = self.mask_generator.get_state()
        checkpoint["torch_rng"] = torch.get_rng_state()
        checkpoint["vocabulary"] = list(self.vocabulary)
        checkpoint["pretrain_data"] = dict(self.pretrain_data)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the mask generator and the global generator (dropout)."""
        self.mask_generator.set_state(checkpoint["mask_generator"])
        torch.set_rng_state(checkpoint["torch_rng"])


class TileDataModule(L.LightningDataModule):
    """Training batches from a dataset, dealt across DDP ranks.

    Args:
        dataset: Dataset folder.
        config: Training settings.
        image_size: Image side when the model uses images, else None.
    """

    def __init__(self, dataset: Path, config: TrainConfig, image_size: int | None) -> None:
        super().__init__()
        self.dataset = dataset
        self.config = config
        self.image_size = image_size
        self.stream: TileStream | None = None

    def make_stream(self, rank: int = 0, world_size: int = 1) -> TileStream:
        """The rank's training stream (equal batch counts on every rank)."""
        c = self.config
        stream = TileStream(
            self.dataset, splits=c.splits(), batch_size=c.batch_size, shuffle=True, seed=c.seed,
            image_size=self.image_size, max_tags=c.max_tags, max_vertices=c.max_vertices,
            rank=rank, world_size=world_size,
        )
        if world_size > 1:
            stream.batches_per_epoch = max(1, stream.num_tiles() // (c.batch_size * world_size))
        return stream

    def train_dataloader(self) -> DataLoader:
        """The streaming loader of this process."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.stream = self.make_stream(rank, world)
        return DataLoader(
            self.stream, batch_size=None, num_workers=self.config.num_workers,
            persistent_workers=False, prefetch_factor=2 if self.config.num_workers else None,
        )


def model_config_for(
    ds: TileDataset, vocab: TagVocabulary, train: TrainConfig, overrides: dict[str, Any]
) -> GeoJEPAConfig:
    """The model settings for a dataset: preset + overrides + the dataset's vocabulary.

    Raises:
        GeoJepaError: If the preset is unknown or a setting is invalid.
    """
    try:
        config = config_from_preset(train.preset, **overrides)
    except ValueError as err:
        raise GeoJepaError(f"model settings: {err}") from err
    return config.with_dataset(ds, vocab=vocab)


def pretrain(
    dataset: str | Path,
    out: str | Path,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Pretrain GeoJEPA on a dataset and return the path of the last checkpoint.

    Args:
        dataset: Dataset folder from ``geojepa prepare``.
        out: Run folder: ``config.yaml``, ``checkpoints/``, ``logs/``.
        train: Training settings.
        model_overrides: ``GeoJEPAConfig`` fields that override the preset.
        resume: Continue from ``out/checkpoints/last.ckpt`` (optimiser, schedules, data order).
        callbacks: Extra Lightning callbacks.

    Raises:
        GeoJepaError: Bad settings, an existing run without ``resume``, or a loss that turned NaN.
    """
    dataset, out = Path(dataset), Path(out)
    train = train or TrainConfig()
    ckpt_dir = out / CHECKPOINTS
    last = ckpt_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise GeoJepaError("nothing to resume (no checkpoints/last.ckpt)", out)
    elif last.exists():
        raise GeoJepaError("run folder already has checkpoints; pass --resume or choose another --out", out)
    ds = TileDataset(dataset)
    vocab = TagVocabulary.of(ds)
    model_config = model_config_for(ds, vocab, train, model_overrides or {})
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(out / RUN_CONFIG, {"dataset": str(dataset.resolve()), "train": train, "model": model_config.to_dict()})

    L.seed_everything(train.seed, workers=True, verbose=False)
    module = GeoJEPAModule(model_config.to_dict(), asdict(train))
    module.vocabulary = vocab.tags.to_pylist()
    data = TileDataModule(dataset, train, model_config.image_size if model_config.uses_images else None)
    checkpoints = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                        every_n_epochs=train.checkpoint_every, save_top_k=-1, save_last=True),
    ]
    all_callbacks: list[Callback] = [*checkpoints, _EpochStream(data), _PretrainingRecord(ds, train.splits()),
                                     *callbacks]
    if train.progress:
        all_callbacks.append(RichProgressBar())
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    trainer = L.Trainer(
        accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes,
        strategy=train.strategy, precision=train.precision, max_epochs=train.epochs,
        max_steps=train.max_steps, accumulate_grad_batches=train.accumulate,
        gradient_clip_val=train.grad_clip or None, callbacks=all_callbacks,
        logger=[CSVLogger(out / "logs", name="csv", version=_session(out / "logs" / "csv")),
                TensorBoardLogger(out, name="logs", version="")],
        log_every_n_steps=train.log_every, use_distributed_sampler=False,
        enable_progress_bar=train.progress, enable_model_summary=train.progress,
        num_sanity_val_steps=0, default_root_dir=out,
        deterministic="warn" if train.deterministic else False,
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=last if resume else None)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    return last


def _session(folder: Path) -> str:
    """Name of this session's CSV log folder: ``session0``, then ``session1`` after a resume..."""
    n = len(list(folder.glob("session*"))) if folder.is_dir() else 0
    return f"session{n}"


class _EpochStream(Callback):
    """Forward the epoch number to the data module's stream (created per process)."""

    def __init__(self, data: TileDataModule) -> None:
        self.data = data

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.data.stream is not None:
            self.data.stream.set_epoch(trainer.current_epoch)


class _PretrainingRecord(Callback):
    """Record which tiles pretraining sees (:func:`pretraining_record`) on global rank 0 only:
    only its checkpoints are written, so the other DDP ranks skip reading the tiles' OSM ids."""

    def __init__(self, ds: TileDataset, splits: tuple[str, ...] | None) -> None:
        self.ds, self.splits = ds, splits

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.pretrain_data = pretraining_record(self.ds, self.splits)


COLLAPSE_COSINE = 0.99
"""Mean cosine between target tokens from which :class:`CollapseMonitor` calls them collapsed
(about 0.72-0.86 at initialisation; see ``benchmarks/collapse_results.md``)."""


class CollapseMonitor(Callback):
    """Collapse metrics of the JEPA targets over the last training steps (global rank 0 only).

    Args:
        window: Number of last steps averaged.
    """

    def __init__(self, window: int = 50) -> None:
        self.cosine: deque[float] = deque(maxlen=window)
        self.std: deque[float] = deque(maxlen=window)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record this step's ``train/target_cosine`` and ``train/target_std``."""
        if not trainer.is_global_zero:
            return
        for name, values in (("cosine", self.cosine), ("std", self.std)):
            value = trainer.callback_metrics.get(f"train/target_{name}")
            if value is not None and math.isfinite(float(value)):
                values.append(float(value))

    def report(self) -> str | None:
        """One line on the targets of the last steps, or None when nothing was recorded."""
        if not self.cosine or not self.std:
            return None
        cosine, std = sum(self.cosine) / len(self.cosine), sum(self.std) / len(self.std)
        line = f"JEPA targets over the last {len(self.cosine)} steps: mean cosine {cosine:.3f}, std {std:.3f}"
        if cosine < COLLAPSE_COSINE:
            return line
        return (
            f"{line}: collapsed onto one shared direction (cosine >= {COLLAPSE_COSINE}); raw "
            "embeddings are nearly parallel, so cosine search cannot tell tiles apart unless they "
            "are centred first; check the embedding-health table of `geojepa evaluate` (README: "
            "'Embedding quality')"
        )
