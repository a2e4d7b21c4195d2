"""Visual-token compression: tokens, prefill latency and (optionally) accuracy per method.

    .venv/bin/python benchmarks/compression.py --runs 9 --json-out runs/bench/compression.json
    .venv/bin/python benchmarks/compression.py --finetuned none=runs/compress/none/final avgpool2x2=runs/compress/avgpool2x2/final ... --eval-limit 100

Latency: the bundled model with ``token_compression`` switched on at load time (the
``unshuffle_mlp`` MLP is then untrained, which does not change its cost), median of ``--runs``
prefills (timed round-robin across methods) of a detection prompt on ``examples/scene1.png``, image features included (they are
where compression happens). Accuracy needs a fine-tuned model per method (``--finetuned
METHOD=FOLDER``, e.g. from ``train.chatrex`` with ``model.config_overrides``); it is measured
with ``chatrex eval`` on ``--eval-data``. Fine-tune ``none`` for the same steps too
(``--finetuned none=FOLDER``), so that every row has had the same training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from PIL import Image
from report import emit  # benchmarks/report.py, next to this script

from chatrex.evaluation.runner import evaluate
from chatrex.predictor import ChatRexPredictor, resolve_model_path
from chatrex.text import prompts

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "scene1.png")
METHODS = {"none": {}, "avgpool2x2": {"token_compression": "avgpool2x2"}, "unshuffle_mlp": {"token_compression": "unshuffle_mlp"},
           "tome": {"token_compression": "tome", "token_compression_keep": 36}}


def load(model: str, overrides: dict) -> ChatRexPredictor:
    from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor
    from upn import UPNPredictor

    path = resolve_model_path(model)
    m = ChatRexForConditionalGeneration.from_pretrained(path, dtype=torch.float32, **overrides).eval()
    proc = ChatRexProcessor.from_pretrained(path)
    proc.num_image_tokens = m.config.num_image_tokens
    upn = UPNPredictor.from_pretrained(path / "upn") if (path / "upn" / "config.json").is_file() else None
    return ChatRexPredictor(m, proc, upn)


def prefill_step(p: ChatRexPredictor):
    """(prompt tokens, a function that runs the encoders, object features and the LLM prefill of
    a detection prompt on scene1)."""
    image = Image.open(EXAMPLE).convert("RGB")
    ip = p.processor.image_processor
    low, high, meta = ip.preprocess(image)
    boxes = ip.normalize_boxes(p.propose(image).boxes.numpy(), meta)
    question = prompts.DETECTION["category"][0].format(phrase="boat")
    ids, _ = p.processor.encode_sample([{"role": "user", "content": question}], num_boxes=len(boxes), has_image=True, add_generation_prompt=True)
    x = torch.tensor([ids])

    def step():
        with torch.inference_mode():
            feats = p.model.get_image_features(low[None], high[None])
            objs = p.model.get_object_features(feats.high_res_features, [boxes])
            p.model(input_ids=x, image_features=feats, object_features=objs, logits_to_keep=1)

    return len(ids), step


def interleaved_medians(steps: dict, runs: int) -> dict[str, float]:
    """Median seconds per step, timing the steps round-robin so that drift in machine load
    (this CPU is shared) and warm-up hit every method alike."""
    for fn in steps.values():
        fn()
        fn()
    times = {name: [] for name in steps}
    for _ in range(runs):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="chatrex-tiny")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finetuned", nargs="*", default=[], metavar="METHOD=FOLDER")
    ap.add_argument("--eval-data", default="data/synth/test")
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--upn", help="UPN folder for the fine-tuned models (default: each folder's upn/, else --model's)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    finetuned = dict(item.split("=", 1) for item in args.finetuned)
    unknown = set(finetuned) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; known: {sorted(METHODS)}")
    predictors = {name: load(args.model, overrides) for name, overrides in METHODS.items()}
    prepared = {name: prefill_step(p) for name, p in predictors.items()}
    seconds = interleaved_medians({name: step for name, (_, step) in prepared.items()}, args.runs)
    result = {}
    for name, p in predictors.items():
        row = {"image_tokens": p.model.config.num_image_tokens, "prompt_tokens": prepared[name][0], "prefill_s": round(seconds[name], 4)}
        if name in finetuned or (name == "none" and finetuned):
            folder = resolve_model_path(finetuned.get(name, args.model))
            upn = args.upn or (None if (folder / "upn" / "config.json").is_file() else resolve_model_path(args.model) / "upn")
            pe = ChatRexPredictor.from_pretrained(folder, upn=upn)
            for task in ("detection", "referring"):
                table = evaluate("", args.eval_data, task, limit=args.eval_limit, predictor=pe, per_image=3, progress=False)
                row.update({f"{task}_{k}": v for k, v in table.metrics.items() if k in ("precision@0.5", "recall@0.5", "acc@0.5")})
        result[name] = row
    base = result["none"]["prefill_s"]
    for row in result.values():
        row["prefill_vs_none"] = round(row["prefill_s"] / base, 3)
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
