"""Speed of the bundled model on this machine: cold CLI, warm latency breakdown, wrapper
overhead, and scaling with boxes and image size.

    .venv/bin/python benchmarks/speed.py --runs 7 --json-out runs/bench/speed.json

Every figure is the median of ``--runs`` timed runs after one warm-up, in one process (the
cold CLI is timed as a subprocess). Ratios compare two measurements taken in the same process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image
from report import emit  # benchmarks/report.py, next to this script
from transformers import AutoModelForCausalLM

from chatrex import ChatRexPredictor
from chatrex.text import prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "scene1.png")


def median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold_cli(runs: int) -> float:
    cmd = [os.path.join(os.path.dirname(sys.executable), "chatrex"), "detect", EXAMPLE, "boat", "--json"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def breakdown(p: ChatRexPredictor, image: Image.Image, runs: int) -> dict:
    """Seconds per component for one image and one detection question."""
    m = p.model.model
    ip = p.processor.image_processor
    low, high, meta = ip.preprocess(image)
    props = p.propose(image)
    boxes = ip.normalize_boxes(props.boxes.numpy(), meta)
    out = {"boxes": len(boxes)}
    with torch.inference_mode():
        out["upn_s"] = median_time(lambda: p.propose(image), runs)
        out["preprocess_s"] = median_time(lambda: ip.preprocess(image), runs)
        out["vision_low_s"] = median_time(lambda: m.vision_low(low[None], output_hidden_states=True), runs)
        out["vision_high_s"] = median_time(lambda: m.vision_high(high[None], output_hidden_states=True), runs)
        feats = m.get_image_features(low[None], high[None])
        # The projectors timed on their own, on their real inputs: the fused CLIP + ConvNeXt tokens
        # (B, grid², C_low + C_last) and this image's pooled box features (K, C_obj). Subtracting the
        # towers' medians from get_image_features' (separate runs) went negative: the projector
        # costs less than the runs' spread.
        fused, stages = m.encode_image(low[None], high[None])
        pooled = m.object_encoder([s.float() for s in stages], [boxes])
        out["image_projector_s"] = median_time(lambda: m.project_image(fused), runs)
        out["object_projector_s"] = median_time(lambda: m.project_objects(pooled), runs)
        out["projector_s"] = median_time(lambda: (m.project_image(fused), m.project_objects(pooled)), runs)
        out["object_encoder_s"] = median_time(lambda: m.get_object_features(feats.high_res_features, [boxes]), runs)
        objects = m.get_object_features(feats.high_res_features, [boxes])
        question = prompts.DETECTION["category"][0].format(phrase="boat")
        ids, _ = p.processor.encode_sample([{"role": "user", "content": question}], num_boxes=len(boxes), has_image=True, add_generation_prompt=True)
        input_ids = torch.tensor([ids])
        out["prompt_tokens"] = len(ids)
        out["prefill_s"] = median_time(lambda: p.model(input_ids=input_ids, image_features=feats, object_features=objects, logits_to_keep=1), runs)
        n_new = 32

        def gen(k):
            return p.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), image_features=feats, object_features=objects,
                                    max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=p.processor.tokenizer.pad_token_id)

        t_full = median_time(lambda: gen(n_new), runs)
        t_one = median_time(lambda: gen(1), runs)
        out["decode_tokens_per_s"] = (n_new - 1) / (t_full - t_one)
    p.set_image(image)
    out["set_image_s"] = median_time(lambda: (p._recent.clear(), p.set_image(image)), runs)
    out["detect_warm_s"] = median_time(lambda: p.detect("boat"), runs)
    return out


def wrapper_overhead(p: ChatRexPredictor, n_tokens: int, runs: int) -> dict:
    """ChatRex forward/generate vs a plain causal LM with the same weights, same sequence
    length, the plain model given ``inputs_embeds`` (the visual features already merged)."""
    model = p.model
    cfg = model.config
    plain = AutoModelForCausalLM.from_config(cfg.text_config)
    state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in model.lm_head.state_dict().items()})
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    plain.eval()
    image = Image.open(EXAMPLE).convert("RGB")
    p.set_image(image)
    cache = p._cache
    k = len(cache.boxes)
    prefix = p.processor.encode_sample([{"role": "user", "content": "x"}], num_boxes=k, has_image=True, add_generation_prompt=True)[0]
    filler = p.processor.tokenizer(" the red car", add_special_tokens=False)["input_ids"]
    ids = (prefix + filler * n_tokens)[:n_tokens] if n_tokens >= len(prefix) else None
    if ids is None:
        raise ValueError(f"--tokens must be at least the visual prefix length {len(prefix)}")
    input_ids = torch.tensor([ids])
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=p.processor.tokenizer.pad_token_id)
    with torch.inference_mode():
        # Reference features (config.object_reference_features) are part of the merged input.
        memory = model.model.object_memory(input_ids, cache.object_features, 1) if cfg.object_reference_features else None
        embeds = model.model.merge_embeddings(input_ids, model.get_input_embeddings()(input_ids), cache.features.image_embeds, cache.object_features,
                                              object_memory=memory)
        a = model(input_ids=input_ids, image_features=cache.features, object_features=cache.object_features).logits
        b = plain(inputs_embeds=embeds).logits
        # The pointer head replaces the <objK> columns; every other column must be identical.
        keep = torch.ones(a.shape[-1], dtype=torch.bool)
        if model.object_pointer is not None:
            keep[cfg.object_token_ids] = False
        max_diff = float((a[..., keep] - b[..., keep]).abs().max())

        def timings() -> tuple[float, float]:
            fwd = median_time(lambda: model(input_ids=input_ids, image_features=cache.features, object_features=cache.object_features), runs)
            gen = median_time(lambda: model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), image_features=cache.features,
                                                     object_features=cache.object_features, **kw), runs)
            return fwd, gen

        t_wrap, g_wrap = timings()
        t_plain = median_time(lambda: plain(inputs_embeds=embeds), runs)
        g_plain = median_time(lambda: plain.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids), **kw), runs)
        result = {"tokens": n_tokens, "logits_max_abs_diff": max_diff, "forward_chatrex_s": t_wrap, "forward_plain_s": t_plain,
                  "forward_ratio": t_wrap / t_plain, "generate16_chatrex_s": g_wrap, "generate16_plain_s": g_plain, "generate_ratio": g_wrap / g_plain}
        if model.object_pointer is not None:
            # The wrapper alone: the same model with the pointer head detached (its logits are then
            # the LM head's), to separate wrapper cost from the head's own compute.
            head, model.object_pointer = model.object_pointer, None
            try:
                t_bare, g_bare = timings()
            finally:
                model.object_pointer = head
            result.update(forward_ratio_without_pointer=t_bare / t_plain, generate_ratio_without_pointer=g_bare / g_plain)
    return result


def scaling(p: ChatRexPredictor, runs: int) -> dict:
    image = Image.open(EXAMPLE).convert("RGB")
    rng = np.random.default_rng(0)
    by_boxes = {}
    for k in (10, 50, 100):
        xy = rng.uniform(0, image.width - 40, (k, 2))
        wh = rng.uniform(10, 40, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        p.set_image(image, boxes=boxes)
        by_boxes[k] = median_time(lambda: p.detect("boat"), runs)
    by_size, upn_by_size = {}, {}
    for side in (256, 512, 1024, 2048):
        im = image.resize((side, side))
        by_size[side] = median_time(lambda: (p._recent.clear(), p.set_image(im)), max(3, runs // 2))
        upn_by_size[side] = median_time(lambda: p.propose(im), max(3, runs // 2))
    return {"detect_s_by_boxes": by_boxes, "set_image_s_by_side": by_size, "upn_s_by_side": upn_by_size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="chatrex-tiny")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512, help="sequence length for the wrapper-overhead comparison")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"}
    if not args.skip_cold:
        result["cold_cli_detect_s"] = cold_cli(max(3, args.runs // 2))
    p = ChatRexPredictor.from_pretrained(args.model)
    image = Image.open(EXAMPLE).convert("RGB")
    result["breakdown"] = breakdown(p, image, args.runs)
    result["wrapper"] = wrapper_overhead(p, args.tokens, args.runs)
    result["scaling"] = scaling(p, args.runs)
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
