"""A rule-based verifier (no model): does a region description fit the phrase it was grounded from?

Consistent when the phrase's head noun, singularised, occurs among the description's
singularised words, and every colour word of the phrase occurs in the description. "four boats"
fits "a medium-sized cyan boat with a brown mast"; "red car" does not fit "a blue car". Cheap
and strict; the ``hf`` verifier replaces it with a language model.
"""

from __future__ import annotations

import re
from typing import Sequence

COLOURS = frozenset("red orange yellow green blue purple pink brown black white gray grey cyan magenta".split())
_WORD = re.compile(r"[a-z][a-z-]*")


IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth", "mice": "mouse",
             "geese": "goose", "leaves": "leaf", "knives": "knife", "shelves": "shelf", "wolves": "wolf"}


def singular(word: str) -> str:
    """Naive English singular: enough for object nouns (boats, boxes, berries, houses, people)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"), ("zzes", "zz")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            return word[: -len(suffix)] + repl
    # A final s goes unless the word ends in ss, us or is (glass, bus, cactus, iris).
    if len(word) > 3 and word.endswith("s") and word[-2] not in "sui":
        return word[:-1]
    return word


class RuleVerifier:
    def provenance(self) -> dict:
        return {"backend": "rules", "model": "head-noun+colour"}

    def check(self, phrase: str, description: str) -> bool:
        p = [singular(w) for w in _WORD.findall(phrase.lower())]
        d = {singular(w) for w in _WORD.findall(description.lower())}
        if not p or not d:
            return False
        return p[-1] in d and all(w in d for w in p if w in COLOURS)

    def consistent(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.check(p, d) for p, d in pairs]
