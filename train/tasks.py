"""Turn one record plus its box list into one training conversation.

Task families (docs/architecture.md): detection/grounding (category, phrase, referring; including
negative queries with no match), region understanding (category, phrase, description,
referring for one ``<objN>``), grounded caption, caption, and grounded conversation.
Each builder returns a list of ``{"role", "content"}`` turns, or ``None`` when the record does
not support the task.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from chatrex.text import prompts
from chatrex.text.markup import format_object, format_objects, format_span, renumber_objects, rewrite_object_lists
from chatrex.text.special_tokens import IMAGE_TOKEN, OBJFEAT_TOKEN

TASKS = ("detection", "region", "grounded_caption", "caption", "conversation")

# Share of detection queries drawn from the negatives (phrases with no match) when a record
# has any. Synthetic records carry about 4% negatives; sampled at that rate the model learned to
# answer a box for 75% of no-target queries (MODEL_CARD.md), so negatives are drawn more often.
NEGATIVE_SHARE = 0.25
# Share of region questions about whole objects (coarse) when a record has both granularities.
# Parts outnumber wholes about 4 to 1, which left whole objects named worse than parts.
COARSE_REGION_SHARE = 0.5


class BadSample(ValueError):
    """A record that cannot produce a valid sample (missing image, index out of range, ...)."""


def grounded_answer(phrase: str, indices: list[int]) -> str:
    """``<ground>phrase</ground><objects><obj3><obj7></objects>``; an empty list names no box."""
    return format_span(phrase, sorted(indices))


def remap_indices(text: str, region_to_index: list[int | None]) -> str:
    """Rewrite ``<objN>`` (N = record region index) to the sample's box-list index.

    Raises :class:`BadSample` if N is out of range or its box was capped away.
    """

    def new_index(n: int) -> int:
        if n >= len(region_to_index):
            raise BadSample(f"answer refers to {format_object(n)} but the record has {len(region_to_index)} regions")
        target = region_to_index[n]
        if target is None:
            raise BadSample(f"region {n} is not in the capped box list")
        return target

    return renumber_objects(text, new_index)


def order_objects(text: str, boxes) -> str:
    """Rewrite every ``<objects>…</objects>`` group so its indices run left to right (by box
    centre x, then y; ``boxes`` is the sample's box list, pixel xyxy (K, 4)). A fixed scan order
    tells the model where to continue after each instance, so it lists all of them instead of
    stopping after one or two; index order is random because the box list is shuffled."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def key(i: int):
        if i >= len(boxes):
            return (float("inf"), float("inf"), i)
        b = boxes[i]
        return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, i)

    return rewrite_object_lists(text, lambda indices: format_objects(sorted(indices, key=key)))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _not_exhaustive(record: dict) -> set:
    """Category ids whose instances the record may not all list (LVIS): asking for "all" of
    them would teach the model that the unlabelled ones are not there."""
    source = record.get("source")
    ids = source.get("not_exhaustive_category_ids") if isinstance(source, dict) else None
    return set(ids) if isinstance(ids, list) else set()


def _queries(record: dict) -> list[dict]:
    """Detection queries: the record's own ``queries`` if present, else derived from regions."""
    if record.get("queries"):
        return list(record["queries"])
    regions = record.get("regions") or []
    out: list[dict] = []
    by_category: dict[str, list[int]] = {}
    incomplete = _not_exhaustive(record)
    for i, r in enumerate(regions):
        if r.get("category") and r.get("category_id") not in incomplete:
            by_category.setdefault(r["category"], []).append(i)
    out.extend({"type": "category", "text": c, "targets": idx} for c, idx in by_category.items())
    for i, r in enumerate(regions):
        if r.get("referring"):
            out.append({"type": "referring", "text": r["referring"], "targets": [i]})
    return out


def _in_box_list(query: dict, region_to_index: list[int | None]) -> bool:
    """Whether every target of ``query`` made it into the box list (a record with more regions
    than ``max_boxes`` loses some); an out-of-range target is a data error."""
    for t in query.get("targets") or []:
        if not 0 <= int(t) < len(region_to_index):
            raise BadSample(f"query {query.get('text')!r} targets region {t} but the record has {len(region_to_index)} regions")
        if region_to_index[int(t)] is None:
            return False
    return True


def build_detection(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    # A query with a target capped out of the box list would have an incomplete answer.
    queries = [q for q in _queries(record) if q.get("text") and _in_box_list(q, region_to_index)]
    if not queries:
        return None
    negatives = [q for q in queries if not q.get("targets")]
    positives = [q for q in queries if q.get("targets")]
    if negatives and positives:
        q = _pick(rng, negatives) if rng.random() < NEGATIVE_SHARE else _pick(rng, positives)
    else:
        q = _pick(rng, queries)
    kind = q.get("type", "phrase") if q.get("type") in prompts.DETECTION else "phrase"
    targets = [region_to_index[int(t)] for t in q.get("targets") or []]
    question = _pick(rng, prompts.DETECTION[kind]).format(phrase=q["text"])
    return [{"role": "user", "content": question}, {"role": "assistant", "content": grounded_answer(q["text"], targets)}]


def build_region(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    regions = record.get("regions") or []
    candidates = [
        (i, field) for i, r in enumerate(regions) if region_to_index[i] is not None for field in prompts.REGION if r.get(field)
    ]
    if not candidates:
        return None
    coarse = [c for c in candidates if regions[c[0]].get("granularity", "coarse") == "coarse"]
    fine = [c for c in candidates if regions[c[0]].get("granularity", "coarse") != "coarse"]
    if coarse and fine:
        candidates = coarse if rng.random() < COARSE_REGION_SHARE else fine
    i, field = candidates[int(rng.integers(len(candidates)))]
    question = _pick(rng, prompts.REGION[field]).format(obj=format_object(region_to_index[i]))
    return [{"role": "user", "content": question}, {"role": "assistant", "content": str(regions[i][field])}]


def build_grounded_caption(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    if not record.get("grounded_caption"):
        return None
    answer = remap_indices(record["grounded_caption"], region_to_index)
    return [{"role": "user", "content": _pick(rng, prompts.GROUNDED_CAPTION)}, {"role": "assistant", "content": answer}]


def build_caption(record: dict, region_to_index: list[int | None], rng: np.random.Generator) -> list[dict] | None:
    if not record.get("caption"):
        return None
    return [{"role": "user", "content": _pick(rng, prompts.CAPTION)}, {"role": "assistant", "content": record["caption"]}]


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
