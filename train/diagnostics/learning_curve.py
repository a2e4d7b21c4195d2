"""``python -m train.diagnostics.learning_curve RUN``: validation metrics at every checkpoint of
a training run, and how many samples each target would need.

Each ``RUN/checkpoint-*`` is exported once to ``RUN/models/step-NNNNNNNN`` (a complete model
folder with the run's processor and UPN) and evaluated with ``chatrex eval``'s protocol on the
validation split (MODEL_CARD.md): referring (3 expressions per image), detection (4 categories
per image), region category (5 regions per image) and, on the first ``--caption-images``
images, the grounded caption. One JSON line per checkpoint goes to ``RUN/learning_curve.jsonl``;
steps already there are skipped, so an interrupted evaluation continues where it stopped.
``--init`` adds the starting model as the point at 0 new samples.

The extrapolation fits ``metric = a + b * ln(samples)`` to the points with samples > 0 and
solves for each target: a rough guide (a log fit bends more slowly than a saturating curve),
printed as "never" when the metric is not rising.

With ``--oracle`` the box tokens are perfect features (:mod:`.oracle_features`), for runs
trained with ``data.oracle_object_features``.

Example::

    python -m train.diagnostics.learning_curve runs/continue-cached --data data/synth/val --init chatrex-tiny
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

TARGETS = {"referring": 0.85, "no_target": 0.90, "det_precision": 0.90, "det_recall": 0.90, "region": 0.90,
           "caption_recall": 0.80, "caption_precision": 0.90}


def target_score(row: dict) -> float:
    """The mean of the five target metrics (category P/R and grounded-caption R/P each count as
    one, their mean): the shipping rule's yardstick."""
    parts = [row["referring"], row["no_target"], (row["det_precision"] + row["det_recall"]) / 2, row["region"]]
    if "caption_recall" in row:
        parts.append((row["caption_recall"] + row["caption_precision"]) / 2)
    return sum(parts) / len(parts)


def evaluate_model(predictor, data: str, limit: int | None, caption_images: int, batch_size: int = 8) -> dict:
    """The validation row of one model (fractions in [0, 1])."""
    from chatrex.evaluation import PROTOCOL_PER_IMAGE
    from chatrex.evaluation.runner import evaluate

    def run(task, per_image, n=limit):
        return evaluate("", data, task, limit=n, predictor=predictor, per_image=per_image, progress=False, batch_size=batch_size).metrics

    ref = run("referring", PROTOCOL_PER_IMAGE["referring"])
    det = run("detection", PROTOCOL_PER_IMAGE["detection"])
    reg = run("region", PROTOCOL_PER_IMAGE["region"])
    row = {"referring": ref["acc@0.5"], "no_target": ref["acc (no-target queries)"], "det_precision": det["precision@0.5"],
           "det_recall": det["recall@0.5"], "mAP": det.get("mAP@[.5:.95]", det.get("mAP")), "region": reg["category accuracy"]}
    if caption_images:
        cap = run("grounded_caption", None, caption_images)
        row |= {"caption_recall": cap["whole-object recall@0.5"], "caption_precision": cap["grounding precision@0.5"]}
    row["target_score"] = target_score(row)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def export_checkpoint(checkpoint: str, init: str, out: str) -> str:
    """``init``'s model with the weights of an accelerate checkpoint, saved as a model folder."""
    import torch
    from safetensors.torch import load_file

    from chatrex.utils.strict_loading import KeyReport

    from ..checkpointing import save_pretrained_atomic
    from ..model_loading import load_model_and_processor, upn_folder

    model, processor = load_model_and_processor(init)
    state = load_file(os.path.join(checkpoint, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if model.config.get_text_config().tie_word_embeddings else set()
    KeyReport(f"checkpoint {checkpoint} does not fit {init}", missing=sorted(set(missing) - tied), unexpected=list(unexpected)).raise_if_any()
    model.tie_weights()
    with torch.no_grad():
        return save_pretrained_atomic(model, processor, out, upn=upn_folder(init))


def samples_needed(points: list[tuple[int, float]], target: float) -> float | None:
    """Samples at which ``a + b ln(samples)``, fitted to ``points`` (samples > 0), reaches
    ``target``; ``None`` when fewer than two points or the fit is not rising."""
    pts = [(s, v) for s, v in points if s > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([s for s, _ in pts]), np.array([v for _, v in pts])
    b, a = np.polyfit(x, y, 1)
    if b <= 1e-6:
        return None
    return float(math.exp((target - a) / b))


def extrapolation(rows: list[dict]) -> dict[str, float | None]:
    return {m: samples_needed([(r["samples"], r[m]) for r in rows if m in r], t) for m, t in TARGETS.items()}


def _predictor(folder: str, oracle: bool, records, parent: bool = False):
    if oracle:
        from .oracle_features import OracleFeaturePredictor

        predictor = OracleFeaturePredictor.from_pretrained(folder)
        predictor.use_records(records, parent=parent)
        return predictor
    from chatrex.predictor import ChatRexPredictor

    return ChatRexPredictor.from_pretrained(folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.diagnostics.learning_curve", description=__doc__.split("\n\n")[0],
                                epilog="Example::" + __doc__.split("Example::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a training run's output folder (checkpoint-* inside, and its config.yaml)")
    p.add_argument("--data", default="data/synth/val", help="validation records folder (default data/synth/val)")
    p.add_argument("--init", help="also evaluate this starting model as the point at 0 samples")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--caption-images", type=int, default=50, help="grounded-caption images (0: skip; default 50)")
    p.add_argument("--oracle", action="store_true", help="perfect box features (runs trained with data.oracle_object_features)")
    p.add_argument("--oracle-parent", action="store_true", help="with --oracle: parts' features also state their object (data.oracle_parent_features)")
    p.add_argument("--processes", type=int, default=1, help="training processes the run used (torchrun --nproc_per_node; default 1)")
    p.add_argument("--steps", help="comma-separated checkpoint steps to evaluate (default: all)")
    args = p.parse_args(argv)
    from ..checkpointing import list_checkpoints
    from ..config import load_config

    config_path = os.path.join(args.run, "config.yaml")
    if not os.path.isfile(config_path):
        p.error(f"{config_path} not found: RUN must be a training output folder (train/recipes/chatrex_tiny_limits.sh makes runs/continue-cached)")
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    from chatrex.evaluation.data_sources import missing_records_message, records_file

    if not os.path.isfile(records_file(args.data)):
        p.error(missing_records_message(args.data, eval_command=False))
    try:
        wanted = None if not args.steps else {int(s) for s in args.steps.split(",")}
    except ValueError:
        p.error(f"--steps takes comma-separated integers, got {args.steps!r}")
    cfg = load_config(config_path, [])
    samples_per_step = cfg.train.batch_size * cfg.train.grad_accum * args.processes
    out_path = os.path.join(args.run, "learning_curve.jsonl")
    done = {json.loads(line)["step"] for line in open(out_path)} if os.path.isfile(out_path) else set()
    from chatrex.evaluation.runner import _records

    records = _records(args.data, args.limit) if args.oracle else None
    points = [(0, args.init)] if args.init else []
    points += [(step, path) for step, path in list_checkpoints(args.run) if wanted is None or step in wanted]
    if not points and not done:
        print(f"error: no checkpoint-* in {args.run}{' with steps ' + args.steps if args.steps else ''} and no --init: nothing to evaluate "
              "(train/recipes/chatrex_tiny_limits.sh makes runs/continue-cached)", file=sys.stderr)
        return 1
    for step, path in points:
        if step in done:
            continue
        folder = path if step == 0 else export_checkpoint(path, cfg.model.init, os.path.join(args.run, "models", f"step-{step:08d}"))
        row = {"step": step, "samples": step * samples_per_step, **evaluate_model(_predictor(folder, args.oracle, records, args.oracle_parent), args.data, args.limit, args.caption_images)}
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    rows = sorted((json.loads(line) for line in open(out_path)), key=lambda r: r["step"]) if os.path.isfile(out_path) else []
    print(json.dumps({"samples_needed": extrapolation(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
