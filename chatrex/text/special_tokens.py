"""The special tokens ChatRex adds to a text tokenizer (spelled as in the released model).

Object ``i`` in a prompt is written ``<obj{i}><objfeat>``: the ``<obj{i}>`` token names the
index, and the ``<objfeat>`` placeholder is replaced by that box's feature inside the model.
The image is written ``<image>``, which the processor expands into one placeholder per visual
token. Answers refer to objects in the markup of :mod:`chatrex.text.markup`, whose tags are
registered here.
"""

from __future__ import annotations

from .markup import GROUND_END, GROUND_START, OBJECTS_END, OBJECTS_START, format_object

MAX_OBJECTS = 100

IMAGE_TOKEN = "<image>"
OBJFEAT_TOKEN = "<objfeat>"


def object_token(index: int) -> str:
    """The vocabulary token of box ``index``; the vocabulary holds ``MAX_OBJECTS`` of them."""
    if not 0 <= index < MAX_OBJECTS:
        raise ValueError(f"object index {index} is outside [0, {MAX_OBJECTS})")
    return format_object(index)


OBJECT_TOKENS = [format_object(i) for i in range(MAX_OBJECTS)]

# Order matters: ids are appended in this order, so <obj0>..<obj99> get consecutive ids.
SPECIAL_TOKENS: list[str] = OBJECT_TOKENS + [
    OBJFEAT_TOKEN,
    GROUND_START,
    GROUND_END,
    OBJECTS_START,
    OBJECTS_END,
    IMAGE_TOKEN,
]


def add_special_tokens(tokenizer) -> dict[str, int]:
    """Add the ChatRex tokens to ``tokenizer`` (in place) and return ``{token: id}``.

    Idempotent: tokens already present keep their ids. They are registered as *special*
    tokens so that the tokenizer never splits them and ``decode`` keeps them unless
    ``skip_special_tokens=True``.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = [t for t, i in ids.items() if i is None or (unk is not None and i == unk)]
    if bad:
        raise RuntimeError(f"tokenizer failed to register special tokens {bad[:5]}")
    return ids
