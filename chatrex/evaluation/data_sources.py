"""Which data an evaluation reads: the task names, the synthetic splits ``--data synth:SPLIT``
generates, and the hint a missing records file gives. Torch-free, so the CLI builds its parser
without loading the model stack."""

from __future__ import annotations

import os

TASKS = ("detection", "referring", "region", "proposals", "grounded_caption")


# The synthetic splits of the bundled model, as its model card states them
# (chatrex/bundled/chatrex-tiny/MODEL_CARD.md, "Data"; train/recipes/chatrex_tiny.sh):
# split -> (images, seed), all at SYNTH_SIZE px. ``chatrex eval --data synth:SPLIT`` makes the
# evaluation ones (SYNTH_EVAL_SPLITS) on first use.
SYNTH_SPLITS = {"train": (3000, 0), "val": (100, 1), "test": (500, 2), "heldout": (500, 3)}
SYNTH_EVAL_SPLITS = ("val", "test", "heldout")
SYNTH_SIZE = 384
SYNTH_ROOT = os.path.join("data", "synth")


def records_file(data: str) -> str:
    """The records of ``data``: the file itself (``chatrex data import ... --out X.jsonl``) or
    ``data/records.jsonl`` for a folder (the synthetic splits, data-engine exports)."""
    return data if os.path.isfile(data) else os.path.join(data, "records.jsonl")


def synthetic_command(split: str, out: str) -> str:
    """The command that writes the model card's ``split`` into ``out``."""
    n, seed = SYNTH_SPLITS[split]
    return f"python -m data_engine.synthetic --split {split} --n {n} --seed {seed} --size {SYNTH_SIZE} --out {out}"


def missing_records_message(data: str, eval_command: bool = True) -> str:
    """One line for a records folder or file that is not there, naming the commands that make
    one: the model card's synthetic split for a ``.../<split>`` path (``chatrex eval --data
    synth:<split>`` when ``eval_command``), real data otherwise."""
    if data.endswith(".jsonl") or os.path.isdir(data):
        where = f"{data} does not exist" if not os.path.exists(data) else f"{data} has no records.jsonl"
    else:  # the words the CLI has always used for a folder that is not there
        where = f"{data} has no records.jsonl ({data} does not exist)"
    folder = os.path.dirname(data) if data.endswith(".jsonl") else data
    split = os.path.basename(os.path.normpath(folder))
    if split in SYNTH_SPLITS:
        make = f"`{synthetic_command(split, folder)}`"
        if eval_command and split in SYNTH_EVAL_SPLITS:
            return (f"{where}: `chatrex eval --data synth:{split}` generates the synthetic {split} split into "
                    f"{os.path.join(SYNTH_ROOT, split)} on first use (or run {make})")
        return f"{where}: make the synthetic {split} split with {make}"
    real = "`chatrex data import coco|lvis|refcoco ... --out FILE.jsonl` (real data)"
    if eval_command:
        return f"{where}: give a folder with records.jsonl or a records .jsonl file; make one with {real}, or use --data synth:test (generated on first use)"
    return f"{where}: make records with {real} or `{synthetic_command('train', 'data/synth/train')}` (synthetic)"
