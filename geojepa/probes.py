"""Probes on frozen embeddings: spatially grouped folds, a Dummy, a linear and an MLP probe on
tile embeddings, and a set probe on each tile's token embeddings (:func:`fit_set`).

Honesty rules (the reference selected on its test split; these probes never do):

* Only the **train** rows of a :class:`Fold` fit anything: the feature (or token) mean, standard
  deviation and covariance (whitening), the target scaling, the model weights and the clamping
  range of regression outputs.
* Only the **validation** rows choose anything: the regularisation strength of the linear probe
  and the whitening shrinkage and stopping epoch of the MLP and set probes.
* The **test** rows are predicted once, at the end, by the chosen model; their labels enter only
  the reported metric.
* Folds are spatially grouped (:func:`grouped_folds`): all rows of one group, e.g. one zoom-14
  parent tile, share a split, so neighbouring tiles cannot leak from train into test.

Metrics: mean absolute error in the original label space for regression tasks, error rate for
binary tasks (labels and predictions 0/1).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from torch import nn

TaskKind = Literal["regression", "binary"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(alpha) for alpha in np.logspace(-2, 4, 13))
"""Regularisation strengths tried by :func:`fit_linear` (Ridge ``alpha``, logistic ``1/C``)."""

Whitening = float | None
"""A shrinkage of :func:`whitener`, or None for standardised features only."""

DEFAULT_WHITENING: tuple[Whitening, ...] = (None, 1.0, 10.0)
"""Input whitenings tried by :func:`fit_mlp` and :func:`fit_set`, chosen on validation: none,
and :func:`whitener` with shrinkage 1 and 10 (none only when a fold has no more train rows than
feature columns)."""

STD_FLOOR = 1e-6
"""Feature columns whose train standard deviation is at most this carry no information and are
set to 0 in every row; a regression target this flat is not rescaled."""

_KINDS: tuple[str, ...] = ("regression", "binary")


@dataclass(frozen=True)
class Fold:
    """One split of a grouped k-fold evaluation, as row indices.

    Attributes:
        index: Position of the fold, ``0 .. k-1``.
        train: Rows that fit the probe.
        val: Rows that select its hyper-parameter.
        test: Rows that are only predicted and scored.
    """

    index: int
    train: NDArray[np.int64]
    val: NDArray[np.int64]
    test: NDArray[np.int64]


@dataclass
class ProbeResult:
    """What one probe on one fold produced.

    Attributes:
        metric: Test MAE (regression) or test error rate (binary).
        val_metric: The same metric on the validation rows, for the selected setting.
        predictions: Predictions on ``fold.test`` in the original label space (binary: 0/1).
        constant: True when the test predictions are all (numerically) the same value.
        selected: The chosen hyper-parameter, e.g. ``"alpha=10"`` or ``"epochs=37"``.
    """

    metric: float
    val_metric: float
    predictions: NDArray[np.float64]
    constant: bool
    selected: str


def grouped_folds(groups: NDArray, k: int = 5, seed: int = 0, by_size: bool = True) -> list[Fold]:
    """Split rows into ``k`` spatially grouped folds, balanced by row count.

    Every group lands in exactly one fold. Groups are shuffled with ``seed``, sorted by size
    (largest first, ties in shuffled order; unless ``by_size`` is False) and each is given to the
    fold with the fewest rows so far (ties: the lowest fold index). Fold ``i`` tests on the rows
    of fold ``i``, validates on those of fold ``(i + 1) % k`` and trains on the rest.

    Args:
        groups: One group id per row: a 1-D array (e.g. an int64 id of the zoom-14 parent tile)
            or an ``[N, 2]`` array of ``(group_x, group_y)``.
        k: Number of folds, at least 3.
        seed: Seed of the group shuffle; the same seed gives the same folds.
        by_size: Place the largest groups first: the best balance, but groups of distinct sizes
            then land in the same folds whatever the seed. False keeps the shuffled order, so
            every seed gives another assignment (repeated cross-validation), less balanced.

    Returns:
        The ``k`` folds; every row is a test row of exactly one of them.

    Raises:
        ValueError: If ``k < 3``, ``groups`` is not 1-D or 2-D, or there are fewer than
            ``max(3, k)`` distinct groups.
    """
    if k < 3:
        raise ValueError(f"k must be >= 3 (a train, a validation and a test fold), got {k}")
    keys = np.asarray(groups)
    if keys.ndim not in (1, 2):
        raise ValueError(f"groups must be 1-D or [N, 2], got shape {keys.shape}")
    axis = 0 if keys.ndim == 2 else None
    _, inverse = np.unique(keys, axis=axis, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse)
    if len(sizes) < max(3, k):
        raise ValueError(
            f"{len(sizes)} spatial groups among {len(inverse)} rows cannot fill {k} grouped folds "
            f"(need at least {max(3, k)}); use a finer group zoom or a smaller k"
        )
    order = np.random.default_rng(seed).permutation(len(sizes))
    if by_size:
        order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    fold_rows = np.zeros(k, dtype=np.int64)
    for group in order:
        fold = int(np.argmin(fold_rows))
        fold_of_group[group] = fold
        fold_rows[fold] += sizes[group]
    fold_of_row = fold_of_group[inverse]
    members = [np.flatnonzero(fold_of_row == i).astype(np.int64) for i in range(k)]
    return [
        Fold(
            index=i,
            train=np.flatnonzero((fold_of_row != i) & (fold_of_row != (i + 1) % k)).astype(
                np.int64
            ),
            val=members[(i + 1) % k],
            test=members[i],
        )
        for i in range(k)
    ]


def fit_dummy(y: NDArray[np.floating], fold: Fold, kind: TaskKind) -> ProbeResult:
    """The constant reference: predict the median of the train labels.

    For binary labels the median is the majority class, with a tie going to 0.

    Args:
        y: Labels ``[N]``.
        fold: The split.
        kind: ``"regression"`` or ``"binary"``.

    Returns:
        The result; ``constant`` is always True.

    Raises:
        ValueError: On an invalid fold, non-finite labels or non-0/1 binary labels.
    """
    labels = _check_labels(y, fold, kind)
    train = labels[fold.train]
    if kind == "binary":
        value = 1.0 if train.mean() > 0.5 else 0.0
        selected = f"majority={value:g}"
    else:
        value = float(np.median(train))
        selected = f"median={value:g}"
    val_metric = _metric(np.full(len(fold.val), value), labels[fold.val], kind)
    return _result(np.full(len(fold.test), value), labels[fold.test], kind, val_metric, selected)


def fit_linear(
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    fold: Fold,
    kind: TaskKind,
    log_target: bool = False,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> ProbeResult:
    """Ridge regression or L2 logistic regression, regularisation chosen on the validation rows.

    Regression: ``Ridge(alpha)`` on train-standardised features, the ``alpha`` with the lowest
    validation MAE wins. Binary: ``LogisticRegression(C=1/alpha, solver="lbfgs")``, the lowest
    validation error rate wins, ties broken by validation log-loss; train rows of a single class
    give that class as a constant prediction. Remaining ties go to the larger ``alpha``.

    Args:
        x: Features ``[N, D]``.
        y: Labels ``[N]``.
        fold: The split.
        kind: ``"regression"`` or ``"binary"``.
        log_target: Regression only: fit ``log1p(y)`` and map back with ``expm1`` (labels >= 0).
        alphas: Regularisation strengths to try, all positive.

    Returns:
        The result for the selected ``alpha`` (``selected="alpha=..."``).

    Raises:
        ValueError: On invalid inputs (see :func:`fit_mlp`) or an empty / non-positive grid.
    """
    features, labels = _check_inputs(x, y, fold, kind, log_target)
    grid = sorted((float(alpha) for alpha in alphas), reverse=True)
    if not grid or grid[-1] <= 0.0:
        raise ValueError(f"alphas must be a non-empty sequence of positive numbers, got {alphas}")
    train_x, val_x, test_x = _standardise(features, fold)
    if kind == "regression":
        return _fit_ridge(train_x, val_x, test_x, labels, fold, log_target, grid)
    return _fit_logistic(train_x, val_x, test_x, labels, fold, grid)


def fit_mlp(
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    fold: Fold,
    kind: TaskKind,
    log_target: bool = False,
    seed: int = 0,
    hidden: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    max_epochs: int = 300,
    patience: int = 25,
    batch_size: int = 256,
    whitening: Sequence[Whitening] = DEFAULT_WHITENING,
) -> ProbeResult:
    """A one-hidden-layer MLP, ``Linear(D, hidden) -> GELU -> Linear(hidden, 1)``, early-stopped.

    Trained with AdamW on train-standardised features, for each of ``whitening`` as they are
    (None) or whitened (:func:`whitener`): Smooth-L1 loss on the train-standardised
    target (in log space with ``log_target``) for regression, BCE-with-logits for binary. After
    every epoch the validation metric is measured (ties for binary broken by validation BCE); the
    best epoch's weights are kept and training stops after ``patience`` epochs without
    improvement. Of the whitenings, the one whose best epoch scores best on validation wins (ties:
    the earlier); when ``whitening`` offers None and the fold has no more train rows than
    feature columns, None alone is fitted (the covariance could not be estimated). Weights are
    initialised from ``seed`` inside :func:`torch.random.fork_rng` and batches are shuffled by a
    generator seeded with ``seed``, so the global RNG is untouched and equal inputs give
    bitwise-equal results.

    Whitening matters because Adam steps along the feature axes: an embedding that holds a label
    in directions of low variance is read by ridge regression (closed form) but barely reached by
    an early-stopped MLP on merely standardised features, which can then score worse than the
    linear probe; on other features whitening lets the MLP overfit within a few epochs, so the
    validation rows choose.

    Args:
        x: Features ``[N, D]``.
        y: Labels ``[N]``.
        fold: The split.
        kind: ``"regression"`` or ``"binary"``.
        log_target: Regression only: fit ``log1p(y)`` and map back with ``expm1`` (labels >= 0).
        seed: Seed of the initialisation and of the batch order.
        hidden: Width of the hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_epochs: Upper bound on training epochs.
        patience: Epochs without validation improvement before stopping.
        batch_size: Train rows per optimiser step.
        whitening: Whitenings to try (at least one): None, or a shrinkage >= 0.

    Returns:
        The result for the best whitening and epoch (``selected="whitening=...,epochs=..."``,
        whitening ``none`` or the shrinkage, epochs 1-based).

    Raises:
        ValueError: If ``x`` is not ``[N, D]`` for ``y`` of ``[N]``, the fold's index arrays are
            empty, out of range or overlap, fold rows hold non-finite values, binary labels are
            not 0/1, ``log_target`` is set for a binary task or meets negative train labels,
            ``hidden``, ``max_epochs``, ``patience`` or ``batch_size`` is below 1, or
            ``whitening`` is empty or holds a negative shrinkage.
    """
    features, labels = _check_inputs(x, y, fold, kind, log_target)
    for name, value in (
        ("hidden", hidden),
        ("max_epochs", max_epochs),
        ("patience", patience),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    grid = check_whitening(whitening)
    train_x, val_x, test_x = _standardise(features, fold)

    def fit(white: Callable[[NDArray[np.float64]], NDArray[np.float64]]) -> tuple[ProbeResult, tuple[float, ...]]:
        inputs = tuple(_tensor(white(part)) for part in (train_x, val_x, test_x))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(inputs[0].shape[1], hidden), nn.GELU(), nn.Linear(hidden, 1))
        return _fit_early_stopped(
            model, inputs, labels, fold, kind, log_target, seed=seed, lr=lr,
            weight_decay=weight_decay, max_epochs=max_epochs, patience=patience, batch_size=batch_size,
        )

    return _best_whitening(fit, grid, train_x)


@dataclass(frozen=True)
class TokenSets:
    """The frozen token embeddings of every tile, as one flat table (for :func:`fit_set`).

    Attributes:
        x: ``[M, D]`` token features.
        tile: ``[M]`` the row (in the labels' order) of each token's tile.
        kind: ``[M]`` the kind of each token, ``0 .. num_kinds - 1`` (e.g. entity, image patch).
        num_tiles: Number of tiles, some possibly without tokens.
        num_kinds: Number of token kinds.
    """

    x: NDArray[np.float32]
    tile: NDArray[np.int64]
    kind: NDArray[np.int64]
    num_tiles: int
    num_kinds: int

    def __post_init__(self) -> None:
        """Check shapes and ranges.

        Raises:
            ValueError: If the arrays disagree in length or index outside their ranges.
        """
        if self.x.ndim != 2 or not len(self.x) == len(self.tile) == len(self.kind):
            raise ValueError(f"x must be [M, D] with one tile and kind per row, got {self.x.shape}, "
                             f"{len(self.tile)} tiles, {len(self.kind)} kinds")
        for name, values, bound in (("tile", self.tile, self.num_tiles), ("kind", self.kind, self.num_kinds)):
            if len(values) and (values.min() < 0 or values.max() >= bound):
                raise ValueError(f"{name} indexes outside 0 .. {bound - 1}")


class _SetProbe(nn.Module):
    """Deep Sets over each tile's tokens: a shared token MLP, ``[mean, max]`` pooled per kind
    (zeros for a kind the tile lacks), then a linear head. ``forward`` takes tile rows."""

    def __init__(self, x: torch.Tensor, tile: torch.Tensor, kind: torch.Tensor, num_tiles: int,
                 num_kinds: int, hidden: int) -> None:
        super().__init__()
        order = torch.argsort(tile, stable=True)
        self._x = torch.cat([x[order], nn.functional.one_hot(kind[order], num_kinds).float()], 1)
        self._kind = kind[order]
        self._count = torch.bincount(tile, minlength=num_tiles)
        self._start = torch.cumsum(self._count, 0) - self._count
        self.num_kinds = num_kinds
        self.token = nn.Sequential(nn.Linear(self._x.shape[1], hidden), nn.GELU(),
                                   nn.Linear(hidden, hidden), nn.GELU())
        self.head = nn.Linear(2 * num_kinds * hidden, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """``Long[B]`` tile rows -> ``Float[B, 1]`` outputs."""
        count = self._count[rows]
        tile_of = torch.repeat_interleave(torch.arange(len(rows)), count)
        first = torch.repeat_interleave(self._start[rows] - (torch.cumsum(count, 0) - count), count)
        index = torch.arange(int(count.sum())) + first
        h = self.token(self._x[index])
        segment = (tile_of * self.num_kinds + self._kind[index])[:, None].expand_as(h)
        size = (len(rows) * self.num_kinds, h.shape[1])
        total = h.new_zeros(size).scatter_add(0, segment, h)
        n = h.new_zeros(size[0]).index_add(0, segment[:, 0], h.new_ones(len(h)))
        top = h.new_zeros(size).scatter_reduce(0, segment, h, "amax", include_self=False)
        pooled = torch.cat([total / n.clamp(min=1)[:, None], top], 1).view(len(rows), -1)
        return self.head(pooled)


def fit_set(
    tokens: TokenSets,
    y: NDArray[np.floating],
    fold: Fold,
    kind: TaskKind,
    log_target: bool = False,
    seed: int = 0,
    hidden: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    max_epochs: int = 200,
    patience: int = 20,
    batch_size: int = 32,
    whitening: Sequence[Whitening] = DEFAULT_WHITENING,
) -> ProbeResult:
    """A set probe on a tile's frozen token embeddings (Deep Sets), early-stopped like the MLP.

    Pooling a tile's tokens into one ``[max, mean]`` vector before the probe hides what only a
    few tokens show (a handful of image patches with a painted crossing among 196); this probe
    learns the per-token features first: each token (standardised with the mean and standard
    deviation of the train tiles' tokens and whitened with their covariance as in
    :func:`fit_mlp`, plus a one-hot of its kind) goes through a shared two-layer MLP
    (``hidden`` wide, GELU), the outputs are ``[mean, max]`` pooled per kind and a linear layer
    maps them to the prediction. Loss, target scaling, clamping, validation early stopping, the
    choice of whitening and seeding are those of :func:`fit_mlp`.

    Args:
        tokens: Every tile's tokens (:class:`TokenSets`, tiles in the order of ``y``).
        y: Labels ``[N]``, ``N = tokens.num_tiles``.
        fold: The split.
        kind: ``"regression"`` or ``"binary"``.
        log_target: Regression only: fit ``log1p(y)``.
        seed: Seed of the initialisation and of the batch order.
        hidden: Width of the token MLP.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_epochs: Upper bound on training epochs.
        patience: Epochs without validation improvement before stopping.
        batch_size: Train tiles per optimiser step.
        whitening: Whitenings of the tokens to try, as in :func:`fit_mlp`.

    Returns:
        The result for the best whitening and epoch (as :func:`fit_mlp`).

    Raises:
        ValueError: As :func:`fit_mlp`, and if ``y`` does not have one label per tile, the
            fold's tiles' tokens hold non-finite values or its train tiles have none.
    """
    labels = _check_labels(y, fold, kind)
    if len(labels) != tokens.num_tiles:
        raise ValueError(f"y has {len(labels)} labels for {tokens.num_tiles} tiles")
    if log_target and (kind == "binary" or labels[fold.train].min() < 0.0):
        raise ValueError("log_target needs a regression task with labels >= 0 on the train rows")
    if min(hidden, max_epochs, patience, batch_size) < 1:
        raise ValueError("hidden, max_epochs, patience and batch_size must be >= 1")
    grid = check_whitening(whitening)
    split = np.zeros(tokens.num_tiles, np.int8)
    split[fold.train], split[fold.val], split[fold.test] = 1, 2, 2
    used = split[tokens.tile] > 0
    if not np.isfinite(tokens.x[used]).all():
        raise ValueError(f"fold {fold.index}: tokens of the fold's tiles hold non-finite values")
    train = tokens.x[split[tokens.tile] == 1].astype(np.float64)
    if not len(train):
        raise ValueError(f"fold {fold.index}: the train tiles have no tokens")
    scale = _scaler(train)
    train, scaled = scale(train), scale(tokens.x[used].astype(np.float64))
    rows = tuple(torch.from_numpy(np.asarray(part, dtype=np.int64)) for part in (fold.train, fold.val, fold.test))

    def fit(white: Callable[[NDArray[np.float64]], NDArray[np.float64]]) -> tuple[ProbeResult, tuple[float, ...]]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _SetProbe(_tensor(white(scaled)), torch.from_numpy(tokens.tile[used]),
                              torch.from_numpy(tokens.kind[used]), tokens.num_tiles, tokens.num_kinds,
                              hidden)
        return _fit_early_stopped(
            model, rows, labels, fold, kind, log_target, seed=seed, lr=lr, weight_decay=weight_decay,
            max_epochs=max_epochs, patience=patience, batch_size=batch_size,
        )

    return _best_whitening(fit, grid, train)


def _fit_early_stopped(
    model: nn.Module,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    labels: NDArray[np.float64],
    fold: Fold,
    kind: TaskKind,
    log_target: bool,
    **training: Any,
) -> tuple[ProbeResult, tuple[float, ...]]:
    """Fit ``model`` on the train inputs (loss and target as :func:`fit_mlp` describes), stop on
    the validation inputs, score the test inputs; ``training`` goes to :func:`_train_early_stopped`.

    Returns:
        The result and the validation key of its epoch (metric, then BCE for binary tasks).
    """
    train_y, val_y = labels[fold.train], labels[fold.val]
    if kind == "regression":
        target, decode = _regression_target(train_y, log_target)
        loss_fn: nn.Module = nn.SmoothL1Loss()

        def val_key(outputs: NDArray[np.float64]) -> tuple[float, ...]:
            return (_metric(decode(outputs), val_y, kind),)

    else:
        target, decode = train_y, _logits_to_labels
        loss_fn = nn.BCEWithLogitsLoss()

        def val_key(outputs: NDArray[np.float64]) -> tuple[float, ...]:
            return _metric(decode(outputs), val_y, kind), _bce(outputs, val_y)

    train_in, val_in, test_in = inputs
    best_epoch, best_key = _train_early_stopped(model, loss_fn, (train_in, _tensor(target)), val_in,
                                                val_key, **training)
    predictions = decode(_predict(model, test_in))
    return _result(predictions, labels[fold.test], kind, best_key[0], f"epochs={best_epoch}"), best_key


def check_whitening(whitening: Sequence[Whitening]) -> list[Whitening]:
    """``whitening`` as a list, checked.

    Raises:
        ValueError: If it is empty or holds a shrinkage that is negative or not finite.
    """
    grid = [None if value is None else float(value) for value in whitening]
    if not grid or any(value is not None and not (np.isfinite(value) and value >= 0.0) for value in grid):
        raise ValueError(f"whitening must be a non-empty sequence of None or shrinkages >= 0, "
                         f"got {list(whitening)}")
    return grid


def whitening_name(shrinkage: Whitening) -> str:
    """``"none"`` or the shrinkage, as ``selected`` and the report write it."""
    return "none" if shrinkage is None else f"{shrinkage:g}"


def _best_whitening(
    fit: Callable[[Callable[[NDArray[np.float64]], NDArray[np.float64]]], tuple[ProbeResult, tuple[float, ...]]],
    grid: list[Whitening],
    train: NDArray[np.float64],
) -> ProbeResult:
    """Of ``fit`` given the :func:`whitener` of ``train`` for each entry of ``grid`` (one
    decomposition serves them all), the result with the lowest validation key (ties: the
    earlier), its ``selected`` prefixed with the whitening.

    With no more train rows than columns the covariance is singular and its principal axes are
    estimated from too few rows to be trusted, so a grid that offers None is cut to None."""
    if None in grid and len(train) <= train.shape[1]:
        grid = [None]
    axes = _principal_axes(train) if any(w is not None for w in grid) else None
    fits = []
    for order, shrinkage in enumerate(grid):
        result, key = fit(whitener(train, shrinkage, axes))
        result.selected = f"whitening={whitening_name(shrinkage)},{result.selected}"
        fits.append((key, order, result))
    return min(fits, key=lambda item: item[:2])[2]


@dataclass(frozen=True)
class _Axes:
    """Principal axes of train rows: their mean, ``[D, K]`` axes, the variance along each, and
    the mean variance over all ``D`` directions."""

    mean: NDArray[np.float64]
    axes: NDArray[np.float64]
    variances: NDArray[np.float64]
    mean_variance: float


def _principal_axes(train: NDArray[np.float64]) -> _Axes:
    """The principal axes of ``train`` ``[N, D]``: all ``D`` from the covariance for ``N >= D``;
    for fewer rows than columns the ``N`` of a thin SVD of the rows (the others have no train
    variance), which is much cheaper for wide features."""
    mean = train.mean(axis=0)
    centred = train - mean
    if len(train) < train.shape[1]:
        _, singular, rows = np.linalg.svd(centred, full_matrices=False)
        variances, axes = singular**2 / len(train), rows.T
    else:
        variances, axes = np.linalg.eigh(centred.T @ centred / len(train))
    variances = variances.clip(min=0.0)
    return _Axes(mean, axes, variances, float(variances.sum()) / train.shape[1])


def whitener(
    train: NDArray[np.float64], shrinkage: Whitening, axes: _Axes | None = None
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """Shrunk PCA whitening fitted on the ``train`` rows (the identity for ``shrinkage`` None).

    Rows are centred on the train mean and rotated onto the train covariance's eigenvectors (all
    ``D``, or for ``N < D`` train rows the ``N`` of a thin SVD, so the output is ``[M, min(N,
    D)]``); the coordinate along an eigenvector of variance ``v`` is divided by
    ``sqrt(v + shrinkage * mean(v))``, the mean over all ``D`` directions (0 where that is 0).
    Shrinkage 0 whitens fully (every direction of the train rows gets unit variance, noise
    included); a large shrinkage only rotates and rescales. In between, strong directions are
    evened out and weak ones keep their relative size, so a gradient-trained probe reaches what
    they hold without drowning in noise.

    Args:
        train: The rows that fit it, ``[N, D]``.
        shrinkage: As above; None: no whitening.
        axes: ``train``'s principal axes when already computed (one decomposition serves every
            shrinkage).
    """
    if shrinkage is None:
        return lambda values: values
    found = axes or _principal_axes(train)
    total = found.variances + shrinkage * found.mean_variance
    scale = np.divide(1.0, np.sqrt(total), out=np.zeros_like(total), where=total > STD_FLOOR**2)
    matrix = found.axes * scale
    return lambda values: (values - found.mean) @ matrix


def _train_early_stopped(
    model: nn.Module,
    loss_fn: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val_inputs: torch.Tensor,
    val_key: Callable[[NDArray[np.float64]], tuple[float, ...]],
    *,
    seed: int,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    patience: int,
    batch_size: int,
) -> tuple[int, tuple[float, ...]]:
    """Train with AdamW, keep the weights of the epoch with the lowest ``val_key``.

    Returns:
        The best epoch (1-based) and its validation key; ``model`` holds that epoch's weights.
    """
    inputs, goals = train
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best_key: tuple[float, ...] = (float("inf"),)
    best_epoch = 0
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(inputs[batch]).squeeze(1), goals[batch]).backward()
            optimizer.step()
        key = val_key(_predict(model, val_inputs))
        if best_epoch == 0 or key < best_key:
            best_key, best_epoch = key, epoch
            best_state = {name: value.clone() for name, value in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return best_epoch, best_key


def _fit_ridge(
    train_x: NDArray[np.float64],
    val_x: NDArray[np.float64],
    test_x: NDArray[np.float64],
    labels: NDArray[np.float64],
    fold: Fold,
    log_target: bool,
    grid: list[float],
) -> ProbeResult:
    """Ridge over ``grid`` (largest first): the lowest validation MAE wins, ties the first."""
    train_y, val_y = labels[fold.train], labels[fold.val]
    low, high = float(train_y.min()), float(train_y.max())
    target = np.log1p(train_y) if log_target else train_y
    models = [Ridge(alpha=alpha, solver="cholesky").fit(train_x, target) for alpha in grid]
    scores = [
        _metric(_from_fit_space(model.predict(val_x), log_target, low, high), val_y, "regression")
        for model in models
    ]
    best = int(np.argmin(scores))
    model, score, alpha = models[best], scores[best], grid[best]
    predictions = _from_fit_space(model.predict(test_x), log_target, low, high)
    return _result(predictions, labels[fold.test], "regression", score, f"alpha={alpha:g}")


def _fit_logistic(
    train_x: NDArray[np.float64],
    val_x: NDArray[np.float64],
    test_x: NDArray[np.float64],
    labels: NDArray[np.float64],
    fold: Fold,
    grid: list[float],
) -> ProbeResult:
    """Logistic regression with ``C = 1/alpha`` over ``grid`` (largest ``alpha`` first).

    The lowest validation error rate wins, then the lowest validation log-loss, then the first.
    """
    train_y, val_y, test_y = labels[fold.train], labels[fold.val], labels[fold.test]
    classes = np.unique(train_y)
    if len(classes) == 1:
        value = float(classes[0])
        val_metric = _metric(np.full(len(val_y), value), val_y, "binary")
        selected = f"single class={value:g}"
        return _result(np.full(len(test_y), value), test_y, "binary", val_metric, selected)
    models = [LogisticRegression(C=1.0 / alpha, solver="lbfgs", max_iter=2000) for alpha in grid]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for model in models:
            model.fit(train_x, train_y)
    keys: list[tuple[float, float]] = []
    for model in models:
        logits = model.decision_function(val_x)
        keys.append((_metric(_logits_to_labels(logits), val_y, "binary"), _bce(logits, val_y)))
    best = min(range(len(grid)), key=keys.__getitem__)
    model, val_metric, alpha = models[best], keys[best][0], grid[best]
    predictions = _logits_to_labels(model.decision_function(test_x))
    return _result(predictions, test_y, "binary", val_metric, f"alpha={alpha:g}")


def _check_labels(y: NDArray[np.floating], fold: Fold, kind: str) -> NDArray[np.float64]:
    """Validate ``kind``, the fold and the labels of its rows; return the labels as float64."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    labels = np.asarray(y, dtype=np.float64)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {labels.shape}")
    rows = _check_fold(fold, len(labels))
    if not np.isfinite(labels[rows]).all():
        raise ValueError(f"fold {fold.index}: y holds non-finite values on the fold's rows")
    if kind == "binary" and not np.isin(labels[rows], (0.0, 1.0)).all():
        raise ValueError(f"fold {fold.index}: binary labels must be 0 or 1")
    return labels


def _check_fold(fold: Fold, n_rows: int) -> NDArray[np.int64]:
    """Check that the fold's index arrays are non-empty, in range and disjoint; return them all."""
    parts = {"train": fold.train, "val": fold.val, "test": fold.test}
    for name, part in parts.items():
        rows = np.asarray(part)
        if rows.ndim != 1 or len(rows) == 0 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"fold {fold.index}: {name} must be a non-empty 1-D integer array")
        if rows.min() < 0 or rows.max() >= n_rows:
            raise ValueError(f"fold {fold.index}: {name} indexes outside the {n_rows} rows")
    every = np.concatenate([np.asarray(part, dtype=np.int64) for part in parts.values()])
    if len(np.unique(every)) != len(every):
        raise ValueError(
            f"fold {fold.index}: train, val and test must be disjoint, without repeats"
        )
    return every


def _check_inputs(
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    fold: Fold,
    kind: str,
    log_target: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate the inputs of a fitted probe; return features and labels as float64."""
    labels = _check_labels(y, fold, kind)
    features = np.asarray(x, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"x must be [N, D] with N = len(y) = {len(labels)}, got {features.shape}")
    rows = np.concatenate([fold.train, fold.val, fold.test])
    if not np.isfinite(features[rows]).all():
        raise ValueError(f"fold {fold.index}: x holds non-finite values on the fold's rows")
    if log_target and kind == "binary":
        raise ValueError("log_target applies to regression tasks only")
    if log_target and labels[fold.train].min() < 0.0:
        raise ValueError("log_target needs labels >= 0 on the train rows")
    return features, labels


def _standardise(
    x: NDArray[np.float64], fold: Fold
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Train, val and test features scaled with the train mean and std; flat columns become 0."""
    scaled = _scaler(x[fold.train])
    return scaled(x[fold.train]), scaled(x[fold.val]), scaled(x[fold.test])


def _scaler(train: NDArray[np.float64]) -> Callable[[NDArray[np.floating]], NDArray[np.float64]]:
    """Scaling by the mean and std of the ``train`` rows; columns flat there become 0."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    informative = std > STD_FLOOR
    scale = np.where(informative, std, 1.0)
    return lambda values: np.where(informative, (values - mean) / scale, 0.0)


def _regression_target(
    train_y: NDArray[np.float64], log_target: bool
) -> tuple[NDArray[np.float64], Callable[[NDArray[np.float64]], NDArray[np.float64]]]:
    """The standardised train target and the map from model outputs back to clamped labels."""
    low, high = float(train_y.min()), float(train_y.max())
    target = np.log1p(train_y) if log_target else train_y
    centre, spread = float(target.mean()), float(target.std())
    spread = spread if spread > STD_FLOOR else 1.0

    def decode(outputs: NDArray[np.float64]) -> NDArray[np.float64]:
        return _from_fit_space(outputs * spread + centre, log_target, low, high)

    return (target - centre) / spread, decode


def _from_fit_space(
    values: NDArray[np.float64], log_target: bool, low: float, high: float
) -> NDArray[np.float64]:
    """Undo ``log1p`` if it was applied and clamp to the train label range ``[low, high]``."""
    if log_target:
        values = np.expm1(np.minimum(values, np.log1p(high)))
    return np.clip(values, low, high)


def _logits_to_labels(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """0/1 predictions: 1 where the logit is positive."""
    return (logits > 0.0).astype(np.float64)


def _bce(logits: NDArray[np.float64], labels: NDArray[np.float64]) -> float:
    """Mean binary cross-entropy of logits, computed stably."""
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def _metric(predictions: NDArray[np.float64], labels: NDArray[np.float64], kind: str) -> float:
    """MAE for regression, error rate for binary."""
    if kind == "regression":
        return float(np.mean(np.abs(predictions - labels)))
    return float(np.mean(predictions != labels))


def _result(
    predictions: NDArray[np.float64],
    test_y: NDArray[np.float64],
    kind: str,
    val_metric: float,
    selected: str,
) -> ProbeResult:
    """Score the test predictions and flag them constant if their range is negligible."""
    predictions = np.asarray(predictions, dtype=np.float64)
    spread = float(np.ptp(predictions))
    constant = spread <= 1e-9 * max(1.0, abs(float(predictions.mean())))
    return ProbeResult(
        metric=_metric(predictions, test_y, kind),
        val_metric=val_metric,
        predictions=predictions,
        constant=constant,
        selected=selected,
    )


def _tensor(values: NDArray[np.float64]) -> torch.Tensor:
    """A float32 tensor of ``values``."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _predict(model: nn.Module, inputs: torch.Tensor) -> NDArray[np.float64]:
    """The model's outputs for ``inputs`` in eval mode, as float64."""
    model.eval()
    with torch.inference_mode():
        return model(inputs).squeeze(1).double().numpy()
