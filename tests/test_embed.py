"""Embedding a dataset with a model pretrained on other data: tags its pretraining never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import geojepa.embed
from geojepa.dataset.loader import collate
from geojepa.dataset.reader import TileDataset
from geojepa.embed import Checkpoint, embed_dataset, new_tags, with_dataset_tags
from geojepa.evaluate import _vocabulary_note
from geojepa.model.jepa import GeoJEPA, GeoJEPAConfig
from geojepa.prepare import PrepareConfig, prepare

TINY = {"d": 32, "depth": 1, "heads": 2, "predictor_d": 16, "predictor_depth": 1, "predictor_heads": 2,
        "geometry_dim": 16, "geometry_depth": 1, "geometry_heads": 2, "modalities": "GT"}


@pytest.fixture(scope="module")
def dataset(fixture_osm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "ds"
    prepare([fixture_osm], out, config=PrepareConfig(workers=0), progress=False)
    return out


def _tags(dataset: Path) -> list[str]:
    return TileDataset(dataset).vocabulary().column("tag").to_pylist()


def _checkpoint(dataset: Path, vocabulary: list[str], seed: int = 0, **settings: object) -> Checkpoint:
    """An untrained model that knows only ``vocabulary`` (as if pretrained on other data)."""
    config = GeoJEPAConfig(**{**TINY, **settings}).with_dataset(dataset, vocabulary)
    torch.manual_seed(seed)
    return Checkpoint(GeoJEPA(config).eval(), config, list(vocabulary), {}, {})


def test_unseen_tags_are_read_as_by_a_model_that_knew_them(dataset: Path) -> None:
    tags = _tags(dataset)
    seen, unseen = tags[::2], tags[1::2]
    assert len(unseen) >= 3
    ckpt = _checkpoint(dataset, seen)
    assert new_tags(ckpt, dataset) == unseen
    extended = with_dataset_tags(ckpt, dataset)
    assert extended.vocabulary == seen + unseen
    old, new = ckpt.model.tokenizer.tags.table, extended.model.tokenizer.tags.table
    assert old.shape[0] == len(seen) + 1  # the given checkpoint is left as it was
    assert torch.equal(new[: len(seen) + 1], old)  # known tags keep their ids and vectors
    # The same weights in a model whose vocabulary held every tag from the start.
    twin = _checkpoint(dataset, seen + unseen, seed=1)
    twin.model.load_state_dict(ckpt.model.state_dict())
    torch.testing.assert_close(new, twin.model.tokenizer.tags.table, atol=1e-5, rtol=0)
    a = embed_dataset(ckpt, dataset, batch_size=4, progress=False)
    b = embed_dataset(twin, dataset, batch_size=4, progress=False)
    np.testing.assert_allclose(a.entity, b.entity, atol=1e-4)
    np.testing.assert_allclose(a.tile, b.tile, atol=1e-4)
    # Those tags matter: with their vectors zeroed the same entities embed differently.
    twin.model.tokenizer.tags.table[len(seen) + 1:] = 0.0
    c = embed_dataset(twin, dataset, batch_size=4, progress=False)
    assert np.abs(a.entity - c.entity).max() > 1e-2


def test_learned_tag_tables_and_known_vocabularies_are_left_alone(dataset: Path) -> None:
    tags = _tags(dataset)
    learned = _checkpoint(dataset, tags[::2], tag_encoder="learned", tag_dim=32)
    assert with_dataset_tags(learned, dataset) is learned
    complete = _checkpoint(dataset, tags)
    assert new_tags(complete, dataset) == []
    assert with_dataset_tags(complete, dataset) is complete
    geometry_only = _checkpoint(dataset, tags[::2], modalities="G")
    assert with_dataset_tags(geometry_only, dataset) is geometry_only


def test_the_report_says_how_many_tags_were_new(dataset: Path) -> None:
    tags = _tags(dataset)
    ds = TileDataset(dataset)
    unseen = len(tags[1::2])
    frozen = _vocabulary_note(_checkpoint(dataset, tags[::2]), ds)
    assert f" {unseen} of the dataset's {len(tags)} tags are not in its pretraining" in frozen
    assert "frozen text tag encoder reads them" in frozen
    learned = _vocabulary_note(_checkpoint(dataset, tags[::2], tag_encoder="learned", tag_dim=32), ds)
    assert "count as absent" in learned
    assert _vocabulary_note(_checkpoint(dataset, tags), ds) == ""


def test_tiles_batched_by_size_come_back_in_stored_order(
    dataset: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = _checkpoint(dataset, _tags(dataset))
    alone = embed_dataset(ckpt, dataset, batch_size=1, progress=False)  # no batch-mates at all
    widths: list[int] = []

    def spy(items: list, image_size: int | None = None) -> object:
        widths.append(max(it.num_entities for it in items))
        return collate(items, image_size)

    monkeypatch.setattr(geojepa.embed, "collate", spy)
    monkeypatch.setattr(geojepa.embed, "SORT_WINDOW", 2)  # one window of 4 tiles, 2 batches
    paired = embed_dataset(ckpt, dataset, batch_size=2, progress=False)
    stored = list(TileDataset(dataset).iter_tiles(columns=["z", "x", "y", "n_entities"]))
    sizes = np.array([t["n_entities"] for t in stored])
    assert sorted(sizes) != list(sizes)  # stored order is not size order: batching reorders
    assert widths == [sorted(sizes)[1], sorted(sizes)[3]]  # the smallest two, then the largest
    expected = np.array([[t["z"], t["x"], t["y"]] for t in stored])
    for emb in (alone, paired):
        assert np.array_equal(emb.tiles, expected)
        assert np.array_equal(emb.entity_tile, np.repeat(np.arange(len(sizes)), sizes))
        assert np.array_equal(emb.entity_index, np.concatenate([np.arange(n) for n in sizes]))
    np.testing.assert_allclose(paired.tile, alone.tile, atol=1e-5)
    np.testing.assert_allclose(paired.entity, alone.entity, atol=1e-5)
    assert np.abs(np.diff(alone.tile, axis=0)).max() > 1e-3  # tiles differ, so order is tested
