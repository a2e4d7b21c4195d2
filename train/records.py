"""Lazy access to JSONL record files (DESIGN.md §5), one image per line.

Only the byte offset of each line is kept in memory (8 bytes per record), so an index over
millions of records is cheap; a record is parsed when it is read.
"""

from __future__ import annotations

import json
import os
from array import array
from typing import Sequence


class JsonlRecords:
    """Random access to the records of one or more JSONL files.

    Each record's relative ``image`` path is resolved against the directory of its file.
    Blank lines are skipped. Records are returned as fresh dicts.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("no record files given")
        self._file_of = array("I")
        self._offsets = array("Q")
        for file_index, path in enumerate(self.paths):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"record file {path!r} does not exist")
            offset = 0
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        self._file_of.append(file_index)
                        self._offsets.append(offset)
                    offset += len(line)
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    def _handle(self, file_index: int):
        # One handle per file per process; reopened after fork (DataLoader workers) by pid.
        key = (os.getpid(), file_index)
        handle = self._handles.get(key)
        if handle is None:
            handle = open(self.paths[file_index], "rb")
            self._handles[key] = handle
        return handle

    def raw(self, index: int) -> dict:
        """The record as stored (image path unresolved)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"record index {index} out of range for {len(self)} records")
        index %= len(self)
        handle = self._handle(self._file_of[index])
        handle.seek(self._offsets[index])
        line = handle.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.paths[self._file_of[index]]}: record {index} is not valid JSON ({err})") from err

    def __getitem__(self, index: int) -> dict:
        record = self.raw(index)
        image = record.get("image")
        if isinstance(image, str) and not os.path.isabs(image):
            record["image"] = os.path.join(os.path.dirname(os.path.abspath(self.paths[self._file_of[index % len(self)]])), image)
        return record

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
