"""Optional compression of the fused visual tokens before the projector (``config.token_compression``).

The LLM's prefill cost grows with the number of visual tokens (576 at full size), while
detection-by-retrieval reads boxes from the object tokens, which are pooled from the feature
maps before any compression. So fewer image tokens should cost little accuracy. Three methods:

- ``avgpool2x2``: 2x2 average pooling on the token grid (G² -> (G/2)²), parameter-free.
- ``unshuffle_mlp``: pixel-unshuffle 2x2 neighbours into channels (C -> 4C) and an MLP back to
  C (as in InternVL / Qwen2-VL's merger); (G/2)² tokens, trainable.
- ``tome``: ToMe-style bipartite soft matching (Bolya et al. 2023), parameter-free: tokens are
  split alternately into two sets, each token of set A is linked to its most cosine-similar
  token of set B, and the ``r`` most similar links are merged by size-weighted averaging,
  repeated until ``keep`` tokens remain. Token order follows the surviving tokens' first grid
  position, so the sequence stays roughly raster-ordered.

All take and return (B, N, C) tensors; ``num_output_tokens(N)`` gives the output count, which the
processor uses to expand ``<image>``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("avgpool2x2", "unshuffle_mlp", "tome")


def _grid(n: int) -> int:
    side = math.isqrt(n)
    assert side * side == n, f"{n} visual tokens do not form a square grid"
    return side


class _HalveGrid(nn.Module):
    """Base of the 2x2 methods: (B, G², C) tokens as (B, C, G, G) maps; (G/2)² tokens out."""

    def num_output_tokens(self, n: int) -> int:
        return (_grid(n) // 2) ** 2

    @staticmethod
    def to_maps(tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        g = _grid(n)
        return tokens.transpose(1, 2).reshape(b, c, g, g)


class AvgPool2x2(_HalveGrid):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, G², C) -> (B, (G/2)², C)."""
        return F.avg_pool2d(self.to_maps(tokens), 2).flatten(2).transpose(1, 2)


class UnshuffleMLP(_HalveGrid):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(4 * dim), nn.Linear(4 * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, G², C) -> (B, (G/2)², C)."""
        return self.mlp(F.pixel_unshuffle(self.to_maps(tokens), 2).flatten(2).transpose(1, 2))


class BipartiteMerge(nn.Module):
    """ToMe merging down to ``keep`` tokens (parameter-free)."""

    def __init__(self, keep: int):
        super().__init__()
        if keep < 1:
            raise ValueError(f"token_compression_keep must be >= 1, got {keep}")
        self.keep = keep

    def num_output_tokens(self, n: int) -> int:
        return min(self.keep, n)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, keep, C)."""
        b, n, c = tokens.shape
        x = tokens
        size = tokens.new_ones(b, n, 1)
        order = torch.arange(n, device=tokens.device, dtype=torch.float32).expand(b, n)[..., None]  # first grid position
        while x.shape[1] > self.keep:
            m = x.shape[1]
            r = min(m - self.keep, m // 2)
            a, bb = x[:, 0::2], x[:, 1::2]
            sim = F.normalize(a, dim=-1) @ F.normalize(bb, dim=-1).transpose(1, 2)  # (B, |A|, |B|)
            best, target = sim.max(-1)
            rank = best.argsort(-1, descending=True)
            merged_idx, kept_idx = rank[:, :r], rank[:, r:]

            def take(t, idx):
                return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

            sa, sb = size[:, 0::2], size[:, 1::2]
            oa, ob = order[:, 0::2], order[:, 1::2]
            dst = target.gather(1, merged_idx)[..., None]
            # Size-weighted sums into set B, then normalise by the new sizes.
            wsum = (bb * sb).scatter_add(1, dst.expand(-1, -1, c), take(a * sa, merged_idx))
            new_sb = sb.scatter_add(1, dst, take(sa, merged_idx))
            new_ob = ob.scatter_reduce(1, dst, take(oa, merged_idx), reduce="amin")
            x = torch.cat([take(a, kept_idx), wsum / new_sb], 1)
            size = torch.cat([take(sa, kept_idx), new_sb], 1)
            order = torch.cat([take(oa, kept_idx), new_ob], 1)
            sort = order[..., 0].argsort(-1)
            x, size, order = take(x, sort), take(size, sort), take(order, sort)
        return x


def build_token_compression(method: str | None, dim: int, keep: int | None = None) -> nn.Module | None:
    """The compression module for ``method`` (``None``: no compression) over width ``dim``."""
    if method is None:
        return None
    if method == "avgpool2x2":
        return AvgPool2x2()
    if method == "unshuffle_mlp":
        return UnshuffleMLP(dim)
    if method == "tome":
        if keep is None:
            raise ValueError("token_compression='tome' needs token_compression_keep")
        return BipartiteMerge(keep)
    raise ValueError(f"token_compression must be None or one of {METHODS}, got {method!r}")
