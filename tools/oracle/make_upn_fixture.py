"""Run the OFFICIAL UPN code on CPU and record its outputs as a reference fixture.

Nothing official is copied into this repo: the script imports the official code from
the folder given on the command line (a snapshot of IDEA-Research/ChatRex, commit
b98028c), fills the official model with weights generated from each key's name
(``chatrex.convert.upn.synthetic_official_state``), runs a real photo through the official preprocessing,
model, ``UPNWrapper.postprocess`` and ``UPNWrapper.filter``, and writes only the
outputs (``expected.npz`` + ``meta.json``) that ``tests/upn/test_official_parity.py``
compares against.

The official deformable attention always calls a CUDA extension. As the official
repo's own test does (``ops/test.py``), we run its pure-PyTorch reference
``ms_deform_attn_core_pytorch`` instead: a placeholder ``MultiScaleDeformableAttention``
module satisfies the import and ``MSDeformAttnFunction`` is pointed at the reference
function (official_chatrex.md section C.1). This happens only inside this script's process.

Run it in a separate venv that has mmengine and timm (see docs/upn.md)::

    /work/scratch/oracle-venv/bin/python tools/oracle/make_upn_fixture.py \\
        --official-root /work/scratch/chatrex_official --preset ci --out tests/fixtures/upn_official
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ci: a reduced official config (Swin-T, 3+3 layers, 300 queries, 320 px) that our side runs
# in seconds; full: the shipped upn_large.py (Swin-L 384, 6+6 layers, 900 queries) at 800 px.
PRESETS = {
    "ci": dict(backbone="swin_T_224_1k", layers=3, queries=300, short_side=320, max_size=480),
    "full": dict(backbone="swin_L_384_22k", layers=6, queries=900, short_side=800, max_size=1333),
}
PROMPTS = {"fine": "fine_grained_prompt", "coarse": "coarse_grained_prompt"}


def photo_path() -> str:
    """A real photograph shipped by a registry package the project depends on (gradio)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        raise SystemExit("gradio is not installed: it ships the test photo media_assets/images/cheetah.jpg")
    return os.path.join(os.path.dirname(spec.origin), "media_assets", "images", "cheetah.jpg")


def import_converter():
    """Our ``chatrex.convert.upn`` (the synthetic weights and the converter), imported as
    ``ours_chatrex.convert.upn``: the official package is also called ``chatrex`` (a namespace
    package, which a regular ``chatrex`` on ``sys.path`` would shadow) and keeps that name."""
    folder = os.path.join(REPO, "chatrex")
    spec = importlib.util.spec_from_file_location("ours_chatrex", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["ours_chatrex"] = package
    spec.loader.exec_module(package)
    sys.path.insert(0, REPO)  # for our top-level ``upn``, which the converter imports
    try:
        return importlib.import_module("ours_chatrex.convert.upn")
    finally:
        sys.path.remove(REPO)


def import_official(root: str):
    """Import the official package from ``root`` with the CPU attention path."""
    if not os.path.isdir(os.path.join(root, "chatrex", "upn")):
        raise SystemExit(f"{root} has no chatrex/upn folder (expected an IDEA-Research/ChatRex snapshot)")
    # The compiled extension is only needed by the CUDA path, which is never called here.
    sys.modules["MultiScaleDeformableAttention"] = types.ModuleType("MultiScaleDeformableAttention")
    sys.path.insert(0, root)
    import chatrex.upn as official
    from chatrex.upn.ops.functions import ms_deform_attn_func
    from chatrex.upn.ops.modules import ms_deform_attn

    class ReferenceFunction:
        @staticmethod
        def apply(value, shapes, level_start_index, locations, weights, im2col_step):
            return ms_deform_attn_func.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    ms_deform_attn.MSDeformAttnFunction = ReferenceFunction
    sys.path.remove(root)
    # Our ``upn`` stays importable (benchmarks/upn_official_speed.py uses it), after the official package.
    sys.path.append(REPO)
    return official


def build_official(official, converter, root: str, preset: dict):
    from mmengine import Config

    cfg = Config.fromfile(os.path.join(root, "chatrex", "upn", "configs", "upn_large.py")).model
    cfg.vision_backbone_cfg.backbone_cfg = preset["backbone"]
    cfg.transformer_cfg.encoder_cfg.num_layers = preset["layers"]
    cfg.transformer_cfg.decoder_cfg.num_layers = preset["layers"]
    cfg.transformer_cfg.num_queries = cfg.num_queries = preset["queries"]
    model = official.build_architecture(cfg).eval()
    state = model.state_dict()
    weights = converter.synthetic_official_state({k: tuple(v.shape) for k, v in state.items()})
    for k, v in state.items():  # relative_position_index buffers stay as the official code built them
        weights.setdefault(k, v)
    model.load_state_dict(weights, strict=True)
    return model, {k: list(v.shape) for k, v in state.items()}


def run_official(official, model, image, preset: dict, threads: int) -> dict:
    """Outputs for both prompts with ``threads`` intra-op threads."""
    import chatrex.upn.transforms.transform as T
    from chatrex.upn.models.module import nested_tensor_from_tensor_list

    torch.set_num_threads(threads)
    transform = T.Compose([T.RandomResize([preset["short_side"]], max_size=preset["max_size"]), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    pixels, _ = transform(image, None)
    samples = nested_tensor_from_tensor_list([pixels])
    captured = {}
    hooks = [model.transformer.enc_out_class_embed.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("enc", out.detach().clone())),
        # the selected queries' reference boxes (unsigmoided), to tell selection swaps from drift
        model.transformer.decoder.register_forward_pre_hook(
            lambda mod, args, kwargs: captured.__setitem__("refs", kwargs["refpoints_unsigmoid"][:, 0].sigmoid()),
            with_kwargs=True)]
    wrapper = official.UPNWrapper.__new__(official.UPNWrapper)  # its post-processing only (no CUDA)
    result = {"resized_hw": list(pixels.shape[-2:])}
    try:
        for name, prompt in PROMPTS.items():
            start = time.perf_counter()
            with torch.no_grad():
                out = model(samples, prompt)
            result[f"{name}_seconds"] = time.perf_counter() - start
            result[f"{name}_logits"] = out["pred_logits"][0, :, 0].clone().numpy()
            result[f"{name}_boxes"] = out["pred_boxes"][0].clone().numpy()
            result[f"{name}_enc_logits"] = captured["enc"][0, :, 0].numpy()
            result[f"{name}_refs"] = captured["refs"].numpy()
            # postprocess rewrites pred_boxes in place: give it copies.
            post = wrapper.postprocess({k: v.clone() for k, v in out.items() if torch.is_tensor(v)},
                                       [[image.height, image.width]])
            kept = wrapper.filter(copy.deepcopy(post), min_score=0.3, nms_value=0.8)
            boxes = kept["original_xyxy_boxes"][0] if kept["original_xyxy_boxes"] else []
            scores = kept["scores"][0] if kept["scores"] else []
            result[f"{name}_post_boxes"] = np.asarray(boxes, dtype=np.int32).reshape(-1, 4)
            result[f"{name}_post_scores"] = np.asarray(scores, dtype=np.float32)
    finally:
        for hook in hooks:
            hook.remove()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", required=True, help="folder with the official chatrex/upn code")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ci")
    parser.add_argument("--out", required=True, help="folder for expected.npz and meta.json")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    converter = import_converter()
    official = import_official(os.path.abspath(args.official_root))
    from PIL import Image

    image = Image.open(photo_path()).convert("RGB")
    torch.manual_seed(0)
    model, shapes = build_official(official, converter, os.path.abspath(args.official_root), preset)
    main_run = run_official(official, model, image, preset, threads=2)
    other = run_official(official, model, image, preset, threads=1)
    # The official code's own run-to-run difference when only the thread count changes.
    # A query whose selected reference box moved by more than 1e-3 was swapped for another
    # near-tied token (official_chatrex.md section F); the drift is measured on the others.
    drift = {}
    for name in PROMPTS:
        swapped = np.abs(main_run[f"{name}_refs"] - other[f"{name}_refs"]).max(-1) > 1e-3
        keep = ~swapped
        drift[name] = {
            "enc_logits": float(np.abs(main_run[f"{name}_enc_logits"] - other[f"{name}_enc_logits"]).max()),
            "logits_all": float(np.abs(main_run[f"{name}_logits"] - other[f"{name}_logits"]).max()),
            "boxes_all": float(np.abs(main_run[f"{name}_boxes"] - other[f"{name}_boxes"]).max()),
            "swapped_queries": int(swapped.sum()),
            "logits": float(np.abs(main_run[f"{name}_logits"] - other[f"{name}_logits"])[keep].max()),
            "boxes": float(np.abs(main_run[f"{name}_boxes"] - other[f"{name}_boxes"])[keep].max()),
        }
    os.makedirs(args.out, exist_ok=True)
    arrays = {k: v for k, v in main_run.items() if isinstance(v, np.ndarray)}
    np.savez_compressed(os.path.join(args.out, "expected.npz"), **arrays)
    try:
        commit = subprocess.run(["git", "-C", args.official_root, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "b98028c (git archive snapshot)"
    except OSError:
        commit = "b98028c (git archive snapshot)"
    meta = {
        "official_commit": commit, "preset": args.preset, **preset,
        "photo": "gradio/media_assets/images/cheetah.jpg", "photo_size_wh": list(image.size),
        "resized_hw": main_run["resized_hw"], "torch": torch.__version__,
        "official_seconds_2_threads": {n: round(main_run[f"{n}_seconds"], 2) for n in PROMPTS},
        "thread_drift_2_vs_1": drift, "official_state_shapes": shapes,
    }
    with open(os.path.join(args.out, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps({k: v for k, v in meta.items() if k != "official_state_shapes"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
