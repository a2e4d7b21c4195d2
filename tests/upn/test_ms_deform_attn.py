import math

import torch

from upn import MultiScaleDeformableAttention, multi_scale_deformable_attention


def naive_bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (D, H, W); (x, y) normalised in [0, 1]; align_corners=False; zeros outside."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=torch.float64)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        wx = 1 - abs(px - xi)
        wy = 1 - abs(py - yi)
        if 0 <= xi < w and 0 <= yi < h:
            out += wx * wy * img[:, yi, xi].double()
    return out


def test_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    n, m, d, lq, p = 2, 2, 3, 4, 3
    shapes = torch.tensor([[6, 5], [3, 4], [2, 2]], dtype=torch.int64)
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(n, s, m, d, generator=g)
    # Range slightly beyond [0, 1] so the zero-padding border is exercised.
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(n, lq, m, len(shapes), p, generator=g)
    out = multi_scale_deformable_attention(value, shapes, loc, attn)
    assert out.shape == (n, lq, m * d)

    starts = [0] + torch.cumsum(shapes[:, 0] * shapes[:, 1], 0).tolist()
    ref = torch.zeros(n, lq, m, d, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for lvl, (hh, ww) in enumerate(shapes.tolist()):
                    img = value[b, starts[lvl]:starts[lvl + 1], h].T.reshape(d, hh, ww)
                    for k in range(p):
                        x, y = loc[b, q, h, lvl, k].tolist()
                        ref[b, q, h] += attn[b, q, h, lvl, k].double() * naive_bilinear(img, x, y)
    err = (out.double() - ref.reshape(n, lq, m * d)).abs().max().item()
    assert err < 1e-5, err


def test_module_shapes_and_grad():
    mod = MultiScaleDeformableAttention(d_model=16, num_levels=2, num_heads=2, num_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    value = torch.randn(1, 20, 16, requires_grad=True)
    query = torch.randn(1, 5, 16)
    for ref in (torch.rand(1, 5, 2, 2), torch.rand(1, 5, 2, 4)):
        out = mod(query, ref, value, shapes)
        assert out.shape == (1, 5, 16)
        out.sum().backward()
    assert value.grad is not None and torch.isfinite(value.grad).all()
