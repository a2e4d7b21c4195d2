"""Deterministic weights generated from key names (no weights are stored or downloaded).

Used to compare this package with the official UPN code: ``tools/oracle/make_upn_fixture.py``
fills the official model with ``synthetic_official_state`` and records its outputs; the
tests regenerate the identical tensors from the same key names, convert them with
``upn.convert`` and compare. Each tensor is drawn from its own generator seeded with
the CRC32 of its (alias-resolved) name, so it depends on nothing but the name and shape.

Scales keep activations of the 24-block Swin and the 12 transformer layers finite and
spread: matrices N(0, 1/fan_in), 1-D weights (norms) 1 + N(0, 0.1) (not exactly 1, so a
swapped norm would be caught), biases N(0, 0.02), learned embeddings N(0, 1), the two
prompts N(0, 0.1) (scores spread over (0, 1) rather than saturating), Swin relative
position tables N(0, 0.02).
"""
from __future__ import annotations

import math
import zlib

import torch

from .convert import _box_canonical


def synthetic_tensor(name: str, shape: tuple) -> torch.Tensor:
    """float32 tensor of ``shape`` determined by ``name`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    x = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("fine_grained_prompt.weight", "coarse_grained_prompt.weight")):
        return x * 0.1
    if name.endswith(("level_embed", "tgt_embed.weight")):
        return x
    if name.endswith("relative_position_bias_table"):
        return x * 0.02
    if leaf == "bias":
        return x * 0.02
    if len(shape) == 1:
        return 1.0 + 0.1 * x
    fan_in = math.prod(shape[1:])
    return x / math.sqrt(fan_in)


def synthetic_official_state(shapes: dict, shared_box_head: bool = True) -> dict[str, torch.Tensor]:
    """Official key -> synthetic tensor for every key in ``shapes`` except the
    ``relative_position_index`` buffers (the caller keeps those). Aliases of the shared
    box head get the values of their canonical key, as in the official model."""
    out = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            continue
        canonical = _box_canonical(key, shared_box_head) or key
        out[key] = synthetic_tensor(canonical, tuple(shape))
    return out
