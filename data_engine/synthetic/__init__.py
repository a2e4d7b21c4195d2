"""Procedural 2-D world (docs/synthetic_world.md): scenes of objects made of parts, with records.

``generate_scene(split, seed, index, size)`` returns ``(PIL.Image, record)``;
``write_split(out_dir, split, n, seed, size)`` writes a directory of PNGs and
``records.jsonl``; ``python -m data_engine.synthetic --help`` is the CLI. See
``docs/synthetic_world.md`` for the vocabulary, relations and splits.
"""

from .generator import generate_scene, write_split
from .vocabulary import GENERATOR_VERSION, HELDOUT_PAIRS, SPLITS

__all__ = ["generate_scene", "write_split", "GENERATOR_VERSION", "HELDOUT_PAIRS", "SPLITS"]
