"""UPN forward-pass speed (and deformable-attention accuracy) on this machine.

    PYTHONPATH=. python benchmarks/upn_forward.py --preset upn-tiny --size 512 --runs 10

Prints one JSON line: parameter count, median / min forward seconds over
``--runs`` timed runs (after 2 warm-up runs), and the max abs error of
``multi_scale_deformable_attention`` (float32) against a float64 per-point
bilinear loop on random inputs.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from upn import UPNModel, get_config, multi_scale_deformable_attention


def attention_reference_error(seed: int = 0) -> float:
    """Max |fast - naive| over 3 levels, 4 points, 2 heads, locations partly outside the maps."""
    g = torch.Generator().manual_seed(seed)
    n, m, d, lq, p = 2, 2, 8, 16, 4
    shapes = torch.tensor([[12, 9], [6, 5], [3, 3]])
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(n, s, m, d, generator=g)
    loc = torch.rand(n, lq, m, 3, p, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(n, lq, m, 3, p, generator=g).softmax(-1)
    fast = multi_scale_deformable_attention(value, shapes, loc, attn).double()
    ref = torch.zeros(n, lq, m, d, dtype=torch.float64)
    start = 0
    for lvl, (h, w) in enumerate(shapes.tolist()):
        v = value[:, start:start + h * w].double()
        start += h * w
        for b in range(n):
            for q in range(lq):
                for head in range(m):
                    img = v[b, :, head].T.reshape(d, h, w)
                    for k in range(p):
                        x = loc[b, q, head, lvl, k, 0].item() * w - 0.5
                        y = loc[b, q, head, lvl, k, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xi < w and 0 <= yi < h:
                                wgt = (1 - abs(x - xi)) * (1 - abs(y - yi)) * attn[b, q, head, lvl, k].item()
                                ref[b, q, head] += wgt * img[:, yi, xi]
    return (fast - ref.reshape(n, lq, m * d)).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="upn-tiny")
    ap.add_argument("--size", type=int, default=512, help="square input side in pixels")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="fine", choices=["fine", "coarse"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UPNModel(get_config(args.preset)).eval()
    x = torch.randn(1, 3, args.size, args.size)
    times = []
    with torch.inference_mode():
        for i in range(args.runs + 2):
            t0 = time.perf_counter()
            model(x, args.prompt)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    print(json.dumps({
        "preset": args.preset, "input": f"1x3x{args.size}x{args.size}", "threads": args.threads,
        "params": model.num_parameters(), "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4), "runs": args.runs, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "deform_attn_max_abs_err": attention_reference_error(),
    }))


if __name__ == "__main__":
    main()
