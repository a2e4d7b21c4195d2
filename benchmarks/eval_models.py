"""Evaluate several ChatRex folders on several tasks and splits at once, one process per job.

    python benchmarks/eval_models.py --models runs/gpu/pointer/final runs/gpu/paper/final \\
        --data data/synth/test data/synth/heldout --tasks detection referring region grounded_caption \\
        --limit 500 --device cuda --jobs 12 --out runs/gpu/eval.json

Each (model, split, task) runs in its own process with one CPU thread, so a machine with many
cores (or one GPU shared by many small models) evaluates them side by side. Per-image query
caps are the model card's (detection 4, referring 3, region 5). Results: one JSON object
``{model: {split: {task: metrics}}}``, written atomically, plus a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from chatrex.utils.atomic import atomic_write

PER_IMAGE = {"detection": 4, "referring": 3, "region": 5, "grounded_caption": None, "proposals": None}


def _job(model: str, data: str, task: str, limit: int | None, device: str) -> tuple[str, str, str, dict]:
    import torch

    torch.set_num_threads(1)
    from chatrex.evaluation.runner import evaluate

    table = evaluate(model, data, task, limit=limit, progress=False, per_image=PER_IMAGE[task], device=device)
    return model, data, task, table.metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="bundled names or model folders")
    p.add_argument("--data", nargs="+", required=True, help="folders with records.jsonl")
    p.add_argument("--tasks", nargs="+", default=["detection", "referring", "region", "grounded_caption"], choices=sorted(PER_IMAGE))
    p.add_argument("--limit", type=int, help="images per split (default: all)")
    p.add_argument("--caption-limit", type=int, help="images per split for grounded_caption (long answers; default: --limit)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    results: dict = {}
    jobs = [(m, d, t, args.caption_limit if t == "grounded_caption" and args.caption_limit else args.limit, args.device)
            for m in args.models for d in args.data for t in args.tasks]
    # Long jobs first, so the pool does not end with one straggler.
    jobs.sort(key=lambda j: j[2] != "grounded_caption")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, *j) for j in jobs]
        for future in as_completed(futures):
            model, data, task, metrics = future.result()
            results.setdefault(model, {}).setdefault(os.path.basename(data.rstrip("/")), {})[task] = metrics
            print(f"{model} {data} {task}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()), flush=True)
            with atomic_write(args.out) as f:  # partial results survive a timeout
                json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
