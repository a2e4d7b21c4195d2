"""Append-only prediction shards that survive ``kill -9``.

Each process appends one JSON line per finished item (an image, or a sentence) to its own
part file, ``DIR/parts/part-RANK-of-WORLD.jsonl``, flushed at once. A killed run leaves at most
one torn line at the end of each part; reopening a part cuts that line off before appending, so
the same command continues where it stopped. Which items are done is read from *every* part in
the folder, so a resumed run may even use another number of processes. Merging keeps the first
line of each key, so nothing is ever counted twice.
"""

from __future__ import annotations

import glob
import json
import os

from ..utils.jsonl import cut_torn_tail, read_jsonl

PARTS = "parts"


def part_path(out_dir: str, rank: int, world: int) -> str:
    return os.path.join(out_dir, PARTS, f"part-{rank:03d}-of-{world:03d}.jsonl")


class PartWriter:
    """Appends lines (dicts with a ``"key"`` entry) to this process's part file."""

    def __init__(self, out_dir: str, rank: int = 0, world: int = 1):
        self.path = part_path(out_dir, rank, world)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        cut_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, line: dict) -> None:
        assert "key" in line, "every prediction line needs a key"
        # One write call per line, flushed at once: a kill can cut only the line being written.
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def part_files(out_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, PARTS, "part-*-of-*.jsonl")))


def read_parts(out_dir: str) -> tuple[dict[str, dict], int]:
    """``(lines by key, duplicates skipped)`` over every part file of ``out_dir``."""
    lines: dict[str, dict] = {}
    duplicates = 0
    for path in part_files(out_dir):
        for line in read_jsonl(path):
            key = str(line["key"])
            if key in lines:
                duplicates += 1
                continue
            lines[key] = line
    return lines, duplicates


def done_keys(out_dir: str) -> set[str]:
    return set(read_parts(out_dir)[0])
