"""IDEA's TSV + ``.lineidx`` files (Rexverse-2M, Rex-Omni), read by byte offset.

A ``.lineidx`` file holds one decimal byte offset per line: the start of a line of its TSV.
Image TSV lines are ``<key>\\t<base64 JPEG>`` (the value sometimes written as ``b'...'``);
annotation TSV lines are ``<byte offset of the image line>\\t<JSON>``. Lines are read by
seeking, so a 110 GB image TSV is never read sequentially nor held in memory.
"""

from __future__ import annotations

import base64
import binascii
import os
from array import array
from bisect import bisect_left

from .sink import BadRow


def read_lineidx(path: str) -> array:
    """The offsets of a ``.lineidx`` file (8 bytes each in memory)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (the TSV's .lineidx, one byte offset per line)")
    out = array("Q")
    with open(path, encoding="ascii") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(int(line))
            except ValueError:
                raise ValueError(f"{path}:{n}: not a byte offset: {line[:40]!r}") from None
    return out


class ImageTsv:
    """Random access to the images of an image TSV by the byte offset of their line."""

    def __init__(self, path: str, lineidx: array):
        self.path = path
        self._f = open(path, "rb")
        self._offsets = lineidx
        self._sorted = all(lineidx[i] < lineidx[i + 1] for i in range(len(lineidx) - 1))
        self._line_of = None if self._sorted else {o: i for i, o in enumerate(lineidx)}

    def close(self) -> None:
        self._f.close()

    def line_number(self, offset: int) -> int:
        """The 0-based line (position in the ``.lineidx``) of the line starting at ``offset``."""
        if self._sorted:
            i = bisect_left(self._offsets, offset)
            if i < len(self._offsets) and self._offsets[i] == offset:
                return i
        elif offset in self._line_of:
            return self._line_of[offset]
        raise BadRow("bad image offset", f"byte offset {offset} is not the start of a line in {self.path}.lineidx")

    def key(self, offset: int) -> str:
        """The key column of the line at ``offset`` (reads only its first bytes)."""
        self._f.seek(offset)
        head = self._f.read(512)
        tab = head.find(b"\t")
        if tab < 0:
            raise BadRow("bad image line", f"{self.path}: no tab in the line at byte {offset}")
        return head[:tab].decode("utf-8", "replace")

    def image_bytes(self, offset: int) -> bytes:
        """The decoded image (raw bytes as stored: JPEG for Rexverse) of the line at ``offset``."""
        self._f.seek(offset)
        line = self._f.readline().rstrip(b"\r\n")
        value = line.rsplit(b"\t", 1)[-1].strip()
        if value.startswith((b"b'", b'b"')) and value.endswith(value[1:2]):
            value = value[2:-1]
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadRow("bad image data", f"{self.path}: line at byte {offset}: not base64 ({err})") from None


def annotation_lines(path: str, lineidx: array):
    """Yield ``(index, image offset, JSON text)`` for each ``.lineidx`` entry of an annotation TSV;
    a line that is not ``<offset>\\t<JSON>`` yields ``(index, None, error message)``."""
    with open(path, "rb") as f:
        for index, offset in enumerate(lineidx):
            f.seek(offset)
            raw = f.readline().rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield index, None, f"not UTF-8 ({err})"
                continue
            parts = text.split("\t")
            try:
                image_offset = int(parts[0])
            except ValueError:
                yield index, None, f"first column {parts[0][:40]!r} is not a byte offset"
                continue
            if len(parts) < 2:
                yield index, None, "no JSON column"
                continue
            yield index, image_offset, parts[-1]
