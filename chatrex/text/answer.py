"""Parse model answers that refer to boxes by index.

The model writes ``<ground>two red cars</ground><objects><obj3><obj7></objects>`` anywhere in
free text. :func:`parse_answer` turns that into plain text plus typed spans. It never raises
on malformed model output: unknown tags are left as text, unclosed groups are dropped, and
indices that point past the box list are dropped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .special_tokens import GROUND_END, GROUND_START, OBJECTS_END, OBJECTS_START

# One grounded group: a phrase, then (optionally separated by whitespace) an <objects> list.
# The phrase may not contain another <ground>, so a dangling opener does not swallow the next group.
_GROUP = re.compile(
    re.escape(GROUND_START)
    + r"((?:(?!" + re.escape(GROUND_START) + r").)*?)"
    + re.escape(GROUND_END)
    + r"\s*"
    + re.escape(OBJECTS_START)
    + r"(.*?)"
    + re.escape(OBJECTS_END),
    re.DOTALL,
)
_OBJ = re.compile(r"<obj([0-9]{1,3})>")
# Markup left outside a well-formed group (unclosed tags, stray <objN>) carries no grounding.
_LEFTOVER = re.compile(
    "|".join(re.escape(t) for t in (GROUND_START, GROUND_END, OBJECTS_START, OBJECTS_END)) + r"|<obj[0-9]{1,3}>"
)


@dataclass
class GroundedSpan:
    """One grounded phrase of an answer.

    Attributes:
        phrase: the phrase text as written between ``<ground>`` and ``</ground>``.
        start, end: character offsets of ``phrase`` in :attr:`ParsedAnswer.text`.
        indices: valid box indices, in the order written, duplicates removed.
        boxes: the boxes at ``indices`` (whatever format the caller passed, usually pixel xyxy).
    """

    phrase: str
    start: int
    end: int
    indices: list[int]
    boxes: list[list[float]]


@dataclass
class ParsedAnswer:
    """A parsed answer: plain text with the markup removed, its grounded spans, and the count
    of indices dropped because they were out of range or unparsable."""

    text: str
    spans: list[GroundedSpan] = field(default_factory=list)
    num_invalid_indices: int = 0
    raw: str = ""

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


def parse_answer(text: str, boxes=None, rules: str = "chatrex") -> ParsedAnswer:
    """Split ``text`` into plain text and grounded spans.

    Args:
        text: raw model output (special tokens kept).
        boxes: the box list the prompt was built from, shape (K, 4), any format; span boxes are
            taken from it by index. ``None`` means no boxes, so every index is invalid.
        rules: ``"chatrex"`` keeps every group. ``"official"`` reads answers as the released
            models' code does: a group whose phrase was already grounded, or whose indices were
            all used by earlier groups, gives no span (its phrase stays in the text).

    Returns:
        :class:`ParsedAnswer`. Never raises for any ``text`` (an unknown ``rules`` is a
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
    for match in _GROUP.finditer(text):
        before = _LEFTOVER.sub("", text[cursor : match.start()])
        out_parts.append(before)
        length += len(before)
        phrase = _LEFTOVER.sub("", match.group(1)).strip()
        indices: list[int] = []
        inner = match.group(2)
        tokens = _OBJ.findall(inner)
        # Anything in the list that is not an <objN> token counts as one invalid entry.
        junk = _OBJ.sub("", inner).strip()
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
    out_parts.append(_LEFTOVER.sub("", text[cursor:]))
    return ParsedAnswer(text="".join(out_parts), spans=spans, num_invalid_indices=invalid, raw=text)
