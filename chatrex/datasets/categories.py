"""Category names as prompts, and the ``OUT.categories.json`` sidecar keeping the raw ones.

Prompt names (what regions carry as ``category``, and what a model is asked for):

* COCO: the name as is ("dog", "traffic light").
* LVIS: ``_`` -> space, sense suffixes kept in parentheses: ``bow_(weapon)`` -> ``bow (weapon)``,
  ``bow_(decorative_ribbons)`` -> ``bow (decorative ribbons)``. Keeping the sense means two
  LVIS categories never share a prompt name.
* Objects365: surrounding and repeated blanks removed, a slash between alternatives becomes
  " or " (``"Cigar/Cigarette "`` -> ``"cigar or cigarette"``), and a capitalised word is
  lower-cased (``"Person"`` -> ``"person"``) while acronyms and mixed case stay (``"SUV"``,
  ``"iPhone"``). Typos (``"Mushroon"``) are kept: the raw name maps to its id either way.

Since answers are mapped back by the query (the category id), not by re-parsing the name, a
cleaned name never changes which category a box belongs to.
"""

from __future__ import annotations

import copy


def coco_prompt_name(name: str) -> str:
    return name


def lvis_prompt_name(name: str) -> str:
    return " ".join(name.replace("_", " ").split())


def _lower_capitalised(word: str) -> str:
    return word.lower() if word[:1].isupper() and word[1:] == word[1:].lower() else word


def objects365_prompt_name(name: str) -> str:
    parts = [" ".join(p.split()) for p in name.split("/")]
    text = " or ".join(p for p in parts if p)
    return " ".join(_lower_capitalised(w) for w in text.split())


def categories_sidecar(categories: list, prompt_name) -> list[dict]:
    """The source's ``categories`` list as it is (original ids, raw ``name``, and every other
    field, e.g. LVIS ``frequency``/``synonyms``), plus ``prompt_name`` where it differs."""
    out = []
    for cat in categories:
        cat = copy.deepcopy(cat)
        if isinstance(cat, dict) and isinstance(cat.get("name"), str):
            clean = prompt_name(cat["name"])
            if clean != cat["name"]:
                cat["prompt_name"] = clean
        out.append(cat)
    return out
