"""Collapse indicators of tile embeddings (the evaluation report's health section)."""

from __future__ import annotations

import numpy as np
import pytest

from geojepa.features import embedding_health


def test_isotropic_embeddings_are_healthy() -> None:
    x = np.random.default_rng(0).normal(size=(500, 32))
    h = embedding_health(x)
    assert h["dims"] == 32
    assert h["effective_rank"] > 28  # close to the full 32
    assert abs(h["mean_cosine"]) < 0.02


def test_one_direction_of_variation_has_rank_one() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 1)) * rng.normal(size=(1, 64))
    assert embedding_health(x)["effective_rank"] == pytest.approx(1.0, abs=1e-6)


def test_a_shared_offset_shows_in_the_cosine_not_in_the_rank() -> None:
    """Probes standardise features, so only the cosine exposes a dominant common vector."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16))
    shifted = x * 0.01 + 10.0 * rng.normal(size=(1, 16))
    healthy, collapsed = embedding_health(x), embedding_health(shifted)
    assert collapsed["effective_rank"] == pytest.approx(healthy["effective_rank"], rel=1e-6)
    assert collapsed["mean_cosine"] > 0.99


def test_identical_rows_and_zero_rows() -> None:
    same = embedding_health(np.ones((10, 4)))
    assert same["effective_rank"] == 0.0 and same["mean_cosine"] == pytest.approx(1.0)
    zeros = embedding_health(np.zeros((5, 3)))
    assert zeros["effective_rank"] == 0.0 and zeros["mean_cosine"] == 0.0
    assert np.isnan(embedding_health(np.ones((1, 3)))["mean_cosine"])
