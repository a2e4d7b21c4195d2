"""LLaVA-style conversation JSON (LLaVA-Pretrain 558k, LLaVA-1.5 mix665k, ShareGPT4V, ALLaVA)
-> records.

Each element ``{"id", "image", "conversations": [{"from", "value"}, ...]}`` becomes one
record with the conversation as it is, except that ``<image>`` is moved to the front of the
first human turn as ``<image>\\n`` + the rest of the turn (what LLaVA's preprocessing does:
the token may sit at either end of the turn in the files). Rows without ``image`` are
text-only (ShareGPT) samples: their records have no ``image`` (docs/records.md allows that
for a record with ``conversations`` and no ``regions``). There are no boxes.

The list is streamed (``jsonstream``), so the 1 GB mix665k file needs memory for one element
at a time. ``images`` may name several roots (ShareGPT4V spreads images over several): a
relative ``image`` resolves against the first root that holds it (the first root when none
does; counted in the summary as not found).
"""

from __future__ import annotations

import os

from .jsonstream import iter_json_array
from .sink import BadRow, ImportSummary, RecordSink

IMAGE_TOKEN = "<image>"
_ROW_KEYS = ("id", "image", "conversations")


def normalise_conversations(conversations, has_image: bool) -> list[dict]:
    """A copy of the turns with ``<image>`` at the front of the first human turn (image rows),
    or unchanged (text-only rows, which must not mention ``<image>``)."""
    if not isinstance(conversations, list) or not conversations:
        raise BadRow("malformed conversations", f"conversations must be a non-empty list, got {str(conversations)[:100]!r}")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadRow("malformed conversations", f"conversations[{i}] must be a dict with a string 'value', got {str(turn)[:100]!r}")
        turns.append(dict(turn))
    if not has_image:
        if any(IMAGE_TOKEN in t["value"] for t in turns):
            raise BadRow("<image> in text-only row", f"{IMAGE_TOKEN} in a row without 'image'")
        return turns
    first_human = next((i for i, t in enumerate(turns) if t.get("from") == "human"), None)
    if first_human is None:
        raise BadRow("malformed conversations", "no human turn to hold <image>")
    for t in turns:
        if IMAGE_TOKEN in t["value"]:
            t["value"] = t["value"].replace(IMAGE_TOKEN, "").strip()
    turns[first_human]["value"] = f"{IMAGE_TOKEN}\n{turns[first_human]['value']}"
    return turns


def _image_path(image: str, roots: list[str]) -> tuple[str, bool]:
    if os.path.isabs(image):
        return image, os.path.isfile(image)
    for root in roots:
        path = os.path.join(root, image)
        if os.path.isfile(path):
            return path, True
    return os.path.join(roots[0], image), False


def import_llava(json_path: str, images: str | list[str], out: str, *, strict: bool = False,
                 progress: bool = True) -> ImportSummary:
    """LLaVA-style JSON list ``json_path`` with images under ``images`` (one root or several)
    -> records in ``out``. Record ids are ``llava/<id>`` (``llava/<index>`` without ``id``)."""
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"{json_path}: no such file")
    roots = [images] if isinstance(images, str) else list(images)
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such image folder")
    roots = [os.path.abspath(r) for r in roots]
    file_name = os.path.basename(json_path)
    with RecordSink(out, "llava", strict=strict, progress=progress, unit="rows") as sink:
        for index, row in iter_json_array(json_path):
            sink.tick()
            where = f"{json_path}: element {index}"
            try:
                if not isinstance(row, dict):
                    raise BadRow("malformed row", f"must be a JSON object, got {type(row).__name__}")
                where += f" (id {row.get('id')!r})"
                image = row.get("image")
                if image is not None and (not isinstance(image, str) or not image):
                    raise BadRow("malformed row", f"'image' must be one path (records hold one image), got {str(image)[:100]!r}")
                conversations = normalise_conversations(row.get("conversations"), image is not None)
            except BadRow as err:
                sink.bad(where, str(err), err.kind)
                continue
            row_id = row.get("id", index)
            record = {"id": f"llava/{row_id}"}
            if image is not None:
                path, exists = _image_path(image, roots)
                if not exists:
                    sink.note("image files not found")
                record["image"] = path
            record["conversations"] = conversations
            source = {"dataset": "llava", "id": row.get("id"), "index": index, "file": file_name}
            if image is not None:
                source["file_name"] = image
            extra = {k: v for k, v in row.items() if k not in _ROW_KEYS}
            if extra:
                source["fields"] = extra  # e.g. ShareGPT4V/ALLaVA extras: kept, not interpreted
            record["source"] = source
            sink.write(record, where)
        return sink.finish()
