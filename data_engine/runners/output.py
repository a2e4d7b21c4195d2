"""The output folder of an engine run, written so that a crash or Ctrl-C loses and duplicates nothing.

- ``records-NNNNN.jsonl``: accepted records, ``shard_size`` per file, each file written to a
  temporary name, fsynced and renamed into place (``chatrex.utils.atomic``), so a shard is
  complete or absent.
- ``manifest.jsonl``: one line per finished image: ``{"id", "status": "ok"|"rejected"|"failed",
  ...}``. ``ok`` lines are appended after their shard is renamed into place; rejects and
  failures at once.
- ``failures.jsonl``: ``{"id", "path", "stage", "error"}`` per image a stage raised on.

On start the finished set is the union of the manifest's ids and the ids inside the shards
(which covers a crash between a shard's rename and its manifest lines). A torn last line is
ignored. Records buffered for an unfinished shard are not finished: a re-run redoes them.
"""

from __future__ import annotations

import json
import os
import re

from chatrex.utils.atomic import TEMP_PREFIX, atomic_write
from chatrex.utils.jsonl import read_jsonl

_SHARD = re.compile(r"^records-(\d{5,})\.jsonl$")


def list_shards(path: str) -> list[str]:
    """The complete record shards of an output folder, in order (read-only)."""
    return sorted(os.path.join(path, n) for n in os.listdir(path) if _SHARD.match(n))


def manifest_path(path: str) -> str:
    return os.path.join(path, "manifest.jsonl")


class OutputDir:
    def __init__(self, path: str, shard_size: int = 500):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        os.makedirs(path, exist_ok=True)
        self.path, self.shard_size = path, shard_size
        self.status: dict[str, str] = {}
        self.kept_hashes: list[tuple[str, str]] = []
        """``(id, phash)`` of finished records, in manifest order (seeds duplicate detection)."""
        for row in read_jsonl(self.manifest_path, missing_ok=True):
            if isinstance(row, dict) and "id" in row:
                self.status[row["id"]] = row.get("status", "ok")
                if row.get("phash"):
                    self.kept_hashes.append((row["id"], row["phash"]))
        numbers = [-1]
        for shard in self.shards():
            numbers.append(int(_SHARD.match(os.path.basename(shard)).group(1)))
            for rec in read_jsonl(shard):
                self.status[rec["id"]] = "ok"
        self._next_shard = max(numbers) + 1
        self._buffer: list[tuple[dict, str | None]] = []
        for leftover in os.listdir(path):  # a shard's temporary, left by a kill -9
            if leftover.startswith(TEMP_PREFIX):
                os.remove(os.path.join(path, leftover))

    @property
    def manifest_path(self) -> str:
        return manifest_path(self.path)

    def shards(self) -> list[str]:
        return list_shards(self.path)

    def is_finished(self, image_id: str, retry_failed: bool = False) -> bool:
        status = self.status.get(image_id)
        return status is not None and not (retry_failed and status == "failed")

    def _append(self, name: str, rows: list[dict]) -> None:
        with open(os.path.join(self.path, name), "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add_record(self, record: dict, phash: str | None = None) -> None:
        self._buffer.append((record, phash))
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def add_reject(self, image_id: str, path: str, stage_reason: str) -> None:
        self._append("manifest.jsonl", [{"id": image_id, "status": "rejected", "path": path, "reason": stage_reason}])
        self.status[image_id] = "rejected"

    def add_failure(self, image_id: str, path: str, stage: str, error: str) -> None:
        self._append("failures.jsonl", [{"id": image_id, "path": path, "stage": stage, "error": error}])
        self._append("manifest.jsonl", [{"id": image_id, "status": "failed", "path": path, "stage": stage}])
        self.status[image_id] = "failed"

    def flush(self) -> str | None:
        """Write buffered records as the next shard; returns its path (``None`` if nothing buffered)."""
        if not self._buffer:
            return None
        name = f"records-{self._next_shard:05d}.jsonl"
        with atomic_write(os.path.join(self.path, name), fsync=True) as f:
            for record, _ in self._buffer:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._append("manifest.jsonl", [{"id": r["id"], "status": "ok", "shard": name, **({"phash": h} if h else {})} for r, h in self._buffer])
        for record, _ in self._buffer:
            self.status[record["id"]] = "ok"
        self._next_shard += 1
        self._buffer = []
        return os.path.join(self.path, name)
