"""Streaming tiles into padded batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from geojepa.dataset.loader import TagVocabulary, TileStream, _resample_vertices, collate, tile_items
from geojepa.dataset.reader import TileDataset
from geojepa.prepare import PrepareConfig, prepare


@pytest.fixture(scope="module")
def hel17(helsinki_pbf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loader") / "hel17"
    prepare([helsinki_pbf], out, config=PrepareConfig(zoom=17, workers=0), progress=False)
    return out


def test_items_match_stored_entities(hel17: Path) -> None:
    ds = TileDataset(hel17)
    vocab = TagVocabulary.of(ds)
    batch = next(ds.iter_batches(batch_size=4))
    items = tile_items(batch, vocab, max_tags=64, max_vertices=10_000)
    tags = vocab.tags.to_pylist()
    for item, row in zip(items, batch.to_pylist(), strict=True):
        assert item.tile == (row["z"], row["x"], row["y"])
        assert item.num_entities == row["n_entities"]
        for e, ids, geom, part in zip(row["entities"], item.tag_ids, item.geom, item.geom_part, strict=True):
            assert [tags[i - 1] for i in ids if i] == e["tags"]
            n_vertices = len(e["shape_xy"]) // 2
            assert np.allclose(geom[:n_vertices].ravel(), e["shape_xy"])
            starts = e["shape_parts"] + [n_vertices]
            expect = np.repeat(np.arange(len(e["shape_parts"])), np.diff(starts))
            assert part[:n_vertices].tolist() == expect.tolist()
            assert (part[n_vertices:] == -1).all()


def test_resampling_keeps_endpoints_and_caps() -> None:
    xy = np.arange(200, dtype=np.float32).reshape(100, 2)
    parts = np.zeros(100, np.int64)
    offsets = np.array([0, 3, 100])
    out, out_parts, new_off = _resample_vertices(xy, parts, offsets, cap=10)
    assert new_off.tolist() == [0, 3, 13]
    assert out[:3].tolist() == xy[:3].tolist()
    assert out[3].tolist() == xy[3].tolist() and out[12].tolist() == xy[99].tolist()
    assert np.all(np.diff(out[3:13, 0]) > 0)


def test_unknown_tags_map_to_zero() -> None:
    import pyarrow as pa

    vocab = TagVocabulary(["a=1", "b=2"])
    assert vocab.ids(pa.array(["b=2", "zz=9", "a=1"])).tolist() == [2, 0, 1]


def test_collate_pads_and_masks(hel17: Path) -> None:
    ds = TileDataset(hel17)
    items = tile_items(next(ds.iter_batches(batch_size=3)), TagVocabulary.of(ds))
    batch = collate(items)
    n = [it.num_entities for it in items]
    assert batch.valid.sum(1).tolist() == n
    assert batch.tag_ids.shape[:2] == (3, max(n))
    for i, m in enumerate(n):
        assert (batch.tag_ids[i, m:] == 0).all() and (batch.geom_part[i, m:] == -1).all()
    assert batch.image is None


def test_stream_covers_split_once_and_batches_similar_sizes(hel17: Path) -> None:
    stream = TileStream(hel17, splits=None, batch_size=8, seed=3)
    seen = Counter(tuple(t) for b in stream for t in b.tiles.tolist())
    assert len(seen) == TileDataset(hel17).num_tiles() and set(seen.values()) == {1}
    # Sorting pools by size: less padding than the stored order.
    def padding(s: TileStream) -> int:
        return sum(int((~b.valid).sum()) for b in s)
    assert padding(stream) < padding(TileStream(hel17, splits=None, batch_size=8, shuffle=False))
    # Same seed and epoch, same order; another epoch, another order.
    order = [b.tiles.tolist() for b in stream]
    assert order == [b.tiles.tolist() for b in stream]
    stream.set_epoch(1)
    assert order != [b.tiles.tolist() for b in stream]


def test_ranks_split_the_data_and_stay_in_step(hel17: Path) -> None:
    streams = [TileStream(hel17, splits=None, batch_size=4, rank=r, world_size=2, batches_per_epoch=6) for r in (0, 1)]
    tiles = [[tuple(t) for b in s for t in b.tiles.tolist()] for s in streams]
    assert [len(list(s)) for s in streams] == [6, 6]
    assert len(tiles[0]) == len(tiles[1]) == 24 and not set(tiles[0]) & set(tiles[1])


def test_resume_skips_batches(hel17: Path) -> None:
    stream = TileStream(hel17, splits=None, batch_size=8, seed=1)
    full = [b.tiles for b in stream]
    stream.set_epoch(0, skip_batches=5)
    rest = [b.tiles for b in stream]
    assert len(rest) == len(full) - 5
    assert all(torch.equal(a, b) for a, b in zip(full[5:], rest, strict=True))
