"""Grouped folds and the Dummy, linear and MLP probes on generated embeddings."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from geojepa.features import pool_rows
from geojepa.probes import (
    Fold,
    ProbeResult,
    TokenSets,
    fit_dummy,
    fit_linear,
    fit_mlp,
    fit_set,
    grouped_folds,
    whitener,
)

N_ROWS = 600
EXTRA_DIMS = 20
FAST_MLP = {"hidden": 128, "max_epochs": 120, "patience": 15}
"""A smaller MLP than the default, to keep the file fast; one test runs the defaults."""


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread, restored afterwards.

    The probe MLPs are tiny: on a busy 2-core machine the OpenMP hand-offs of a second thread
    made each fit some 60x slower than on one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def embeddings() -> NDArray[np.float64]:
    """Standard-normal features: two informative dimensions and ``EXTRA_DIMS`` noise ones."""
    return np.random.default_rng(0).normal(size=(N_ROWS, 2 + EXTRA_DIMS))


def linear_labels(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``3 * x0 - 2 * x1`` plus a little noise."""
    noise = np.random.default_rng(1).normal(scale=0.1, size=len(x))
    return 3.0 * x[:, 0] - 2.0 * x[:, 1] + noise


def binary_labels(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``1`` where ``x0 + x1 > 0``."""
    return (x[:, 0] + x[:, 1] > 0.0).astype(np.float64)


def count_labels(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Poisson counts whose log-mean is linear in ``x0``."""
    return np.random.default_rng(2).poisson(np.exp(1.0 + x[:, 0])).astype(np.float64)


def first_fold() -> Fold:
    """Fold 0 of 5 over groups of 10 consecutive rows."""
    return grouped_folds(np.arange(N_ROWS) // 10, k=5, seed=0)[0]


def tampered(
    x: NDArray[np.float64], y: NDArray[np.float64], rows: NDArray[np.int64], binary: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Copies of ``x`` and ``y`` with ``rows`` replaced by unrelated, far-off values."""
    rng = np.random.default_rng(99)
    x2, y2 = x.copy(), y.copy()
    x2[rows] = rng.normal(scale=50.0, size=(len(rows), x.shape[1]))
    y2[rows] = 1.0 - y[rows] if binary else rng.uniform(1e6, 1e7, size=len(rows))
    return x2, y2


def same_result(a: ProbeResult, b: ProbeResult) -> bool:
    """Bitwise equality of two results."""
    return (
        a.metric == b.metric
        and a.val_metric == b.val_metric
        and a.selected == b.selected
        and a.constant == b.constant
        and np.array_equal(a.predictions, b.predictions)
    )


# --- grouped folds ---------------------------------------------------------------------------


def test_grouped_folds_partition_rows_and_keep_groups_together() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, size=900) * 7 + 3  # arbitrary, unsorted ids
    folds = grouped_folds(groups, k=5, seed=3)
    assert [fold.index for fold in folds] == list(range(5))
    tests = np.concatenate([fold.test for fold in folds])
    assert np.array_equal(np.sort(tests), np.arange(900))
    for fold in folds:
        parts = (fold.train, fold.val, fold.test)
        assert all(part.dtype == np.int64 and len(part) > 0 for part in parts)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(900))
        train_groups, val_groups, test_groups = (set(groups[part]) for part in parts)
        assert not train_groups & val_groups
        assert not train_groups & test_groups
        assert not val_groups & test_groups
        assert np.array_equal(fold.val, folds[(fold.index + 1) % 5].test)
    sizes = [len(fold.test) for fold in folds]
    largest_group = np.bincount(groups).max()
    assert max(sizes) - min(sizes) <= largest_group


def test_grouped_folds_are_balanced_by_rows() -> None:
    sizes = np.array([50, 40, 30, 20, 10, 10, 10, 10, 10, 5, 5, 5, 5])
    groups = np.repeat(np.arange(len(sizes)), sizes)
    folds = grouped_folds(groups, k=3, seed=0)
    assert sorted(len(fold.test) for fold in folds) == [70, 70, 70]


def test_grouped_folds_are_deterministic_per_seed() -> None:
    groups = np.random.default_rng(1).integers(0, 40, size=500)
    first, again = grouped_folds(groups, seed=5), grouped_folds(groups, seed=5)
    other = grouped_folds(groups, seed=6)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.train, b.train)
        assert np.array_equal(a.val, b.val)
        assert np.array_equal(a.test, b.test)
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(first, other, strict=True))


def test_grouped_folds_in_random_order_differ_where_sizes_fix_the_balanced_ones() -> None:
    groups = np.repeat(np.arange(12), np.arange(12) + 5)  # 12 groups, every size distinct
    balanced = [grouped_folds(groups, k=4, seed=seed) for seed in range(4)]
    assert all(np.array_equal(a.test, b.test) for other in balanced[1:]
               for a, b in zip(balanced[0], other, strict=True))  # the seed changes nothing
    shuffled = [grouped_folds(groups, k=4, seed=seed, by_size=False) for seed in range(4)]
    assignments = {tuple(tuple(f.test) for f in folds) for folds in shuffled}
    assert len(assignments) == 4
    for folds in shuffled:
        tests = np.concatenate([fold.test for fold in folds])
        assert np.array_equal(np.sort(tests), np.arange(len(groups)))
        assert all(len(set(groups[f.test]) & set(groups[f.train])) == 0 for f in folds)
        sizes = [len(f.test) for f in folds]
        assert max(sizes) - min(sizes) <= np.bincount(groups).max()


def test_grouped_folds_accept_tile_pairs() -> None:
    rng = np.random.default_rng(2)
    pairs = np.stack([rng.integers(0, 8, 400), rng.integers(0, 8, 400)], axis=1)
    from_pairs = grouped_folds(pairs, k=4, seed=1)
    from_ids = grouped_folds(pairs[:, 0] * 1000 + pairs[:, 1], k=4, seed=1)
    for a, b in zip(from_pairs, from_ids, strict=True):
        assert np.array_equal(a.test, b.test)
        assert np.array_equal(a.val, b.val)
    for fold in from_pairs:
        test_keys = {tuple(pair) for pair in pairs[fold.test]}
        assert not test_keys & {tuple(pair) for pair in pairs[fold.train]}


@pytest.mark.parametrize(("n_groups", "k"), [(2, 3), (4, 5), (1, 3)])
def test_grouped_folds_refuse_too_few_groups(n_groups: int, k: int) -> None:
    groups = np.arange(100) % n_groups
    with pytest.raises(ValueError, match=rf"^{n_groups} spatial groups .*finer group zoom"):
        grouped_folds(groups, k=k)


def test_grouped_folds_refuse_k_below_three() -> None:
    with pytest.raises(ValueError, match="k must be >= 3"):
        grouped_folds(np.arange(100), k=2)


# --- Dummy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_train", [5, 6])
def test_dummy_predicts_train_median(n_train: int) -> None:
    y = np.array([7.0, 1.0, 4.0, 10.0, 2.0, 8.0, 100.0, -50.0, 3.0, 5.0])
    fold = Fold(0, np.arange(n_train), np.array([6, 7]), np.array([8, 9]))
    median = {5: 4.0, 6: 5.5}[n_train]
    result = fit_dummy(y, fold, "regression")
    assert np.array_equal(result.predictions, [median, median])
    assert result.constant
    assert result.metric == pytest.approx(np.mean(np.abs(y[[8, 9]] - median)))
    assert result.val_metric == pytest.approx(np.mean(np.abs(y[[6, 7]] - median)))


@pytest.mark.parametrize(("train_labels", "majority"), [([1, 1, 0], 1.0), ([1, 1, 0, 0], 0.0)])
def test_dummy_binary_predicts_majority_ties_to_zero(
    train_labels: list[int], majority: float
) -> None:
    y = np.array([*train_labels, 1, 0, 1], dtype=np.float64)
    n = len(train_labels)
    fold = Fold(0, np.arange(n), np.array([n]), np.array([n + 1, n + 2]))
    result = fit_dummy(y, fold, "binary")
    assert np.array_equal(result.predictions, [majority, majority])
    assert result.constant
    assert result.metric == pytest.approx(0.5)


# --- recovering known relations --------------------------------------------------------------


def test_probes_recover_a_linear_relation() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    dummy = fit_dummy(y, fold, "regression")
    linear = fit_linear(x, y, fold, "regression")
    mlp = fit_mlp(x, y, fold, "regression", **FAST_MLP)
    assert linear.metric < 0.2 * dummy.metric
    assert mlp.metric < 0.5 * dummy.metric
    assert linear.selected.startswith("alpha=")
    assert re.fullmatch(r"whitening=(none|10),epochs=\d+", mlp.selected)
    assert not linear.constant and not mlp.constant
    assert linear.predictions.shape == mlp.predictions.shape == fold.test.shape


def test_mlp_with_default_settings_learns() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    dummy = fit_dummy(y, fold, "regression")
    assert fit_mlp(x, y, fold, "regression").metric < 0.5 * dummy.metric


def test_probes_recover_a_binary_relation() -> None:
    x = embeddings()
    y = binary_labels(x)
    fold = first_fold()
    dummy = fit_dummy(y, fold, "binary")
    linear = fit_linear(x, y, fold, "binary")
    mlp = fit_mlp(x, y, fold, "binary", **FAST_MLP)
    assert 0.3 < dummy.metric < 0.7
    assert linear.metric < 0.1
    assert mlp.metric < 0.1
    for result in (linear, mlp):
        assert set(np.unique(result.predictions)) <= {0.0, 1.0}


@pytest.mark.parametrize("probe", ["linear", "mlp"])
def test_count_probes_beat_dummy_and_stay_in_the_train_label_range(probe: str) -> None:
    x = embeddings()
    y = count_labels(x)
    fold = first_fold()
    far = x.copy()
    far[fold.test[:20], 0] = 10.0  # far outside the train range: raw outputs would overshoot
    if probe == "linear":
        result = fit_linear(x, y, fold, "regression", log_target=True)
        clamped = fit_linear(far, y, fold, "regression", log_target=True)
    else:
        result = fit_mlp(x, y, fold, "regression", log_target=True, **FAST_MLP)
        clamped = fit_mlp(far, y, fold, "regression", log_target=True, **FAST_MLP)
    assert result.metric < 0.8 * fit_dummy(y, fold, "regression").metric
    low, high = y[fold.train].min(), y[fold.train].max()
    for predictions in (result.predictions, clamped.predictions):
        assert predictions.min() >= low
        assert predictions.max() <= high
    assert np.all(clamped.predictions[:20] == high)


# --- whitening ---------------------------------------------------------------------------------


def hidden_in_weak_directions() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Features whose variance falls from 100 to 0.01 over 32 randomly rotated directions; the
    label is linear in one direction of variance 0.26. Ridge reads it in closed form, an
    early-stopped MLP on standardised features barely reaches it."""
    rng = np.random.default_rng(5)
    variances = np.logspace(2.0, -2.0, 32)
    rotation, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    z = rng.normal(size=(N_ROWS, 32))
    y = 3.0 * z[:, 20] + 0.1 * rng.normal(size=N_ROWS)
    return (z * np.sqrt(variances)) @ rotation.T, y


def test_whitener_scales_each_principal_direction_by_its_shrunk_variance() -> None:
    x = hidden_in_weak_directions()[0]
    train, other = x[:400], x[400:]
    full = whitener(train, 0.0)(train)
    np.testing.assert_allclose(full.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(full.T, bias=True), np.eye(32), atol=1e-6)
    variances = np.linalg.eigvalsh(np.cov(train.T, bias=True))
    shrunk = np.sort(np.var(whitener(train, 10.0)(train), axis=0))
    np.testing.assert_allclose(shrunk, np.sort(variances / (variances + 10.0 * variances.mean())),
                               rtol=1e-6, atol=1e-12)
    assert whitener(train, None)(other) is other
    # Fitted on the train rows only: what other rows hold does not move the map.
    moved = whitener(train, 1.0)
    np.testing.assert_array_equal(moved(other[:5]), whitener(train.copy(), 1.0)(other[:5]))
    assert np.all(np.isfinite(whitener(np.zeros((10, 3)), 1.0)(np.ones((2, 3)))))


def test_whitening_lets_the_mlp_read_weak_directions() -> None:
    x, y = hidden_in_weak_directions()
    fold = first_fold()
    linear = fit_linear(x, y, fold, "regression")
    plain = fit_mlp(x, y, fold, "regression", whitening=[None], **FAST_MLP)
    full = fit_mlp(x, y, fold, "regression", whitening=[0.0], **FAST_MLP)
    chosen = fit_mlp(x, y, fold, "regression", **FAST_MLP)
    assert linear.metric < 0.1 * plain.metric  # the label is there, linearly
    assert full.metric < 0.5 * plain.metric
    assert not chosen.selected.startswith("whitening=none,")
    assert chosen.metric < 0.85 * plain.metric


def test_folds_with_no_more_train_rows_than_columns_are_not_whitened_by_default() -> None:
    x, y = hidden_in_weak_directions()
    fold = first_fold()
    wide = np.hstack([x, np.random.default_rng(3).normal(size=(len(x), len(fold.train)))])
    assert len(fold.train) <= wide.shape[1]
    default = fit_mlp(wide, y, fold, "regression", **FAST_MLP)
    plain = fit_mlp(wide, y, fold, "regression", whitening=[None], **FAST_MLP)
    assert default.selected.startswith("whitening=none,")
    assert default.metric == plain.metric and default.val_metric == plain.val_metric
    # Asked for whitening alone, the user gets it (a thin SVD of the train rows).
    assert fit_mlp(wide, y, fold, "regression", whitening=[10.0], **FAST_MLP).selected.startswith(
        "whitening=10,")


def test_whitening_choice_is_validated() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    for bad in ([], [-1.0], [None, float("nan")]):
        with pytest.raises(ValueError, match="whitening"):
            fit_mlp(x, y, fold, "regression", whitening=bad, **FAST_MLP)
    only = fit_mlp(x, y, fold, "regression", whitening=[10.0], **FAST_MLP)
    both = fit_mlp(x, y, fold, "regression", whitening=[None, 10.0], **FAST_MLP)
    assert only.selected.startswith("whitening=10,")
    assert both.val_metric <= only.val_metric


# --- honesty: the test rows never steer the fit ----------------------------------------------


@pytest.mark.parametrize("kind", ["regression", "binary"])
def test_test_rows_never_influence_selection(kind: str) -> None:
    x = embeddings()
    y = linear_labels(x) if kind == "regression" else binary_labels(x)
    fold = first_fold()
    x2, y2 = tampered(x, y, fold.test, binary=kind == "binary")
    for fit in (fit_linear, lambda *args: fit_mlp(*args, **FAST_MLP)):
        honest, poked = fit(x, y, fold, kind), fit(x2, y2, fold, kind)
        assert poked.selected == honest.selected
        assert poked.val_metric == honest.val_metric
        assert poked.metric != honest.metric


def test_validation_rows_only_select() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    x2, y2 = tampered(x, y, fold.val, binary=False)
    # With one candidate there is nothing to select: the test predictions must not move.
    honest = fit_linear(x, y, fold, "regression", alphas=(1.0,))
    poked = fit_linear(x2, y2, fold, "regression", alphas=(1.0,))
    assert np.array_equal(poked.predictions, honest.predictions)
    assert poked.val_metric != honest.val_metric


@pytest.mark.parametrize("probe", ["linear", "mlp"])
def test_test_rows_never_enter_the_fit(probe: str) -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    moved, kept = fold.test[::2], np.arange(1, len(fold.test), 2)
    x2 = x.copy()
    x2[moved] = x[moved] * 40.0 + 25.0  # would shift any statistics computed over test rows
    if probe == "linear":
        honest, poked = fit_linear(x, y, fold, "regression"), fit_linear(x2, y, fold, "regression")
    else:
        honest = fit_mlp(x, y, fold, "regression", **FAST_MLP)
        poked = fit_mlp(x2, y, fold, "regression", **FAST_MLP)
    assert np.array_equal(poked.predictions[kept], honest.predictions[kept])
    assert not np.array_equal(poked.predictions, honest.predictions)


def test_linear_probe_ignores_feature_scale() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    plain = fit_linear(x, y, fold, "regression")
    rescaled = fit_linear(x * 5.0 + 3.0, y, fold, "regression")
    assert rescaled.selected == plain.selected
    np.testing.assert_allclose(rescaled.predictions, plain.predictions, rtol=1e-9, atol=1e-9)


# --- constant inputs, determinism, validation ------------------------------------------------


@pytest.mark.parametrize("kind", ["regression", "binary"])
def test_uninformative_features_give_constant_predictions(kind: str) -> None:
    x = np.full((N_ROWS, 8), 3.0)
    rng = np.random.default_rng(4)
    y = rng.normal(size=N_ROWS) if kind == "regression" else (rng.random(N_ROWS) < 0.3) * 1.0
    fold = first_fold()
    for result in (fit_linear(x, y, fold, kind), fit_mlp(x, y, fold, kind, **FAST_MLP)):
        assert result.constant
        assert np.ptp(result.predictions) == 0.0


def test_single_class_train_rows_predict_that_class() -> None:
    x = embeddings()
    fold = first_fold()
    y = np.zeros(N_ROWS)
    y[fold.test[:5]] = 1.0
    result = fit_linear(x, y, fold, "binary")
    assert result.constant
    assert np.all(result.predictions == 0.0)
    assert result.metric == pytest.approx(5 / len(fold.test))


def test_mlp_is_deterministic_and_leaves_global_rng_alone() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    state = torch.get_rng_state()
    first = fit_mlp(x, y, fold, "regression", seed=3, **FAST_MLP)
    assert torch.equal(torch.get_rng_state(), state)
    again = fit_mlp(x, y, fold, "regression", seed=3, **FAST_MLP)
    other = fit_mlp(x, y, fold, "regression", seed=4, **FAST_MLP)
    assert same_result(first, again)
    assert not np.array_equal(first.predictions, other.predictions)


def test_linear_is_deterministic() -> None:
    x = embeddings()
    y = binary_labels(x)
    fold = first_fold()
    assert same_result(fit_linear(x, y, fold, "binary"), fit_linear(x, y, fold, "binary"))


def test_inputs_are_validated() -> None:
    x = embeddings()
    y = linear_labels(x)
    fold = first_fold()
    with pytest.raises(ValueError, match="x must be"):
        fit_linear(x[:-1], y, fold, "regression")
    overlapping = Fold(0, fold.train, fold.val, np.concatenate([fold.test, fold.val[:1]]))
    with pytest.raises(ValueError, match="disjoint"):
        fit_mlp(x, y, overlapping, "regression")
    with pytest.raises(ValueError, match="disjoint"):
        fit_dummy(y, overlapping, "regression")
    outside = Fold(0, fold.train, fold.val, np.array([N_ROWS]))
    with pytest.raises(ValueError, match="outside"):
        fit_linear(x, y, outside, "regression")
    with pytest.raises(ValueError, match="0 or 1"):
        fit_linear(x, y, fold, "binary")
    with pytest.raises(ValueError, match="log_target"):
        fit_linear(x, y, fold, "regression", log_target=True)
    with pytest.raises(ValueError, match="regression tasks only"):
        fit_mlp(x, binary_labels(x), fold, "binary", log_target=True)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        fit_mlp(x, y, fold, "regression", patience=0)
    with pytest.raises(ValueError, match="kind"):
        fit_dummy(y, fold, "ordinal")  # type: ignore[arg-type]


# --- set probe on token embeddings -----------------------------------------------------------

FAST_SET = {"hidden": 32, "lr": 1e-2, "max_epochs": 100, "patience": 20}
"""Quicker to train than the defaults (tuned for real token embeddings), to keep the file fast."""


def marked_tokens(n_tiles: int = 300, seed: int = 0) -> tuple[TokenSets, NDArray[np.float64]]:
    """Tiles of 10-40 noise tokens of kind 0 and 20 "patches" of kind 1, 0-4 of them marked
    (feature 0 near 3, the rest near 0): the label is the number of marked patches, which a
    tile's ``[max, mean]`` over all its tokens blurs. Every 50th tile has no tokens."""
    rng = np.random.default_rng(seed)
    xs, tiles, kinds, y = [], [], [], np.zeros(n_tiles)
    for t in range(n_tiles):
        if t % 50 == 49:
            continue
        noise = rng.normal(size=(int(rng.integers(10, 41)), 4))
        patches = rng.normal(scale=0.3, size=(20, 4))
        marked = int(rng.integers(0, 5))
        patches[:marked, 0] += 3.0
        y[t] = marked
        xs += [noise, patches]
        tiles += [np.full(len(noise), t), np.full(20, t)]
        kinds += [np.zeros(len(noise), np.int64), np.ones(20, np.int64)]
    sets = TokenSets(np.concatenate(xs).astype(np.float32), np.concatenate(tiles),
                     np.concatenate(kinds), n_tiles, 2)
    return sets, y


def set_fold(n_tiles: int = 300) -> Fold:
    return grouped_folds(np.arange(n_tiles) // 10, k=5, seed=0)[0]


def test_set_probe_counts_what_few_tokens_show() -> None:
    sets, y = marked_tokens()
    fold = set_fold()
    result = fit_set(sets, y, fold, "regression", log_target=True, **FAST_SET)
    dummy = fit_dummy(y, fold, "regression")
    pooled = pool_rows(sets.x, sets.tile, sets.num_tiles)  # [max, mean] over all tokens
    mlp = fit_mlp(pooled, y, fold, "regression", log_target=True, **FAST_MLP)
    assert result.metric < 0.25 * dummy.metric
    assert result.metric < 0.5 * mlp.metric
    assert result.predictions.min() >= 0.0 and result.predictions.max() <= y[fold.train].max()
    assert re.fullmatch(r"whitening=(none|10),epochs=\d+", result.selected)


def test_set_probe_is_honest_and_deterministic() -> None:
    sets, y = marked_tokens()
    fold = set_fold()
    state = torch.get_rng_state()
    first = fit_set(sets, y, fold, "regression", seed=1, **FAST_SET)
    assert torch.equal(torch.get_rng_state(), state)
    assert same_result(first, fit_set(sets, y, fold, "regression", seed=1, **FAST_SET))
    assert not np.array_equal(first.predictions, fit_set(sets, y, fold, "regression", seed=2,
                                                         **FAST_SET).predictions)
    # test labels never select; test tokens never enter the fit (nor another tile's prediction)
    y2 = y.copy()
    y2[fold.test] = 1e6
    poked = fit_set(sets, y2, fold, "regression", seed=1, **FAST_SET)
    assert (poked.selected, poked.val_metric) == (first.selected, first.val_metric)
    moved = np.isin(sets.tile, fold.test[::2])
    x2 = sets.x.copy()
    x2[moved] = x2[moved] * 40.0 + 25.0
    shifted = fit_set(TokenSets(x2, sets.tile, sets.kind, sets.num_tiles, 2), y, fold, "regression",
                      seed=1, **FAST_SET)
    kept = np.arange(1, len(fold.test), 2)
    assert np.array_equal(shifted.predictions[kept], first.predictions[kept])
    assert not np.array_equal(shifted.predictions, first.predictions)


def test_set_probe_binary_and_validation() -> None:
    sets, y = marked_tokens()
    fold = set_fold()
    binary = (y >= 2).astype(np.float64)
    result = fit_set(sets, binary, fold, "binary", **FAST_SET)
    assert result.metric < 0.5 * fit_dummy(binary, fold, "binary").metric
    assert set(np.unique(result.predictions)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="301 labels for 300 tiles"):
        fit_set(sets, np.append(y, 0.0), fold, "regression")
    with pytest.raises(ValueError, match="log_target"):
        fit_set(sets, binary, fold, "binary", log_target=True)
    only_test = np.isin(sets.tile, fold.test)
    with pytest.raises(ValueError, match="train tiles have no tokens"):
        fit_set(TokenSets(sets.x[only_test], sets.tile[only_test], sets.kind[only_test], 300, 2), y,
                fold, "regression")
    with pytest.raises(ValueError, match="kind indexes outside 0 .. 0"):
        TokenSets(sets.x, sets.tile, sets.kind, sets.num_tiles, 1)
    with pytest.raises(ValueError, match="one tile and kind per row"):
        TokenSets(sets.x[:-1], sets.tile, sets.kind, sets.num_tiles, 2)
