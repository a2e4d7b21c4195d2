"""``chatrex detect`` over many images: batched, streamed to JSONL, resumable.

Each input is one ``{"image", "phrase"}`` pair; each gets exactly one output line, in input
order, written (and flushed) as soon as its batch is done:

    {"image": "a.png", "phrase": "boat", "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "indices": [...], "answer": "..."}
    {"image": "broken.png", "phrase": "boat", "error": "cannot identify image file ..."}

A bad image is an error line, never the end of the run. A killed run leaves at most one torn
line at the end of the output; ``resume`` cuts it off and skips the inputs that have a line
(error lines included: delete one to retry it), so the output ends with one line per input and
no duplicates.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

from .utils.jsonl import cut_torn_tail, read_jsonl


@dataclass(frozen=True)
class DetectInput:
    image: str  # as given (the output echoes it)
    phrase: str
    path: str  # where the image is read from


def read_inputs(path: str) -> list[DetectInput]:
    """``{"image", "phrase"}`` lines of a JSONL file. Relative image paths are relative to the
    file's folder, as in records files. ``ValueError`` names the first bad line."""
    root = os.path.dirname(os.path.abspath(path))
    out = []
    for number, row in read_jsonl(path, line_numbers=True, torn_tail_ok=False):  # written by hand: a bad last line is a typo
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("phrase"), str):
            raise ValueError(f"{path}:{number}: expected {{\"image\": PATH, \"phrase\": TEXT}}, got {json.dumps(row)[:120]}")
        if not row["phrase"].strip():
            raise ValueError(f"{path}:{number}: the phrase is empty")
        out.append(DetectInput(row["image"], row["phrase"].strip(), os.path.join(root, row["image"])))
    if not out:
        raise ValueError(f"{path} holds no inputs")
    return out


def pending(inputs: list[DetectInput], output: str) -> tuple[list[DetectInput], int]:
    """``(inputs without a line in output yet, error lines already there)``; the file's torn
    last line is cut first. Inputs are matched by ``(image, phrase)``; an input listed twice
    needs two lines."""
    cut_torn_tail(output)
    rows = list(read_jsonl(output, missing_ok=True))
    done = Counter((row.get("image"), row.get("phrase")) for row in rows)
    todo = []
    for item in inputs:
        key = (item.image, item.phrase)
        if done[key] > 0:
            done[key] -= 1
        else:
            todo.append(item)
    return todo, sum("error" in row for row in rows)


def _line(item: DetectInput, det) -> dict:
    return {"image": item.image, "phrase": item.phrase, "boxes": [[round(v, 2) for v in b] for b in det.boxes],
            "scores": [round(s, 4) for s in det.scores], "indices": det.indices, "answer": det.answer}


def _error(item: DetectInput, err: Exception) -> dict:
    return {"image": item.image, "phrase": item.phrase, "error": " ".join(str(err).split())}


def detect_lines(predictor, batch: list[DetectInput]) -> list[dict]:
    """One output line per input of ``batch``, in order. Images that cannot be read, and
    questions the model cannot take (e.g. too long), become error lines; the others run as one
    batch (:meth:`ChatRexPredictor.detect_images`)."""
    from .image_processing_chatrex import load_image

    lines: list[dict | None] = [None] * len(batch)
    images = {}
    for i, item in enumerate(batch):
        try:
            images[i] = load_image(item.path)
        except (OSError, ValueError) as err:
            lines[i] = _error(item, err)
    ok = list(images)
    try:
        dets = predictor.detect_images([images[i] for i in ok], [batch[i].phrase for i in ok], batch_size=max(1, len(ok)))
        for i, det in zip(ok, dets):
            lines[i] = _line(batch[i], det)
    except ValueError:
        # One input spoiled the batch (e.g. a phrase longer than the context with this
        # image's boxes): run them one by one so only that one becomes an error line.
        for i in ok:
            try:
                lines[i] = _line(batch[i], predictor.detect_images([images[i]], [batch[i].phrase])[0])
            except ValueError as err:
                lines[i] = _error(batch[i], err)
    return lines


def run(predictor, inputs: list[DetectInput], out, batch_size: int = 8, progress=None) -> int:
    """Answer ``inputs`` in batches of ``batch_size``, writing one line per input to the text
    stream ``out`` as each batch finishes. ``progress``: a tqdm-like bar to advance, or None.
    Returns the number of error lines."""
    errors = 0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        for line in detect_lines(predictor, batch):
            errors += "error" in line
            # One write per line, flushed: a kill can tear only the line being written.
            out.write(json.dumps(line) + "\n")
            out.flush()
        if progress is not None:
            progress.update(len(batch))
    return errors
