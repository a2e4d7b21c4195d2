"""Input image lists: a folder (searched recursively), a ``.txt`` list (one path per line) or a
``.jsonl`` list (``{"image": path, ...metadata}`` per line, e.g. ``"nsfw": true``). Relative
paths in a list resolve against the list's folder.

Ids are the first 16 hex digits of the SHA-1 of the file's bytes: stable across runs, machines
and renames, so a resumed run recognises finished images wherever they now live.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from chatrex.utils.jsonl import read_jsonl

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class InputImage:
    path: str
    meta: dict = field(default_factory=dict, hash=False)


def list_inputs(source: str) -> list[InputImage]:
    """Images to process, in a deterministic order (sorted paths for a folder, file order for a list)."""
    if os.path.isdir(source):
        found = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            found.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        return [InputImage(os.path.abspath(p)) for p in sorted(found)]
    if not os.path.isfile(source):
        raise ValueError(f"input {source!r} is neither a folder nor a list file")
    base = os.path.dirname(os.path.abspath(source))
    out = []
    if source.endswith(".jsonl"):
        for n, item in read_jsonl(source, line_numbers=True):
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                raise ValueError(f"{source}:{n}: expected an object with an \"image\" path")
            meta = {k: v for k, v in item.items() if k != "image"}
            out.append(InputImage(os.path.normpath(os.path.join(base, item["image"])), meta))
        return out
    with open(source) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(InputImage(os.path.normpath(os.path.join(base, line))))
    return out


def image_id(path: str) -> str:
    """SHA-1 of the file's bytes, 16 hex digits (raises ``OSError`` if unreadable)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def path_id(path: str) -> str:
    """8 hex digits of the SHA-1 of the path: tells apart entries that have no readable bytes
    (missing files) or the same bytes (repeated files)."""
    return hashlib.sha1(path.encode()).hexdigest()[:8]
