"""Human-readable summary of a dataset (``geojepa info`` and the end of ``prepare``)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table

from geojepa.dataset.reader import TileDataset
from geojepa.dataset.schema import SPLITS


def summary(ds: TileDataset, top_tags: int = 15) -> Group:
    """Render counts per split, drops, imagery coverage and the most frequent tags."""
    m = ds.manifest
    splits = Table(title=f"{ds.folder}  (zoom {m.zoom}, split groups at zoom {m.group_zoom})")
    for col in ("split", "tiles", "entities", "entities/tile"):
        splits.add_column(col, justify="right" if col != "split" else "left")
    for name in (*SPLITS, "total"):
        if name == "total":
            tiles = sum(c["tiles"] for c in m.counts.values())
            ents = sum(c["entities"] for c in m.counts.values())
        else:
            tiles, ents = m.counts[name]["tiles"], m.counts[name]["entities"]
        splits.add_row(name, f"{tiles:,}", f"{ents:,}", f"{ents / tiles:.1f}" if tiles else "-")

    r = m.report
    facts = Table(show_header=False, box=None)
    facts.add_column(justify="left")
    facts.add_column(justify="right")
    read = r["read"]
    facts.add_row("OSM objects read (nodes/ways/relations)",
                  f"{read['nodes']:,} / {read['ways']:,} / {read['relations']:,}")
    facts.add_row("entities cut into tile pieces", f"{r['cut']['entities']:,} -> {r['cut']['pieces']:,}")
    facts.add_row("objects without kept tags / without geometry",
                  f"{read['no_kept_tags']:,} / {read['no_geometry']:,}")
    facts.add_row("multipolygons not closed (kept as relations)", f"{read['broken_multipolygons']:,}")
    facts.add_row("entities over the tile limit (dropped)", f"{r['cut']['oversized']:,}")
    facts.add_row(f"tiles under {m.settings['min_entities']} entities (dropped)",
                  f"{r['sparse_tiles_dropped']:,}")
    facts.add_row(f"tiles over {m.settings['max_entities']} entities (capped)",
                  f"{r['capped_tiles']:,} ({r['capped_entities']:,} entities left out)")
    if m.has_imagery:
        tiles = max(1, sum(c["tiles"] for c in m.counts.values()))
        facts.add_row("tiles with imagery", f"{r['tiles_with_image']:,} ({r['tiles_with_image'] / tiles:.1%})")
        facts.add_row("mean imagery coverage", f"{r['mean_image_coverage']:.1%}")
    else:
        facts.add_row("imagery", "none")
    facts.add_row("distinct tags", f"{m.vocab_size:,}")

    vocab = ds.vocabulary().slice(0, top_tags).to_pylist()
    tags = Table(title=f"top {len(vocab)} tags")
    tags.add_column("tag")
    tags.add_column("entities", justify="right")
    for row in vocab:
        tags.add_row(row["tag"], f"{row['count']:,}")
    return Group(splits, facts, tags)


def print_summary(ds: TileDataset, console: Console | None = None) -> None:
    """Print :func:`summary` to ``console`` (stdout by default)."""
    (console or Console()).print(summary(ds))
