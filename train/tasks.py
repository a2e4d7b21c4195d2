"""Turn one record plus its box list into one training conversation.

Task families (docs/architecture.md): detection/grounding (category, phrase, referring; including
negative queries with no match), region understanding (category, phrase, description,
referring for one ``<objN>``), grounded caption, caption, and grounded conversation.
Each builder returns a list of ``{"role", "content"}`` turns, or ``None`` when the record does
not support the task.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from chatrex.special_tokens import GROUND_END, GROUND_START, IMAGE_TOKEN, OBJECTS_END, OBJECTS_START, OBJFEAT_TOKEN

from chatrex import templates

TASKS = ("detection", "region", "grounded_caption", "caption", "conversation")

_OBJ = re.compile(r"<obj(\d+)>")


class BadSample(ValueError):
    """A record that cannot produce a valid sample (missing image, index out of range, ...)."""


def grounded_answer(phrase: str, indices: list[int]) -> str:
    """``<ground>phrase</ground><objects><obj3><obj7></objects>``; an empty list names no box."""
    objs = "".join(f"<obj{i}>" for i in sorted(indices))
    return f"{GROUND_START}{phrase}{GROUND_END}{OBJECTS_START}{objs}{OBJECTS_END}"


def remap_indices(text: str, region_to_index: list[int | None]) -> str:
    """Rewrite ``<objN>`` (N = record region index) to the sample's box-list index.

    Raises :class:`BadSample` if N is out of range or its box was capped away.
    """

    def sub(match: re.Match) -> str:
        n = int(match.group(1))
        if n >= len(region_to_index):
            raise BadSample(f"answer refers to <obj{n}> but the record has {len(region_to_index)} regions")
        target = region_to_index[n]
        if target is None:
            raise BadSample(f"region {n} is not in the capped box list")
        return f"<obj{target}>"

    return _OBJ.sub(sub, text)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _queries(record: dict) -> list[dict]:
    """Detection queries: the record's own ``queries`` if present, else derived from regions."""
    if record.get("queries"):
        return list(record["queries"])
    regions = record.get("regions") or []
    out: list[dict] = []
    by_category: dict[str, list[int]] = {}
    for i, r in enumerate(regions):
        if r.get("category"):
            by_category.setdefault(r["category"], []).append(i)
    out.extend({"type": "category", "text": c, "targets": idx} for c, idx in by_category.items())
    for i, r in enumerate(regions):
        if r.get("referring"):
            out.append({"type": "referring", "text": r["referring"], "targets": [i]})
    return out


def build_detection(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    queries = [q for q in _queries(record) if q.get("text")]
    if not queries:
        return None
    q = _pick(rng, queries)
    kind = q.get("type", "phrase") if q.get("type") in templates.DETECTION else "phrase"
    targets = []
    for t in q.get("targets", []):
        if not 0 <= int(t) < len(region_to_index):
            raise BadSample(f"query {q['text']!r} targets region {t} but the record has {len(region_to_index)} regions")
        if region_to_index[int(t)] is None:
            raise BadSample(f"query target region {t} is not in the capped box list")
        targets.append(region_to_index[int(t)])
    question = _pick(rng, templates.DETECTION[kind]).format(phrase=q["text"])
    return [{"role": "user", "content": question}, {"role": "assistant", "content": grounded_answer(q["text"], targets)}]


def build_region(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    regions = record.get("regions") or []
    candidates = [
        (i, field) for i, r in enumerate(regions) if region_to_index[i] is not None for field in templates.REGION if r.get(field)
    ]
    if not candidates:
        return None
    i, field = candidates[int(rng.integers(len(candidates)))]
    question = _pick(rng, templates.REGION[field]).format(obj=f"<obj{region_to_index[i]}>")
    return [{"role": "user", "content": question}, {"role": "assistant", "content": str(regions[i][field])}]


def build_grounded_caption(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    if not record.get("grounded_caption"):
        return None
    answer = remap_indices(record["grounded_caption"], region_to_index)
    return [{"role": "user", "content": _pick(rng, templates.GROUNDED_CAPTION)}, {"role": "assistant", "content": answer}]


def build_caption(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    if not record.get("caption"):
        return None
    return [{"role": "user", "content": _pick(rng, templates.CAPTION)}, {"role": "assistant", "content": record["caption"]}]


def build_conversation(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    turns = record.get("conversations") or []
    if not turns:
        return None
    out = []
    for turn in turns:
        role = turn.get("from", turn.get("role"))
        # LLaVA-style records write "<image>\n" into the first turn; the processor places it.
        value = str(turn.get("value", turn.get("content", ""))).replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "")
        if OBJFEAT_TOKEN in value:
            raise BadSample(f"conversation text contains {OBJFEAT_TOKEN}")
        out.append({"role": "assistant" if role in ("gpt", "assistant") else "user", "content": remap_indices(str(value), region_to_index)})
    if out[0]["role"] != "user" or not any(t["role"] == "assistant" for t in out):
        raise BadSample("conversation must start with a human turn and contain an answer")
    return out


BUILDERS: dict[str, Callable] = {
    "detection": build_detection,
    "region": build_region,
    "grounded_caption": build_grounded_caption,
    "caption": build_caption,
    "conversation": build_conversation,
}
