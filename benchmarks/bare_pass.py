"""The baseline of the prepare benchmark: a bare pyosmium pass over an OSM file.

It reads every object with a node-location index and touches every object's tags and
locations (every tag's key and value, every node's and every way node's coordinates), and
nothing else. ``prepare`` is measured against it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import osmium


def bare_pass(path: Path) -> int:
    """Return the number of objects read; touches all tags and locations."""
    objects = 0
    acc = 0.0
    for obj in osmium.FileProcessor(str(path)).with_locations():
        objects += 1
        for tag in obj.tags:
            acc += len(tag.k) + len(tag.v)
        if obj.is_node():
            loc = obj.location
            if loc.valid():
                acc += loc.lon + loc.lat
        elif obj.is_way():
            for node in obj.nodes:
                loc = node.location
                if loc.valid():
                    acc += loc.lon + loc.lat
    return objects


if __name__ == "__main__":
    print(bare_pass(Path(sys.argv[1])))
