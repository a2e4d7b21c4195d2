"""The answer markup grammar: ``<ground>two red cars</ground><objects><obj3><obj7></objects>``.

A grounded span is a phrase between ``<ground>`` and ``</ground>``, followed (whitespace
allowed in between) by an object list between ``<objects>`` and ``</objects>``; the list holds
one ``<objN>`` token per box, N being an index into the box list of the prompt (or, in a
record, into its ``regions``). An empty list names no box. Every module that writes or reads
this markup does it through the names below, so the grammar has one definition.

Two readings exist on purpose. Text we write ourselves (records, training samples) is
well formed, so :data:`SPAN` and :data:`OBJECT` accept any index. Model output is not to be
trusted: :data:`MODEL_SPAN` takes any list body and refuses a phrase holding another
``<ground>``, and :data:`MODEL_OBJECT` reads at most 3 digits, so that ``int`` never meets a
runaway number (the vocabulary stops at ``<obj99>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

GROUND_START = "<ground>"
GROUND_END = "</ground>"
OBJECTS_START = "<objects>"
OBJECTS_END = "</objects>"
TAGS = (GROUND_START, GROUND_END, OBJECTS_START, OBJECTS_END)

# Group 1 of each pattern below is the index (OBJECT), the list body (OBJECTS) or the phrase
# and then the list body (SPAN, MODEL_SPAN).
OBJECT = re.compile(r"<obj(\d+)>")
MODEL_OBJECT = re.compile(r"<obj([0-9]{1,3})>")
_OBJECT_LIST = r"((?:<obj\d+>)*)"
OBJECTS = re.compile(re.escape(OBJECTS_START) + _OBJECT_LIST + re.escape(OBJECTS_END))


def span_regex(body: str = _OBJECT_LIST, phrase: str = r"(.*?)") -> re.Pattern:
    """A grounded span whose phrase matches ``phrase`` and whose list matches ``body`` (each a
    one-group pattern); the coordinates baseline swaps the ``<objN>`` list for its boxes."""
    return re.compile(
        re.escape(GROUND_START) + phrase + re.escape(GROUND_END) + r"\s*" + re.escape(OBJECTS_START) + body + re.escape(OBJECTS_END),
        re.DOTALL,
    )


SPAN = span_regex()
# A dangling <ground> in model output must not swallow the next group, so the phrase may not
# contain another opener; the body is anything, and parse_answer sorts tokens from junk.
MODEL_SPAN = span_regex(r"(.*?)", phrase=r"((?:(?!" + re.escape(GROUND_START) + r").)*?)")


def _alternation(object_pattern: re.Pattern) -> re.Pattern:
    return re.compile("|".join(re.escape(t) for t in TAGS) + "|" + object_pattern.pattern)


MARKUP = _alternation(OBJECT)
MODEL_MARKUP = _alternation(MODEL_OBJECT)


def format_object(index: int) -> str:
    """``<objN>`` for box ``index`` (any non-negative index: a record may have more regions
    than the vocabulary has object tokens)."""
    if index < 0:
        raise ValueError(f"object index must be >= 0, got {index!r}")
    return f"<obj{index}>"


def format_objects(indices: Iterable[int]) -> str:
    """``<objects><obj3><obj7></objects>``, indices in the order given."""
    return OBJECTS_START + "".join(format_object(i) for i in indices) + OBJECTS_END


def format_span(phrase: str, indices: Iterable[int]) -> str:
    """``<ground>phrase</ground><objects>…</objects>``, indices in the order given."""
    return GROUND_START + phrase + GROUND_END + format_objects(indices)


def object_indices(text: str) -> list[int]:
    """Every index an ``<objN>`` token of ``text`` names, in order, repeats kept."""
    return [int(n) for n in OBJECT.findall(text)]


def renumber_objects(text: str, new_index: Callable[[int], int | None]) -> str:
    """``text`` with each ``<objN>`` rewritten to ``<obj{new_index(N)}>``; where ``new_index``
    answers None the token stays exactly as written."""

    def sub(match: re.Match) -> str:
        target = new_index(int(match.group(1)))
        return match.group(0) if target is None else format_object(target)

    return OBJECT.sub(sub, text)


def rewrite_object_lists(text: str, rewrite: Callable[[list[int]], str]) -> str:
    """``text`` with each ``<objects>…</objects>`` list replaced by ``rewrite(its indices)``."""
    return OBJECTS.sub(lambda m: rewrite(object_indices(m.group(1))), text)
