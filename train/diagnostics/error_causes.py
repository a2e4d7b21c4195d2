"""``python -m train.diagnostics.error_causes``: where a model's grounding errors come from.

Every query is asked exactly as ``chatrex eval`` asks it (same draw of at most ``--per-image``
queries per image, same prompts), so the accuracies here equal the evaluation's. Each wrong
answer then gets one cause, checked in this order:

referring (Acc@0.5 on the first box):
* ``no target proposal``: no box in the image's box list overlaps a target (IoU >= 0.5);
* ``box for a no-target query``: the expression denotes nothing and the model named a box;
* ``no box``: a target exists and the model named none;
* ``wrong attribute (colour|pattern|size)``: the box is another instance of the target's
  category that differs in an attribute the expression names;
* ``wrong relation or ordinal``: another instance that agrees on every named attribute, for an
  expression with a relation ("left of", "next to", ...) or an ordinal ("leftmost", ...);
* ``right category, wrong instance``: any other instance of the category.

A part expression ("the window of the dotted car") is judged by the object its chosen part
belongs to (the region's ``parent``): another car that is not dotted is a wrong attribute
(pattern), another car when the expression names an ordinal or a relation is a wrong relation
or ordinal, the other wheel of the right car is ``wrong side (left/right part)`` when the
expression says left or right, and a wrong instance otherwise.
* ``another object``: a whole object of another category;
* ``part or background``: a part of an object, or no region at all.

detection (category and phrase queries, one-to-one matching at IoU 0.5): every missed
instance is ``no target proposal`` or ``missing instance`` (a proposal was there, the answer did
not name it); every extra box is ``extra box``.

Query types: detection by the number of instances (1, 2-3, 4+); referring by its form
(category only, attribute, ordinal, relation, part of an object) and no-target queries.

Example::

    python -m train.diagnostics.error_causes --model chatrex-tiny --data data/synth/val \\
        --per-image 3 --out runs/diagnostics/errors.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, defaultdict

import torch
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from data_engine.synthetic.relations import RELATIONS, SUPERLATIVES
from data_engine.synthetic.vocabulary import COLORS, PART_CATEGORIES, PART_COLORS, PATTERNS, SIZES

IOU = 0.5
_COLOR_WORDS = sorted(set(COLORS) | set(PART_COLORS), key=len, reverse=True)  # "sky blue" before "blue"
_PART_OF = re.compile(r"^the (?:left |right )?(" + "|".join(PART_CATEGORIES) + r") of ")


def _words(text: str, vocab) -> list[str]:
    return [w for w in vocab if re.search(rf"\b{re.escape(w)}\b", text)]


def referring_form(text: str) -> str:
    """``part``, ``relation``, ``ordinal``, ``attribute`` or ``category`` for an expression of
    the synthetic grammar (docs/synthetic_world.md)."""
    text = text.lower()
    if _PART_OF.match(text):
        return "part"
    if _words(text, RELATIONS):
        return "relation"
    if _words(text, SUPERLATIVES):
        return "ordinal"
    return "attribute" if named_attributes(text) else "category"


def named_attributes(text: str) -> dict[str, str]:
    """The attributes the head noun phrase names (``{"color": "red", ...}``), ignoring an object
    the expression relates to ("the star above *the red lamp*")."""
    text = text.lower()
    for rel in RELATIONS:
        text = text.split(f" {rel} ")[0]
    out = {}
    for attr, vocab in (("color", _COLOR_WORDS), ("pattern", PATTERNS), ("size", SIZES)):
        found = _words(text, vocab)
        if found:
            out[attr] = found[0]
    return out


def instance_bin(n: int) -> str:
    return "1" if n == 1 else "2-3" if n <= 3 else "4+"


def _iou(a, b) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=torch.float32).reshape(-1, 4)
    b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
    return box_iou(a, b) if len(a) and len(b) else torch.zeros((len(a), len(b)))


def referring_cause(query: dict, regions: list[dict], pred_boxes, box_list) -> str | None:
    """``None`` when the answer is right (Acc@0.5), else its cause (module docstring)."""
    targets = [regions[t] for t in query.get("targets", [])]
    if not targets:
        return None if not pred_boxes else "box for a no-target query"
    target_boxes = [t["box"] for t in targets]
    if len(pred_boxes) and _iou(pred_boxes[:1], target_boxes).max() >= IOU:
        return None
    if not len(box_list) or _iou(box_list, target_boxes).max() < IOU:
        return "no target proposal"
    if not pred_boxes:
        return "no box"
    ious = _iou(pred_boxes[:1], [r["box"] for r in regions])[0]
    if not len(ious) or ious.max() < IOU:
        return "part or background"
    chosen = regions[int(ious.argmax())]
    target = targets[0]
    if chosen["category"] != target["category"]:
        return "another object" if chosen.get("granularity", "coarse") == "coarse" else "part or background"
    text = query["text"].lower()
    if referring_form(text) == "part":
        # "the [left|right] PART of OBJECT": judge the object the chosen part belongs to.
        parent_of = lambda r: r.get("parent")  # noqa: E731
        if parent_of(chosen) is None or parent_of(chosen) == parent_of(target):
            return "wrong side (left/right part)" if re.match(r"^the (left|right) ", text) else "right category, wrong instance"
        text = "the " + _PART_OF.sub("", text)
        chosen = regions[parent_of(chosen)] if 0 <= parent_of(chosen) < len(regions) else chosen
    named = named_attributes(text)
    for attr in ("color", "pattern", "size"):
        if attr in named and (chosen.get("attributes") or {}).get(attr) != named[attr]:
            return f"wrong attribute ({'colour' if attr == 'color' else attr})"
    if referring_form(text) in ("relation", "ordinal"):
        return "wrong relation or ordinal"
    return "right category, wrong instance"


def detection_counts(target_boxes, pred_boxes, box_list) -> Counter:
    """tp / missing instance / no target proposal / extra box counts of one detection answer."""
    out = Counter()
    iou = _iou(target_boxes, pred_boxes)
    used: set[int] = set()
    for t in range(len(target_boxes)):
        order = [int(j) for j in iou[t].argsort(descending=True) if iou[t, j] >= IOU and int(j) not in used] if len(pred_boxes) else []
        if order:
            used.add(order[0])
            out["tp"] += 1
        elif len(box_list) and _iou(box_list, [target_boxes[t]]).max() >= IOU:
            out["missing instance"] += 1
        else:
            out["no target proposal"] += 1
    out["extra box"] += len(pred_boxes) - len(used)
    return out


def analyse(predictor, records, per_image: int | None = 3, batch_size: int = 8, progress: bool = True) -> dict:
    """Referring and detection errors by cause and by query type over ``records``."""
    from chatrex.evaluation.runner import _image, _sample, _sample_key  # the evaluation's own draw

    ref = defaultdict(Counter)   # form -> {correct, total, cause...}
    det = defaultdict(Counter)   # "category 1" ... -> {tp, missing instance, ...,  queries}
    for rec in tqdm(records, desc="error causes", disable=not progress):
        regions = rec.get("regions", [])
        referring = _sample([q for q in rec.get("queries", []) if q.get("type") == "referring"], per_image, _sample_key(rec))
        by_kind = {k: _sample([q for q in rec.get("queries", []) if q.get("type") == k], per_image, _sample_key(rec)) for k in ("category", "phrase")}
        if not referring and not any(by_kind.values()):
            continue
        predictor.set_image(_image(rec["image"]))
        box_list = predictor.boxes.tolist()
        if referring:
            for q, d in zip(referring, predictor.detect_batch([q["text"] for q in referring], kind="referring", batch_size=batch_size)):
                form = "no target" if not q.get("targets") else referring_form(q["text"])
                cause = referring_cause(q, regions, d.boxes, box_list)
                ref[form]["total"] += 1
                ref[form]["correct" if cause is None else cause] += 1
        for kind, queries in by_kind.items():
            if not queries:
                continue
            for q, d in zip(queries, predictor.detect_batch([q["text"] for q in queries], kind=kind, batch_size=batch_size)):
                targets = [regions[t]["box"] for t in q.get("targets", [])]
                row = det[f"{kind} {instance_bin(len(targets))}" if targets else f"{kind} no target"]
                row.update(detection_counts(targets, d.boxes, box_list))
                row["queries"] += 1
                row["instances"] += len(targets)
    return {"referring": {k: dict(v) for k, v in sorted(ref.items())}, "detection": {k: dict(v) for k, v in sorted(det.items())}}


REFERRING_CAUSES = ("no target proposal", "right category, wrong instance", "wrong attribute (colour)", "wrong attribute (pattern)",
                    "wrong attribute (size)", "wrong relation or ordinal", "wrong side (left/right part)", "another object", "part or background", "no box",
                    "box for a no-target query")


def referring_table(result: dict) -> str:
    """Markdown: one row per referring form plus a total, causes as fractions of the row's queries."""
    title = "Referring expressions: Acc@0.5 ('correct') and each cause of a wrong answer, as fractions of the row's queries"
    rows = dict(result["referring"])
    total = Counter()
    for v in rows.values():
        total.update(v)
    rows["all"] = dict(total)
    causes = [c for c in REFERRING_CAUSES if total.get(c)]
    lines = [title, "", "| form | queries | correct | " + " | ".join(causes) + " |", "|---|---|---|" + "---|" * len(causes)]
    for form, v in rows.items():
        n = v.get("total", 0)
        if n:
            lines.append(f"| {form} | {n} | {v.get('correct', 0) / n:.2f} | " + " | ".join(f"{v.get(c, 0) / n:.2f}" for c in causes) + " |")
    return "\n".join(lines)


def detection_table(result: dict) -> str:
    """Markdown: recall and precision per query kind and instance count, with the misses' causes."""
    lines = ["Detection by query kind and number of instances (one-to-one matching at IoU 0.5). Missed instances, counted: "
             "'not proposed' = no box of the image's box list overlaps it; 'proposed, not named' = one did and the answer did not name it",
             "", "| queries | n | instances | recall | precision | missed: not proposed | missed: proposed, not named | extra boxes |", "|---|---|---|---|---|---|---|---|"]
    for key, v in result["detection"].items():
        inst, tp, extra = v.get("instances", 0), v.get("tp", 0), v.get("extra box", 0)
        rec = f"{tp / inst:.2f}" if inst else "-"
        prec = f"{tp / (tp + extra):.2f}" if tp + extra else "-"
        lines.append(f"| {key} | {v.get('queries', 0)} | {inst} | {rec} | {prec} | {v.get('no target proposal', 0)} | {v.get('missing instance', 0)} | {extra} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.diagnostics.error_causes", description=__doc__.split("\n\n")[0],
                                epilog="Example::" + __doc__.split("Example::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chatrex-tiny", help="bundled model name or ChatRex folder (default chatrex-tiny)")
    p.add_argument("--upn", help="proposal network folder (default: the model's own)")
    p.add_argument("--data", required=True, help="a records folder (records.jsonl inside) or a records.jsonl")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--per-image", type=int, default=3,
                   help="at most N referring, N category and N phrase queries per image, drawn as chatrex eval draws them (default 3)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--oracle", action="store_true", help="perfect box features (models trained with data.oracle_object_features)")
    p.add_argument("--oracle-parent", action="store_true", help="with --oracle: parts' features also state their object (data.oracle_parent_features)")
    p.add_argument("--out", help="write the counts as JSON here")
    args = p.parse_args(argv)
    for name in ("limit", "per_image", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    from chatrex.evaluation.data_sources import missing_records_message, records_file
    from chatrex.evaluation.runner import _records
    from chatrex.predictor import ChatRexPredictor

    if not os.path.isfile(records_file(args.data)):
        p.error(missing_records_message(args.data, eval_command=False))
    records = _records(args.data, args.limit)
    try:  # a model name or folder that is not there: one line, not a traceback
        if args.oracle:
            from .oracle_features import OracleFeaturePredictor

            predictor = OracleFeaturePredictor.from_pretrained(args.model, upn=args.upn)
            predictor.use_records(records, parent=args.oracle_parent)
        else:
            predictor = ChatRexPredictor.from_pretrained(args.model, upn=args.upn)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = analyse(predictor, records, args.per_image, args.batch_size)
    print(referring_table(result) + "\n\n" + detection_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "data": args.data, "per_image": args.per_image, **result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
