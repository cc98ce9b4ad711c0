"""Tile features of the evaluation: TagPool's pooling of entity tag vectors, and the collapse
indicators of the report's health section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geojepa.dataset.reader import TileDataset
from geojepa.errors import GeoJepaError
from geojepa.features import (
    check_tile_embeddings,
    embedding_health,
    pool_rows,
    read_tile_embeddings,
    tag_pool_features,
)
from geojepa.model.text import tag_embedding_table
from geojepa.prepare import PrepareConfig, prepare


def test_pool_rows_is_max_then_mean_per_tile_and_zero_for_an_empty_tile() -> None:
    vectors = np.array([[1.0, -2.0], [3.0, -4.0], [-5.0, 6.0]], np.float32)
    pooled = pool_rows(vectors, np.array([0, 0, 2]), 3)
    np.testing.assert_array_equal(pooled, [[3, -2, 2, -3], [0, 0, 0, 0], [-5, 6, -5, 6]])


def test_tag_pool_pools_each_entitys_summed_tag_vectors(
    fixture_osm: Path, tmp_path: Path
) -> None:
    """Row by row against the MiniLM vectors read straight from the stored tags, all entities
    together and each entity kind apart."""
    ds = tmp_path / "ds"
    prepare([fixture_osm], ds, config=PrepareConfig(workers=0), progress=False)
    vocab = TileDataset(ds).vocabulary().column("tag").to_pylist()
    table = tag_embedding_table(ds, vocab).numpy()
    row_of = {tag: i + 1 for i, tag in enumerate(vocab)}  # row 0: no tag
    features = tag_pool_features(ds, vocab, ds)
    by_kind = tag_pool_features(ds, vocab, ds, by_kind=True)
    tiles = [t for b in TileDataset(ds).iter_batches(columns=["entities"])
             for t in b.column("entities").to_pylist()]
    d = table.shape[1]
    assert features.shape == (len(tiles), 2 * d) and by_kind.shape == (len(tiles), 4 * 2 * d)
    assert sum(bool(t) for t in tiles) >= 2
    assert len({e["kind"] for t in tiles for e in t}) >= 3  # points, lines and polygons
    for entities, row, kinds_row in zip(tiles, features, by_kind, strict=True):
        if not entities:
            assert not row.any() and not kinds_row.any()
            continue
        vectors = np.stack([table[[row_of[t] for t in e["tags"]]].sum(axis=0) for e in entities])
        np.testing.assert_allclose(row, np.concatenate([vectors.max(0), vectors.mean(0)]), atol=1e-5)
        kind = np.array([e["kind"] for e in entities])
        for k, part in enumerate(np.split(kinds_row, 4)):
            mine = vectors[kind == k]
            expected = np.concatenate([mine.max(0), mine.mean(0)]) if len(mine) else np.zeros(2 * d)
            np.testing.assert_allclose(part, expected, atol=1e-5)


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


def _embeddings_table(x: list[int], y: list[int], vectors: np.ndarray) -> pa.Table:
    return pa.table({"x": pa.array(x, pa.int32()), "y": pa.array(y, pa.int64()),
                     "embedding": pa.array(list(vectors), pa.list_(pa.float32()))})


def test_tile_embeddings_are_read_in_the_datasets_order_from_either_layout(tmp_path: Path) -> None:
    x, y = np.array([5, 6, 5]), np.array([9, 9, 10])  # the dataset's tiles, in its order
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    # the file's rows: shuffled, and one tile the dataset lacks (ignored)
    table = _embeddings_table([5, 7, 5, 6], [10, 1, 9, 9], vectors)
    pq.write_table(table, tmp_path / "list.parquet")
    expected = vectors[[2, 3, 0]]
    got = read_tile_embeddings(tmp_path / "list.parquet", x, y)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    assert check_tile_embeddings(tmp_path / "list.parquet", x, y) == ["embedding"]
    # wide: every numeric column but x, y, z; a geometry (binary) and a name column ignored
    wide = pa.table({"z": [17] * 4, "x": [5, 7, 5, 6], "y": [10, 1, 9, 9],
                     **{f"e{i}": vectors[:, i].astype(np.float64) for i in range(3)},
                     "geometry": [b"\x01"] * 4, "name": ["a", "b", "c", "d"]})
    pq.write_table(wide, tmp_path / "wide.parquet")
    np.testing.assert_array_equal(read_tile_embeddings(tmp_path / "wide.parquet", x, y, 17), expected)
    assert check_tile_embeddings(tmp_path / "wide.parquet", x, y) == ["e0", "e1", "e2"]


@pytest.mark.parametrize(("table", "message"), [
    (_embeddings_table([5, 6], [9, 9], np.ones((2, 3))), "no embedding for 1 of the dataset's 3 tiles (first: x=5 y=10)"),
    (_embeddings_table([5, 6, 5, 5], [9, 9, 10, 9], np.ones((4, 3))), "tile x=5 y=9 has several rows"),
    (pa.table({"x": [5, 6, 5], "embedding": [[1.0]] * 3}), "integer columns x and y"),
    (pa.table({"x": [5, 6, 5], "y": [9.0, 9.0, 10.0], "e": [1.0] * 3}), "integer columns x and y"),
    (pa.table({"x": [5, 6, 5], "y": [9, 9, 10], "name": ["a"] * 3}), "no embedding"),
    (pa.table({"x": [5, 6, 5], "y": [9, 9, 10], "embedding": ["a"] * 3}), "must be a list of numbers"),
    (pa.table({"x": [5, 6, 5], "y": [9, 9, 10], "embedding": [[1.0], [1.0, 2.0], [1.0]]}), "several lengths"),
    (pa.table({"x": [5, 6, 5], "y": [9, 9, 10], "e": [1.0, float("nan"), 2.0]}), "NaN"),
    (pa.table({"z": [17, 16, 17], "x": [5, 6, 5], "y": [9, 9, 10], "e": [1.0] * 3}), "tiles of zoom 16 in a dataset of zoom 17"),
])
def test_bad_tile_embeddings_are_one_line_errors_naming_the_file(
    tmp_path: Path, table: pa.Table, message: str
) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(GeoJepaError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_tile_embeddings(path, np.array([5, 6, 5]), np.array([9, 9, 10]), zoom=17)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "emb.parquet"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(GeoJepaError, match="not a Parquet file"):
        check_tile_embeddings(path, np.array([1]), np.array([2]))
