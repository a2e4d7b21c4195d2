"""Prompt templates for every task family, several phrasings each.

``{phrase}`` is a category, short phrase or referring expression; ``{obj}`` an object token
such as ``<obj3>``. Keeping all wording here makes the training mix easy to audit and extend.
"""

from __future__ import annotations

DETECTION = {
    "category": [
        "Detect all the {phrase} in the image.",
        "Find every {phrase}.",
        "Where are the {phrase} in this image?",
        "Locate all instances of {phrase}.",
    ],
    "phrase": [
        "Find the {phrase}.",
        "Please locate the {phrase} in the image.",
        "Where is the {phrase}?",
        "Ground the phrase: {phrase}.",
    ],
    "referring": [
        "Find {phrase}.",
        "Which object is {phrase}?",
        "Locate {phrase} in the image.",
        "Point to {phrase}.",
    ],
}

REGION = {
    "category": [
        "What is the category of {obj}?",
        "What kind of object is {obj}?",
        "Name the category of {obj} in one word.",
    ],
    "phrase": [
        "Describe {obj} in a short phrase.",
        "Give a short phrase for {obj}.",
        "Briefly, what is {obj}?",
    ],
    "description": [
        "Describe {obj} in detail.",
        "Give a detailed description of {obj}.",
        "What does {obj} look like? Be detailed.",
    ],
    "referring": [
        "Give a referring expression that uniquely identifies {obj}.",
        "How would you refer to {obj} so that nobody confuses it with another object?",
        "Write a unique referring expression for {obj}.",
    ],
}

# The grounded captions of the training data name every whole object, so "find all the
# objects" is the same task and gets the same answer.
GROUNDED_CAPTION = [
    "Briefly describe the image and ground the objects you mention.",
    "Write a short grounded caption for this image.",
    "Describe the image, linking each object you mention to its box.",
    "Describe the image and find all the objects.",
    "Find all the objects in the image.",
    "List every object in the image with its box.",
]

CAPTION = [
    "Describe the image briefly.",
    "Write a short caption for this image.",
    "What does this image show?",
]


# -- prompt sets: the wording a model family was trained with -------------------------------
from dataclasses import dataclass, field  # noqa: E402


@dataclass(frozen=True)
class PromptSet:
    """The prompts one model family understands, one per task.

    Attributes:
        detection: kind (category, phrase, referring) -> question with ``{phrase}``.
        region: level (category, phrase, description, referring) -> question with ``{obj}``.
        grounded_caption: a question whose answer describes the image and grounds the
            objects it names.
        grounded_prefix: put before a free question to ask for a grounded answer ("" when
            the model grounds by default).
        answer_rules: how :func:`chatrex.text.answer.parse_answer` reads this family's answers.
    """

    name: str
    detection: dict = field(default_factory=dict)
    region: dict = field(default_factory=dict)
    grounded_caption: str = ""
    grounded_prefix: str = ""
    answer_rules: str = "chatrex"


# The first phrasing of each family above: what our models were trained with most.
CHATREX_PROMPTS = PromptSet(
    name="chatrex",
    detection={kind: phrasings[0] for kind, phrasings in DETECTION.items()},
    region={level: phrasings[0] for level, phrasings in REGION.items()},
    grounded_caption=GROUNDED_CAPTION[0],
)

# The released models' task prompts (the official demo's first phrasing of each task;
# official_chatrex.md A.9). The official detection prompt does not tell categories from
# referring expressions, so every kind uses it; the official region-caption family has no
# "referring" level, and its one-sentence description is the closest.
OFFICIAL_PROMPTS = PromptSet(
    name="official",
    detection={kind: "Please detect {phrase} in this image. Answer the question with object indexes." for kind in DETECTION},
    region={
        "category": "What is the category name of {obj}? Answer the question with its category name in free format.",
        "phrase": "Can you provide me with a short phrase to describe {obj}? Answer the question with a short phrase.",
        "description": "Can you provide me with a brief description of {obj}? Answer the question with brief description.",
        "referring": "Can you provide a one sentence description of {obj} in the image? Answer the question with a one sentence description.",
    },
    # "breifly" is the released spelling; the model was trained on it.
    grounded_caption="Please breifly describe this image in one sentence and detect all the mentioned objects. Answer the question with grounded answer.",
    grounded_prefix="Answer the question in grounded format. ",
    answer_rules="official",
)

PROMPT_SETS = {p.name: p for p in (CHATREX_PROMPTS, OFFICIAL_PROMPTS)}


def prompt_set(name: str) -> PromptSet:
    """The prompt set called ``name``; ``ValueError`` lists the known ones."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt style {name!r}; known: {', '.join(sorted(PROMPT_SETS))}")
    return PROMPT_SETS[name]
