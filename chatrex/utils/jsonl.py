"""The project's one JSONL reader (records, manifests, logs, input lists).

Every writer in the project appends ``json + "\\n"``, so a crash can leave at most one torn
line: the last one, without its newline. That line is skipped. Any other line that is not
valid JSON is a real problem (a hand-edited file, a bug in a writer, two files concatenated)
and raises :class:`MalformedJsonlError` naming the file and the line, instead of silently
dropping data.
"""

from __future__ import annotations

import json
import os
from array import array
from typing import Iterator, Sequence


class MalformedJsonlError(ValueError):
    """A line of a JSONL file that is not valid JSON (and not a torn last line)."""

    def __init__(self, path: str, line_number: int, reason: str):
        self.path, self.line_number = path, line_number
        super().__init__(f"{path}:{line_number}: not valid JSON ({reason})")


def _parse(raw: bytes, path: str, line_number: int):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedJsonlError(path, line_number, str(err)) from None


def _is_torn_tail(raw: bytes) -> bool:
    """A last line without its newline that does not parse: a write a crash cut short."""
    if raw.endswith(b"\n"):
        return False
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return False


def read_jsonl(path: str | os.PathLike, missing_ok: bool = False, line_numbers: bool = False, torn_tail_ok: bool = True) -> Iterator:
    """Yield the rows of a JSONL file in order. Blank lines and a torn last line are skipped.

    Args:
        path: the file.
        missing_ok: yield nothing when the file does not exist (e.g. a manifest before the
            first run) instead of raising ``FileNotFoundError``.
        line_numbers: yield ``(line_number, row)`` pairs (1-based) for messages about a row.
        torn_tail_ok: skip an unparsable last line without a newline (a crashed writer's); pass
            ``False`` for files people write by hand, where it is a typo to report.

    Raises:
        MalformedJsonlError: a line other than a torn last line is not valid JSON.
    """
    path = os.fspath(path)
    if missing_ok and not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        line_number = 0
        for raw in f:
            line_number += 1
            if not raw.strip():
                continue
            if torn_tail_ok and _is_torn_tail(raw):
                return  # only the last line can lack its newline
            row = _parse(raw, path, line_number)
            yield (line_number, row) if line_numbers else row


def cut_torn_tail(path: str) -> None:
    """Truncate ``path`` after its last newline: a line a killed process did not finish. Call
    it before appending to a file a run may have left behind, so new lines start on a line
    of their own."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        block = min(size, 1 << 16)
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                end = start + nl + 1
                if end != size:
                    f.truncate(end)
                return
            pos = start
        f.truncate(0)


class JsonlRecords:
    """Random access to the records (docs/records.md, one image per line) of one or more JSONL files.

    Only the byte offset and line number of each line are kept in memory (16 bytes per
    record), so an index over millions of records is cheap; a record is parsed when it is read.
    Each record's relative ``image`` path is resolved against the directory of its file. Blank
    lines and a torn last line are skipped; another malformed line raises
    :class:`MalformedJsonlError` when it is read. Records are returned as fresh dicts.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("no record files given")
        self._file_of = array("I")
        self._offsets = array("Q")
        self._lines = array("I")
        for file_index, path in enumerate(self.paths):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"record file {path!r} does not exist")
            offset, line_number = 0, 0
            with open(path, "rb") as f:
                for raw in f:
                    line_number += 1
                    if raw.strip() and not _is_torn_tail(raw):
                        self._file_of.append(file_index)
                        self._offsets.append(offset)
                        self._lines.append(line_number)
                    offset += len(raw)
        self._handles: dict[tuple[int, int], object] = {}

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

    def _normalize(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record index {index} out of range for {len(self)} records")
        return index % len(self)

    def raw(self, index: int) -> dict:
        """The record as stored (image path unresolved)."""
        index = self._normalize(index)
        handle = self._handle(self._file_of[index])
        handle.seek(self._offsets[index])
        return _parse(handle.readline(), self.paths[self._file_of[index]], self._lines[index])

    def __getitem__(self, index: int) -> dict:
        index = self._normalize(index)
        record = self.raw(index)
        image = record.get("image") if isinstance(record, dict) else None
        if isinstance(image, str) and not os.path.isabs(image):
            record["image"] = os.path.join(os.path.dirname(os.path.abspath(self.paths[self._file_of[index]])), image)
        return record

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
