"""Parse model answers that refer to boxes by index.

The model writes the markup of :mod:`chatrex.text.markup`,
``<ground>two red cars</ground><objects><obj3><obj7></objects>``, anywhere in free text.
:func:`parse_answer` turns that into plain text plus typed spans. It never raises on
malformed model output: unknown tags are left as text, unclosed groups are dropped, and
indices that point past the box list are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .markup import MODEL_MARKUP, MODEL_OBJECT, MODEL_SPAN


@dataclass
class GroundedSpan:
    """One grounded phrase of an answer.

    Attributes:
        phrase: the phrase text as written between ``<ground>`` and ``</ground>``.
        start, end: character offsets of ``phrase`` in :attr:`Answer.text`.
        indices: valid box indices, in the order written, duplicates removed.
        boxes: the boxes at ``indices`` (whatever format the caller passed, usually pixel xyxy).
    """

    phrase: str
    start: int
    end: int
    indices: list[int]
    boxes: list[list[float]]


@dataclass
class Answer:
    """A parsed answer: plain text with the markup removed, its grounded spans, and the count
    of indices dropped because they were out of range or unparsable. ``raw`` is the text as
    the model wrote it. ``history_turns``: how many earlier turns of the ``history`` passed to
    :meth:`chatrex.predictor.ChatRexPredictor.ask` were in the prompt (the oldest go first when
    the context is full); 0 outside the predictor."""

    text: str
    raw: str = ""
    spans: list[GroundedSpan] = field(default_factory=list)
    num_invalid_indices: int = 0
    history_turns: int = 0

    @property
    def boxes(self) -> list[list[float]]:
        """All boxes named in the answer, de-duplicated by index, in order of appearance."""
        seen, out = set(), []
        for span in self.spans:
            for i, b in zip(span.indices, span.boxes):
                if i not in seen:
                    seen.add(i)
                    out.append(b)
        return out

    @property
    def indices(self) -> list[int]:
        seen: list[int] = []
        for span in self.spans:
            seen.extend(i for i in span.indices if i not in seen)
        return seen


def _as_list(boxes) -> list:
    if boxes is None:
        return []
    if hasattr(boxes, "tolist"):
        return boxes.tolist()
    return [list(b) for b in boxes]


ANSWER_RULES = ("chatrex", "official")


def parse_answer(text: str, boxes=None, rules: str = "chatrex") -> Answer:
    """Split ``text`` into plain text and grounded spans.

    Args:
        text: raw model output (special tokens kept).
        boxes: the box list the prompt was built from, shape (K, 4), any format; span boxes are
            taken from it by index. ``None`` means no boxes, so every index is invalid.
        rules: ``"chatrex"`` keeps every group. ``"official"`` reads answers as the released
            models' code does: a group whose phrase was already grounded, or whose indices were
            all used by earlier groups, gives no span (its phrase stays in the text).

    Returns:
        :class:`Answer`. Never raises for any ``text`` (an unknown ``rules`` is a
        caller's error and raises ``ValueError``).
    """
    if rules not in ANSWER_RULES:
        raise ValueError(f"rules must be one of {ANSWER_RULES}, got {rules!r}")
    text = "" if text is None else str(text)
    seen_phrases: set[str] = set()
    used: set[int] = set()
    box_list = _as_list(boxes)
    out_parts: list[str] = []
    spans: list[GroundedSpan] = []
    invalid = 0
    cursor = 0
    length = 0
    for match in MODEL_SPAN.finditer(text):
        before = MODEL_MARKUP.sub("", text[cursor : match.start()])
        out_parts.append(before)
        length += len(before)
        phrase = MODEL_MARKUP.sub("", match.group(1)).strip()
        indices: list[int] = []
        inner = match.group(2)
        tokens = MODEL_OBJECT.findall(inner)
        # Anything in the list that is not an <objN> token counts as one invalid entry.
        junk = MODEL_OBJECT.sub("", inner).strip()
        invalid += 1 if junk else 0
        for tok in tokens:
            idx = int(tok)
            if idx < len(box_list):
                if idx not in indices:
                    indices.append(idx)
            else:
                invalid += 1
        repeated = phrase in seen_phrases or (bool(indices) and used.issuperset(indices))
        if rules == "chatrex" or not repeated:
            spans.append(GroundedSpan(phrase, length, length + len(phrase), indices, [box_list[i] for i in indices]))
        seen_phrases.add(phrase)
        used.update(indices)
        out_parts.append(phrase)
        length += len(phrase)
        cursor = match.end()
    out_parts.append(MODEL_MARKUP.sub("", text[cursor:]))
    return Answer(text="".join(out_parts), raw=text, spans=spans, num_invalid_indices=invalid)
