"""Tile features of the evaluation: TagPool's pooling of entity tag vectors, and the collapse
indicators of the report's health section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geojepa.dataset.reader import TileDataset
from geojepa.features import embedding_health, pool_rows, tag_pool_features
from geojepa.model.text import tag_embedding_table
from geojepa.prepare import PrepareConfig, prepare


def test_pool_rows_is_max_then_mean_per_tile_and_zero_for_an_empty_tile() -> None:
    vectors = np.array([[1.0, -2.0], [3.0, -4.0], [-5.0, 6.0]], np.float32)
    pooled = pool_rows(vectors, np.array([0, 0, 2]), 3)
    np.testing.assert_array_equal(pooled, [[3, -2, 2, -3], [0, 0, 0, 0], [-5, 6, -5, 6]])


def test_tag_pool_pools_each_entitys_summed_tag_vectors(
    fixture_osm: Path, tmp_path: Path
) -> None:
    """Row by row against the MiniLM vectors read straight from the stored tags."""
    ds = tmp_path / "ds"
    prepare([fixture_osm], ds, config=PrepareConfig(workers=0), progress=False)
    vocab = TileDataset(ds).vocabulary().column("tag").to_pylist()
    table = tag_embedding_table(ds, vocab).numpy()
    row_of = {tag: i + 1 for i, tag in enumerate(vocab)}  # row 0: no tag
    features = tag_pool_features(ds, vocab, ds)
    tiles = [t for b in TileDataset(ds).iter_batches(columns=["entities"])
             for t in b.column("entities").to_pylist()]
    assert features.shape == (len(tiles), 2 * table.shape[1])
    assert sum(bool(t) for t in tiles) >= 2
    for entities, row in zip(tiles, features, strict=True):
        if not entities:
            assert not row.any()
            continue
        vectors = np.stack([table[[row_of[t] for t in e["tags"]]].sum(axis=0) for e in entities])
        np.testing.assert_allclose(row, np.concatenate([vectors.max(0), vectors.mean(0)]), atol=1e-5)


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
