"""Stream the elements of a top-level JSON list (LLaVA's 1 GB mix665k, VG's region file)
without holding the parsed list: memory stays at one chunk plus one element.

The standard library's ``raw_decode`` parses one element at a time from a text buffer that is
refilled from the file; ijson would do the same but is not a dependency.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

CHUNK = 1 << 20


def iter_json_array(path: str | os.PathLike, chunk_size: int = CHUNK) -> Iterator[tuple[int, object]]:
    """Yield ``(index, element)`` for each element of the JSON list in ``path``.

    Raises ``ValueError`` naming the file and the element index when the file is not a JSON
    list or an element is not valid JSON.
    """
    path = os.fspath(path)
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            more = f.read(chunk_size)
            if not more:
                eof = True
                return False
            buf, pos = buf[pos:] + more, 0
            return True

        def skip_ws() -> str:
            """The next non-blank character ('' at the end of the file)."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        if skip_ws() != "[":
            raise ValueError(f"{path}: expected a JSON list (starting with '['), got {buf[pos:pos + 20]!r}")
        pos += 1
        index = 0
        if skip_ws() == "]":
            return
        while True:
            while True:
                try:
                    element, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if not eof and fill():
                        continue  # the element runs past the buffer
                    raise ValueError(f"{path}: element {index}: not valid JSON ({err.msg})") from None
                # A number or literal may be cut at the buffer's end and still parse: read on.
                if end == len(buf) and not eof and fill():
                    continue
                break
            pos = end
            yield index, element
            index += 1
            c = skip_ws()
            if c == ",":
                pos += 1
                skip_ws()
            elif c == "]":
                return
            else:
                raise ValueError(f"{path}: after element {index - 1}: expected ',' or ']', got {c!r}")
