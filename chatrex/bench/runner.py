"""Run a benchmark: shard the items over processes, append predictions as they come, resume a
killed run, and merge everything into the fixed output files once every shard is done.

Output folder (names fixed so that other tools can read them):

* ``protocol.json``: every knob of the run; a resumed run must use the same ones.
* ``parts/part-RANK-of-WORLD.jsonl``: one line per finished image (detection) or sentence (REC).
* ``metrics.json``: the metrics, with ``protocol`` and ``seconds``.
* ``results.json`` (detection): the official COCO results list.
* ``predictions.jsonl`` (REC): one line per sentence.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from tqdm.auto import tqdm

from ..datasets.sink import write_json_atomic
from ..utils.atomic import atomic_write
from . import detection, rec
from .protocol import DetectionProtocol, RecProtocol, as_dict
from .store import PartWriter, done_keys, part_files, read_parts

PROTOCOL_FILE = "protocol.json"


class BenchError(ValueError):
    """A user-facing problem (bad input, a folder from another run): one line, exit code 2."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def prepare_out_dir(out_dir: str, run: dict, overwrite: bool = False) -> None:
    """Create ``out_dir`` for ``run`` (protocol, model and data), or check that the run it
    holds is the same one, so that a resumed run never mixes two protocols or two models.
    A folder whose run predicted nothing yet (e.g. it stopped on a wrong path) is reused."""
    path = os.path.join(out_dir, PROTOCOL_FILE)
    if overwrite and os.path.isdir(out_dir):
        for name in ("parts", PROTOCOL_FILE, "metrics.json", "results.json", "predictions.jsonl"):
            target = os.path.join(out_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BenchError(f"--out {out_dir} is a file; give a folder")
    os.makedirs(out_dir, exist_ok=True)
    has_parts = any(os.path.getsize(p) > 0 for p in part_files(out_dir))
    if os.path.isfile(path) and has_parts:
        with open(path) as f:
            stored = _flat(json.load(f))
        now = _flat(run)
        diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        if diff:
            shown = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in diff[:3])
            raise BenchError(f"{out_dir} holds predictions of another run ({shown}); use another --out, or --overwrite to start again")
    elif has_parts:
        raise BenchError(f"{out_dir} has predictions but no {PROTOCOL_FILE}; use another --out, or --overwrite")
    else:
        write_json_atomic(path, run)


def run_description(protocol, images_dir: str, model: dict | None = None) -> dict:
    """What makes two runs' predictions interchangeable: the protocol, the model and the
    images. ``--limit`` is not part of it: a longer run reuses a shorter one's predictions."""
    return {"protocol": as_dict(protocol), "model": model or {}, "images": os.path.abspath(images_dir)}


def check_images(paths) -> None:
    missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    if missing:
        raise BenchError(f"{len(missing)} image file(s) not found, e.g. {missing[0]} (check --images)")


def _load_image(path: str):
    from ..image_processing_chatrex import load_image

    return load_image(path)


def with_proposals(answerer, items: list, path_of, batch_size: int):
    """Yield ``(item, image, proposals)``: images loaded, and UPN run on ``batch_size`` of them
    at a time when the model offers a batched path (``proposals=None`` otherwise: computed per
    image)."""
    batched = batch_size > 1 and hasattr(answerer, "proposals_batch")
    step = batch_size if batched else 1
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        images = [_load_image(path_of(item)) for item in chunk]
        props = answerer.proposals_batch(images) if batched else [None] * len(chunk)
        yield from zip(chunk, images, props)


def _bar(total: int, title: str, rank: int, world: int, progress: bool):
    """One bar per process; with several, each on its own line, named by rank."""
    return tqdm(total=total, desc=title + (f" [{rank + 1}/{world}]" if world > 1 else ""), disable=not progress, unit="img",
                position=rank if world > 1 else None)


def _lines_in_order(out_dir: str, keys: list[str], what: str) -> list[dict]:
    """The prediction line of every key, in ``keys``' order; a key without one means the run
    has not finished."""
    lines_by_key, _ = read_parts(out_dir)
    missing = [k for k in keys if k not in lines_by_key]
    if missing:
        raise BenchError(f"{len(missing)} {what}(s) have no prediction yet (e.g. {what} {missing[0]}); run the same command again to finish")
    return [lines_by_key[k] for k in keys]


def shard(items: list, rank: int, world: int) -> list:
    """Round-robin: item i goes to process i % world (neighbours spread, so shards finish together)."""
    return items[rank::world]


# -- detection -------------------------------------------------------------------------------
def run_detection_shard(answerer, gt: detection.GroundTruth, protocol: DetectionProtocol, out_dir: str, rank: int = 0, world: int = 1,
                        progress: bool = True, batch_size: int = 1) -> int:
    """Predict this process's images that no part file holds yet; returns how many it did."""
    done = done_keys(out_dir)
    todo = [t for t in shard(gt.images, rank, world) if str(t.image_id) not in done]
    bar = _bar(len(todo), f"bench {protocol.dataset}", rank, world, progress)
    clock = time.perf_counter()
    with PartWriter(out_dir, rank, world) as writer, bar:
        for truth, image, props in with_proposals(answerer, todo, lambda t: t.path, batch_size):
            line = detection.run_image(answerer, truth, gt, protocol, image, props)
            clock, line["seconds"] = _lap(clock)
            writer.append(line)
            bar.update()
    return len(todo)


def finalize_detection(gt: detection.GroundTruth, protocol: DetectionProtocol, out_dir: str, seconds: float) -> dict:
    lines = _lines_in_order(out_dir, [str(t.image_id) for t in gt.images], "image")
    metrics, results = detection.finalize(lines, gt, protocol)
    write_json_atomic(os.path.join(out_dir, "results.json"), results)
    metrics |= {"protocol": as_dict(protocol), "model": _stored_model(out_dir), "seconds": round(seconds, 1),
                "predict_seconds": _predict_seconds(lines)}
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


# -- REC ---------------------------------------------------------------------------------------
def run_rec_shard(answerer, sentences: list, protocol: RecProtocol, out_dir: str, rank: int = 0, world: int = 1, progress: bool = True,
                  batch_size: int = 1) -> int:
    """Predict this process's sentences (sharded by image) that no part file holds yet."""
    done = done_keys(out_dir)
    groups = [g for g in shard(rec.group_by_image(sentences), rank, world) if any(str(s.sent_id) not in done for s in g)]
    count = 0
    bar = _bar(len(groups), f"bench {protocol.dataset} {protocol.split or ''}".rstrip(), rank, world, progress)
    with PartWriter(out_dir, rank, world) as writer, bar:
        clock = time.perf_counter()
        for group, image, props in with_proposals(answerer, groups, lambda g: g[0].image, batch_size):
            lines = rec.run_image(answerer, group, protocol, image, done, props)
            clock, seconds = _lap(clock)
            for line in lines:
                line["seconds"] = round(seconds / len(lines), 3)
                writer.append(line)
                count += 1
            bar.update()
    return count


def _lap(start: float) -> tuple[float, float]:
    """``(now, seconds since start)``: the time one item took, loading and proposals included."""
    now = time.perf_counter()
    return now, round(now - start, 3)


def _predict_seconds(lines: list[dict]) -> float:
    """Process time spent predicting these items, over every run and process that did them
    (``seconds`` is only this command's wall time, short for a resumed run)."""
    return round(sum(ln.get("seconds", 0.0) for ln in lines), 1)


def _stored_model(out_dir: str) -> dict:
    with open(os.path.join(out_dir, PROTOCOL_FILE)) as f:
        return json.load(f).get("model", {})


PREDICTION_KEYS = ("id", "image_id", "box", "iou", "correct")


def finalize_rec(sentences: list, protocol: RecProtocol, out_dir: str, seconds: float) -> dict:
    lines = _lines_in_order(out_dir, [str(s.sent_id) for s in sentences], "sentence")
    with atomic_write(os.path.join(out_dir, "predictions.jsonl")) as f:
        for ln in lines:
            f.write(json.dumps({k: ln[k] for k in PREDICTION_KEYS}) + "\n")
    metrics = rec.finalize(lines, protocol) | {"protocol": as_dict(protocol), "model": _stored_model(out_dir), "seconds": round(seconds, 1),
                                               "predict_seconds": _predict_seconds(lines)}
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
