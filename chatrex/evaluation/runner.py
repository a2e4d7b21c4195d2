"""``chatrex eval``: run a predictor over a records folder and report docs/evaluation.md metrics."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .data_sources import (  # noqa: F401 (re-exported)
    SYNTH_EVAL_SPLITS,
    SYNTH_ROOT,
    SYNTH_SIZE,
    SYNTH_SPLITS,
    TASKS,
    missing_records_message,
    records_file,
    synthetic_command,
)
from .metrics import ClassCounts, coco_map, detection_precision_recall, greedy_match, proposal_recall, referring_correct


@dataclass
class EvalTable:
    task: str
    metrics: dict = field(default_factory=dict)

    def format(self) -> str:
        width = max(len(k) for k in self.metrics)
        lines = [f"task: {self.task}", "-" * (width + 14)]
        for k, v in self.metrics.items():
            lines.append(f"{k:<{width}}  {v:>10.4f}" if isinstance(v, float) else f"{k:<{width}}  {v:>10}")
        return "\n".join(lines)


def _records(data_dir: str, limit: int | None):
    from ..utils.jsonl import JsonlRecords  # the same lazy reader training uses

    path = records_file(data_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_records_message(data_dir))
    records = JsonlRecords(path)
    n = len(records) if limit is None else min(limit, len(records))
    if n <= 0:
        raise ValueError(f"nothing to evaluate in {data_dir} (limit={limit})")
    return [records[i] for i in range(n)]


def _image(path: str):
    from chatrex.image_processing_chatrex import load_image  # the same conversion training uses

    return load_image(path)


def _sample_key(rec: dict) -> str:
    """What seeds an image's draw: its record id, else its file name; never the absolute path the
    reader resolved, which would make the same command give other numbers in another clone."""
    return str(rec.get("id") or os.path.basename(rec["image"]))


def _sample(items: list, k: int | None, key: str) -> list:
    """At most ``k`` items, drawn reproducibly (seeded by ``key``) and kept in their order."""
    if k is None or len(items) <= k:
        return items
    rng = np.random.default_rng(list(key.encode()))
    return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False))]


def evaluate(model: str, data_dir: str, task: str, limit: int | None = None, upn: str | None = None, progress: bool = True, predictor=None,
             per_image: int | None = None, proposal_min_score: float | None = None, device: str = "cpu", batch_size: int = 8) -> EvalTable:
    """Evaluate ``model`` (bundled name or folder) on ``data_dir/records.jsonl`` (or the records
    file ``data_dir``) for ``task``.

    ``limit`` caps the images; ``per_image`` caps the queries (detection: categories,
    referring: expressions, region: regions) per image, drawn reproducibly. An image's queries
    are asked ``batch_size`` at a time over its shared prefix (the answers, and so the
    metrics, are those of one question at a time).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if predictor is None:
        from chatrex.predictor import ChatRexPredictor

        kwargs = {} if proposal_min_score is None else {"proposal_min_score": proposal_min_score}
        predictor = ChatRexPredictor.from_pretrained(model, upn=upn, device=device, **kwargs)
    records = _records(data_dir, limit)
    start = time.perf_counter()
    run = {"detection": _detection, "referring": _referring, "region": _region, "proposals": _proposals, "grounded_caption": _grounded_caption}[task]
    metrics = run(predictor, tqdm(records, desc=f"eval {task}", disable=not progress), per_image, batch_size)
    metrics["images"] = len(records)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    return EvalTable(task, metrics)


def _detection(predictor, records, per_image, batch_size) -> dict:
    """Every category present in an image is queried by name (kind="category")."""
    counts: dict[str, ClassCounts] = defaultdict(ClassCounts)
    coco_images = []
    for rec in records:
        predictor.set_image(_image(rec["image"]))
        gt = defaultdict(list)
        for r in rec.get("regions", []):
            gt[r["category"]].append(r["box"])
        gt = {c: gt[c] for c in _sample(sorted(gt), per_image, _sample_key(rec))}
        preds = {}
        for (category, boxes), det in zip(gt.items(), predictor.detect_batch(list(gt), kind="category", batch_size=batch_size)):
            counts[category].add(det.boxes, boxes)
            preds[category] = list(zip(det.boxes, det.scores))
        coco_images.append({"gt": dict(gt), "pred": preds, "width": rec["width"], "height": rec["height"]})
    precision, recall = detection_precision_recall(counts)
    return {"precision@0.5": precision, "recall@0.5": recall, **coco_map(coco_images), "classes": len(counts), "queries": sum(len(im["gt"]) for im in coco_images)}


def _referring(predictor, records, per_image, batch_size) -> dict:
    correct = total = neg_correct = neg_total = 0
    for rec in records:
        queries = _sample([q for q in rec.get("queries", []) if q.get("type") == "referring"], per_image, _sample_key(rec))
        if not queries:
            continue
        predictor.set_image(_image(rec["image"]))
        for q, det in zip(queries, predictor.detect_batch([q["text"] for q in queries], kind="referring", batch_size=batch_size)):
            targets = [rec["regions"][t]["box"] for t in q.get("targets", [])]
            ok = referring_correct(det.boxes, targets)
            correct += ok
            total += 1
            if not targets:
                neg_correct += ok
                neg_total += 1
    return {
        "acc@0.5": correct / total if total else 0.0,
        "acc@0.5 (with target)": (correct - neg_correct) / (total - neg_total) if total > neg_total else 0.0,
        "acc (no-target queries)": neg_correct / neg_total if neg_total else 0.0,
        "queries": total,
    }


def _region(predictor, records, per_image, batch_size) -> dict:
    """Ground-truth boxes are the box list; each region's category is asked by index."""
    correct = total = 0
    per_granularity = defaultdict(lambda: [0, 0])
    for rec in records:
        regions = rec.get("regions", [])[: predictor.processor.image_processor.max_objects]
        if not regions:
            continue
        predictor.set_image(_image(rec["image"]), boxes=[r["box"] for r in regions])
        chosen = _sample(list(range(len(regions))), per_image, _sample_key(rec))
        for i, text in zip(chosen, predictor.describe_batch(chosen, level="category", batch_size=batch_size)):
            r = regions[i]
            ok = text.strip().lower() == r["category"].lower()
            correct += ok
            total += 1
            g = per_granularity[r.get("granularity", "coarse")]
            g[0] += ok
            g[1] += 1
    out = {"category accuracy": correct / total if total else 0.0}
    for g, (c, t) in sorted(per_granularity.items()):
        out[f"category accuracy ({g})"] = c / t
    out["regions"] = total
    return out


def _grounded_caption(predictor, records, per_image, batch_size) -> dict:
    """Ask for a grounded caption; every box the answer grounds is matched one-to-one (IoU >= 0.5)
    against the image's whole objects (coarse regions). Recall: whole objects grounded;
    precision: grounded boxes that are a whole object. Micro-averaged over images."""

    matched = predicted = wholes = 0
    for rec in records:
        gt = [r["box"] for r in rec.get("regions", []) if r.get("granularity", "coarse") == "coarse"]
        predictor.set_image(_image(rec["image"]))
        answer = predictor.grounded_caption(max_new_tokens=512)  # a caption names every object
        boxes = list({tuple(b) for s in answer.spans for b in s.boxes})  # a box named twice counts once
        matched += greedy_match(sorted(boxes), gt)
        predicted += len(boxes)
        wholes += len(gt)
    return {
        "whole-object recall@0.5": matched / wholes if wholes else 0.0,
        "grounding precision@0.5": matched / predicted if predicted else 0.0,
        "whole objects": wholes,
        "grounded boxes": predicted,
    }


def _proposals(predictor, records, per_image, batch_size) -> dict:
    """Recall@100 at IoU 0.5 of the merged fine+coarse proposal list the LLM sees."""
    found = defaultdict(int)
    totals = defaultdict(int)
    if predictor.upn is None:
        raise ValueError("the model has no proposal network (upn/) to evaluate")
    for rec in records:
        props = predictor.propose(_image(rec["image"]))  # set_image's box list, without the ChatRex encoders
        for g in ("fine", "coarse"):
            boxes = [r["box"] for r in rec.get("regions", []) if r.get("granularity", "coarse") == g]
            f, t = proposal_recall(props.boxes, boxes, k=100)
            found[g] += f
            totals[g] += t
    return {f"recall@100 ({g})": found[g] / totals[g] if totals[g] else 0.0 for g in ("coarse", "fine")} | {
        "gt boxes (coarse)": totals["coarse"], "gt boxes (fine)": totals["fine"]}
