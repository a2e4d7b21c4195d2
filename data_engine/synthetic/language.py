"""Language for a scene: phrases, descriptions, captions, QA turns and detection queries.

Grounded text uses the ChatRex answer format
``<ground>phrase</ground><objects><obj0><obj3></objects>``, where the indices are positions
in the record's ``regions`` list (``RegionIndex`` maps objects and parts to them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatrex.text.markup import format_span

from .referring import Ref, landmark_ref, resolve
from .relations import RELATIONS, relation_score
from .scene import Scene, SceneObject
from .vocabulary import (
    CATEGORIES,
    COLORS,
    HELDOUT_PAIRS,
    PART_CATEGORIES,
    PARTS,
    number_word,
    plural,
)


@dataclass
class RegionIndex:
    """Where each object and each of its region parts sits in the record's ``regions``."""

    objects: list[int]  # object i -> region index
    parts: list[list[int]]  # object i -> region index of each of its region parts


def _with_article(np_text: str) -> str:
    return ("an " if np_text[0] in "aeiou" else "a ") + np_text


def _counted(n: int, noun: str) -> str:
    if n == 1:
        return _with_article(noun)
    return f"{number_word(n)} {plural(noun)}"


def object_phrase(obj: SceneObject) -> str:
    """Short phrase: "red car"."""
    return f"{obj.color} {obj.category}"


def object_np(obj: SceneObject) -> str:
    """Attribute noun phrase: "large striped red car" (plain patterns are not spelled out)."""
    pattern = "" if obj.pattern == "plain" else obj.pattern + " "
    return f"{obj.size} {pattern}{obj.color} {obj.category}"


def object_description(obj: SceneObject) -> str:
    """Detailed description: "a large red car with a striped body, two black wheels and ..."."""
    if obj.is_shape:
        return _with_article(object_np(obj))
    main = PARTS[obj.category][0]
    bits = []
    if obj.pattern != "plain":
        bits.append(f"a {obj.pattern} {main}")
    groups: dict[tuple[str, str], int] = {}
    for p in obj.region_parts:
        if p.name != main:
            groups[(p.name, p.color)] = groups.get((p.name, p.color), 0) + 1
    bits += [_counted(n, f"{color} {name}") for (name, color), n in groups.items()]
    head = _with_article(f"{obj.size} {obj.color} {obj.category}")
    return f"{head} with {_join(bits)}" if bits else head


def part_phrase(obj: SceneObject, k: int) -> str:
    part = obj.region_parts[k]
    return f"{part.color} {part.name}"


def part_description(obj: SceneObject, k: int, position: str | None) -> str:
    part = obj.region_parts[k]
    pattern = f"{part.shape.pattern} " if part.shape.pattern != "plain" else ""
    pos = f"{position} " if position else ""
    return f"the {pos}{pattern}{part.color} {part.name} of {_with_article(f'{obj.size} {obj.color} {obj.category}')}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _image_area(obj: SceneObject, scene: Scene) -> str:
    """Where the object's box centre falls on a 3 x 3 grid: "in the top left of the image"."""
    cx = (obj.box[0] + obj.box[2]) / 2 / scene.width
    cy = (obj.box[1] + obj.box[3]) / 2 / scene.height
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col} of the image"
    if row:
        return f"at the {row} of the image"
    if col:
        return f"on the {col} of the image"
    return "in the center of the image"


def _clear_pairs(scene: Scene) -> list[tuple[int, str, int]]:
    """(i, relation, j) triples that clearly hold between two objects (used in captions)."""
    side = min(scene.width, scene.height)
    out = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i != j:
                for rel in RELATIONS:
                    if relation_score(rel, a.box, b.box, side) >= 0.02 * side:
                        out.append((i, rel, j))
    return out


def caption(scene: Scene, idx: RegionIndex, rng: np.random.Generator) -> tuple[str, str]:
    """(plain caption, grounded caption)."""
    by_cat: dict[str, list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_cat.setdefault(o.category, []).append(i)
    plain_bits, grounded_bits = [], []
    for cat, members in by_cat.items():
        if len(members) == 1:
            text = _with_article(object_np(scene.objects[members[0]]))
        else:
            colors = {scene.objects[i].color for i in members}
            noun = f"{colors.pop()} {cat}" if len(colors) == 1 else cat
            text = _counted(len(members), noun)
        plain_bits.append(text)
        grounded_bits.append(format_span(text, [idx.objects[i] for i in members]))
    where = "a photographic" if scene.background.kind == "photo" else "a plain"
    plain = f"A scene with {_join(plain_bits)} on {where} background."
    grounded = f"A scene with {_join(grounded_bits)} on {where} background."
    pairs = _clear_pairs(scene)
    if pairs:
        i, rel, j = pairs[int(rng.integers(len(pairs)))]
        a, b = landmark_ref(i, scene.objects), landmark_ref(j, scene.objects)
        plain += f" {_cap(a.text())} is {rel} {b.text()}."
        grounded += f" {format_span(_cap(a.text()), [idx.objects[i]])} is {rel} {format_span(b.text(), [idx.objects[j]])}."
    return plain, grounded


def _allowed_pair(color: str, category: str, split: str) -> bool:
    """Held-out (colour, category) pairs may not even be *named* outside the heldout split."""
    return split == "heldout" or (color, category) not in HELDOUT_PAIRS


def conversations(scene: Scene, idx: RegionIndex, refs: list[Ref], color_refs: list[Ref | None],
                  rng: np.random.Generator) -> list[dict]:
    """Four or five QA pairs (counting, colour, position with a follow-up about "it", existence),
    grounded answers."""
    objs = scene.objects
    turns: list[tuple[str, str]] = []

    # Counting: a whole-object category or a part name, sometimes one that is absent.
    present_parts = sorted({p.name for o in objs for p in o.region_parts})
    present = sorted({o.category for o in objs}) + present_parts
    absent = [c for c in CATEGORIES + PART_CATEGORIES if c not in present]
    # Draw first, then check: a scene that shows every noun must not change the random stream.
    if rng.random() < 0.25 and absent:
        noun = absent[int(rng.integers(len(absent)))]
    else:
        noun = present[int(rng.integers(len(present)))]
    if noun in PART_CATEGORIES:
        hits = [idx.parts[i][k] for i, o in enumerate(objs) for k, p in enumerate(o.region_parts) if p.name == noun]
    else:
        hits = [idx.objects[i] for i, o in enumerate(objs) if o.category == noun]
    q = f"How many {plural(noun)} are there?"
    if not hits:
        a = f"There are no {plural(noun)}."
    else:
        verb = "is" if len(hits) == 1 else "are"
        a = f"There {verb} {format_span(_counted(len(hits), noun), hits)}."
    turns.append((q, a))

    # Colour of one object, asked with an expression that does not give the colour away.
    choices = [i for i, r in enumerate(color_refs) if r is not None]
    if choices:
        i = choices[int(rng.integers(len(choices)))]
        ref = color_refs[i]
        turns.append((f"What colour is {ref.text()}?",
                      f"{format_span(_cap(ref.text()), [idx.objects[i]])} is {objs[i].color}."))

    # Position: image area, plus a relation to another object when one clearly holds.
    i = int(rng.integers(len(objs)))
    ref = refs[i]
    a = f"{format_span(_cap(ref.text()), [idx.objects[i]])} is {_image_area(objs[i], scene)}."
    rels = [(rel, j) for (k, rel, j) in _clear_pairs(scene) if k == i]
    if rels:
        rel, j = rels[int(rng.integers(len(rels)))]
        lref = landmark_ref(j, objs)
        a += f" It is {rel} {format_span(lref.text(), [idx.objects[j]])}."
    # A follow-up whose "it" means the object of the answer just given, so that a model learns to
    # read earlier turns (multi-turn chat keeps box indices valid for one image). It is drawn
    # without the random stream, so every other field of every scene stays as it was.
    follow_up = ("What colour is it?", f"{format_span('It', [idx.objects[i]])} is {objs[i].color}.")
    turns.append([(f"Where is {ref.text()}?", a), follow_up])

    # Existence of a (colour, category) pair: present or absent.
    if rng.random() < 0.5:
        i = int(rng.integers(len(objs)))
        color, cat = objs[i].color, objs[i].category
    else:
        color, cat = _absent_pair(scene, rng)
    hits = [idx.objects[i] for i, o in enumerate(objs) if (o.color, o.category) == (color, cat)]
    q = f"Is there {_with_article(f'{color} {cat}')} in the image?"
    if hits:
        noun = f"{color} {cat}"
        a = f"Yes, there {'is' if len(hits) == 1 else 'are'} {format_span(_counted(len(hits), noun), hits)}."
    else:
        a = f"No, there is no {color} {cat}."
    turns.append((q, a))

    # Shuffled as groups: a follow-up stays right after the turn it refers to.
    order = rng.permutation(len(turns))
    out = []
    for t in order:
        group = turns[int(t)]
        for q, a in group if isinstance(group, list) else [group]:
            out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def _absent_pair(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    present = {(o.color, o.category) for o in scene.objects}
    pool = [(c, k) for k in CATEGORIES for c in COLORS
            if (c, k) not in present and _allowed_pair(c, k, scene.split)]
    return pool[int(rng.integers(len(pool)))]


def queries(scene: Scene, idx: RegionIndex, regions: list[dict], rng: np.random.Generator) -> list[dict]:
    """Detection queries: every category and phrase present, every region's referring
    expression, plus negatives (texts that match nothing, ``targets: []``)."""
    out: list[dict] = []
    for kind, key in (("category", "category"), ("phrase", "phrase")):
        targets: dict[str, list[int]] = {}
        for r, reg in enumerate(regions):
            targets.setdefault(reg[key], []).append(r)
        out += [{"type": kind, "text": t, "targets": v} for t, v in targets.items()]
    out += [{"type": "referring", "text": reg["referring"], "targets": [r]} for r, reg in enumerate(regions)]

    present_cats = {reg["category"] for reg in regions}
    absent = [c for c in CATEGORIES + PART_CATEGORIES if c not in present_cats]
    for k in rng.permutation(len(absent))[:2]:
        out.append({"type": "category", "text": absent[int(k)], "targets": []})
    seen_phrases = {reg["phrase"] for reg in regions}
    for _ in range(2):
        color, cat = _absent_pair(scene, rng)
        if f"{color} {cat}" not in seen_phrases:
            out.append({"type": "phrase", "text": f"{color} {cat}", "targets": []})
            seen_phrases.add(f"{color} {cat}")
    neg = negative_referring(scene, rng)
    if neg is not None:
        out.append({"type": "referring", "text": neg, "targets": []})
    return out


def negative_referring(scene: Scene, rng: np.random.Generator) -> str | None:
    """A referring expression that denotes nothing: a real object with a wrong colour, or a
    relation that clearly fails."""
    objs = scene.objects
    side = min(scene.width, scene.height)
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    if len(objs) >= 2 and rng.random() < 0.5:
        lm = [k for k in range(len(objs)) if k != i]
        k = lm[int(rng.integers(len(lm)))]
        base = landmark_ref(i, objs)
        for r in rng.permutation(len(RELATIONS)):
            rel = RELATIONS[int(r)]
            if relation_score(rel, obj.box, objs[k].box, side) <= -0.02 * side:
                ref = Ref(base.category, base.color, base.size, base.pattern,
                          relation=rel, landmark=landmark_ref(k, objs))
                if not resolve(ref, objs, side):
                    return ref.text()
    colors = [c for c in COLORS if c != obj.color and _allowed_pair(c, obj.category, scene.split)
              and not any((o.color, o.category) == (c, obj.category) for o in objs)]
    if not colors:
        return None
    ref = Ref(obj.category, colors[int(rng.integers(len(colors)))])
    assert not resolve(ref, objs, side)
    return ref.text()

