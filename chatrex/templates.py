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
