"""The synthetic world's vocabulary: categories, parts, colours, sizes, patterns, splits.

Everything here is a constant table; the rest of the package only reads it. Changing a table
changes the generated data, so bump ``GENERATOR_VERSION`` when you do.
"""

from __future__ import annotations

GENERATOR_VERSION = "1.0.0"

SPLITS = ("train", "val", "test", "heldout")
# Fixed codes, not hash(): the per-image RNG stream must not depend on PYTHONHASHSEED.
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "heldout": 3}

# Object colours: the attribute "color" of a whole object (the colour of its main part).
# Chosen far apart in hue/lightness so that a small model can tell them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 20),
    "yellow": (250, 220, 40),
    "green": (40, 165, 60),
    "cyan": (40, 210, 220),
    "blue": (35, 75, 215),
    "purple": (135, 50, 190),
    "pink": (250, 130, 200),
}

# Secondary colours, used only for fixed-colour parts (wheels, trunks, roofs ...).
PART_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 30),
    "gray": (128, 128, 135),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "beige": (235, 200, 160),
    "sky blue": (165, 215, 250),
    "maroon": (110, 20, 35),
}

SIZES = ("small", "medium-sized", "large")
# Longer side of the object's full box as a fraction of the image side. The bins leave gaps
# between them so that "small" vs "large" is visible, not a coin flip at the boundary.
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.11, 0.15),
    "medium-sized": (0.19, 0.24),
    "large": (0.29, 0.36),
}

PATTERNS = ("plain", "striped", "dotted", "checkered")

# Whole objects: category -> aspect ratio (width / height of the full box).
OBJECT_ASPECT: dict[str, float] = {
    "house": 1.0,
    "car": 2.0,
    "tree": 0.7,
    "person": 0.55,
    "boat": 1.2,
    "lamp": 0.5,
}
# Simple shapes: coarse only, no parts; all fit a square box.
SHAPES = ("circle", "square", "triangle", "star", "hexagon")

CATEGORIES = tuple(OBJECT_ASPECT) + SHAPES

# Parts per whole-object category; the first one is the main part, which carries the
# object's colour and pattern (so "red car" means the car's body is red).
PARTS: dict[str, tuple[str, ...]] = {
    "house": ("wall", "roof", "door", "window"),
    "car": ("body", "wheel", "window"),
    "tree": ("crown", "trunk"),
    "person": ("torso", "head", "arm", "leg"),
    "boat": ("hull", "sail", "mast"),
    "lamp": ("light", "pole"),
}
PART_CATEGORIES = tuple(sorted({p for parts in PARTS.values() for p in parts}))

PLURALS: dict[str, str] = {
    "person": "people",
    "body": "bodies",
    "glass": "glasses",
}

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen")

# Compositional held-out split: these (colour, category) pairs are never produced by the
# train/val/test splits, whatever the seed; every heldout image contains at least one.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "car"),
    ("blue", "house"),
    ("yellow", "boat"),
    ("purple", "tree"),
    ("green", "person"),
    ("orange", "lamp"),
    ("pink", "star"),
    ("cyan", "circle"),
})

# Regions per image are capped because ChatRex has 100 object tokens (<obj0> .. <obj99>).
MAX_REGIONS = 100
MAX_OBJECTS = 15


def plural(word: str) -> str:
    """English plural of a category or part name ("person" -> "people")."""
    return PLURALS.get(word, word + "s")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def color_rgb(name: str) -> tuple[int, int, int]:
    """RGB of an object or part colour name."""
    if name in COLORS:
        return COLORS[name]
    return PART_COLORS[name]
