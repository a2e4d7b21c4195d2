"""Hardware table of README.md: ``chatrex-7b`` with random weights in bf16 on this machine.

    .venv/bin/python -m benchmarks.hardware_7b --tokenizer QWEN2.5_TOKENIZER_DIR [--limit-s 840]

Measures building the model (random init, straight in bf16), peak RSS, ``set_image`` (CLIP-L
at 336 px + ConvNeXt-L at 768 px + 100 boxes), the prefill of a detection prompt and decode
tokens/s. A watchdog stops the run cleanly (one JSON line per finished step, then the reason)
when free memory falls under ``--min-free-gb`` or the time limit passes, so a machine too small
for the model reports where it fails instead of swapping or taking down other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _report(**fields) -> None:
    print(json.dumps({**fields, "peak_rss_gb": round(_peak_rss_gb(), 2), "available_gb": round(_available_gb(), 2)}), flush=True)


def _watchdog(min_free_gb: float, limit_s: float, stage: dict) -> None:
    start = time.time()
    while True:
        time.sleep(0.5)
        if _available_gb() < min_free_gb or time.time() - start > limit_s:
            why = "memory" if _available_gb() < min_free_gb else "time limit"
            _report(stopped=why, during=stage["name"], elapsed_s=round(time.time() - start, 1))
            os._exit(3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a Qwen2.5 tokenizer folder (151,665 tokens)")
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--decode-tokens", type=int, default=4)
    parser.add_argument("--min-free-gb", type=float, default=1.5)
    parser.add_argument("--limit-s", type=float, default=840)
    args = parser.parse_args(argv)
    stage = {"name": "imports"}
    threading.Thread(target=_watchdog, args=(args.min_free_gb, args.limit_s, stage), daemon=True).start()

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoTokenizer

    from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
    from chatrex.predictor import ChatRexPredictor
    from chatrex.text import prompts

    _report(step="start", threads=torch.get_num_threads())
    stage["name"] = "build (random init, bf16)"
    t = time.time()
    torch.set_default_dtype(torch.bfloat16)  # parameters are born bf16: no fp32 copy
    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-7b")).eval()
    torch.set_default_dtype(torch.float32)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model.attach_tokenizer(tok)
    processor = ChatRexProcessor.from_model_config(model.config, tok)
    _report(step="build", seconds=round(time.time() - t, 1), params=sum(p.numel() for p in model.parameters()),
            vocab=model.config.text_config.vocab_size)

    stage["name"] = "set_image"
    predictor = ChatRexPredictor(model, processor, max_new_tokens=args.decode_tokens)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(768, 1024, 3), dtype=np.uint8))
    xy = rng.uniform(0, 700, size=(args.boxes, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 300, size=(args.boxes, 2))], axis=1)
    t = time.time()
    predictor.set_image(image, boxes=boxes)
    _report(step="set_image", seconds=round(time.time() - t, 1), boxes=args.boxes)

    stage["name"] = "prefill"
    question = prompts.DETECTION["category"][0].format(phrase="car")
    ids, _ = processor.encode_sample([{"role": "user", "content": question}], num_boxes=args.boxes, has_image=True, add_generation_prompt=True)
    input_ids = torch.tensor([ids])
    cache = predictor._require()
    with torch.inference_mode():
        t = time.time()
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), image_features=cache.features,
                    object_features=cache.object_features, use_cache=True, logits_to_keep=1)
        _report(step="prefill", seconds=round(time.time() - t, 1), prompt_tokens=len(ids))
        stage["name"] = "decode"
        past, mask, token = out.cache, torch.ones(1, len(ids) + args.decode_tokens, dtype=torch.long), out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.time()
        for i in range(args.decode_tokens):
            out = model(input_ids=token, attention_mask=mask[:, : len(ids) + i + 1], cache=past, use_cache=True)
            past, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        dt = time.time() - t
        _report(step="decode", tokens=args.decode_tokens, seconds=round(dt, 1), tokens_per_s=round(args.decode_tokens / dt, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
