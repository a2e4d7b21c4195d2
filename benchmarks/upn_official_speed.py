"""Full-size UPN on CPU, ours vs the official code's pure-PyTorch path, same weights, same process.

Both models hold the same synthetic weights (``chatrex.convert.upn.synthetic_official_state``,
converted for ours with ``chatrex.convert.upn``), see the same 800-px photo (official preprocessing for the official
model, ``upn.image_processing.preprocess`` for ours: identical tensors) and run one
prompt per forward (encoder + decoder) under ``torch.inference_mode``. Reported: median
wall time over ``--runs`` timed runs after one warm-up, and peak extra resident memory
during a run (RSS sampled every 5 ms, minus the RSS before the run).

Needs the official code and mmengine/timm, like tools/oracle/make_upn_fixture.py::

    /work/scratch/oracle-venv/bin/python benchmarks/upn_official_speed.py \\
        --official-root /work/scratch/chatrex_official --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "oracle"))
import make_upn_fixture as oracle  # noqa: E402  (imports the official code first: both have a `chatrex`)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, runs: int) -> dict:
    """Median seconds and peak extra RSS (MiB) of ``fn()`` over ``runs`` runs after a warm-up."""
    fn()
    times, peaks = [], []
    for _ in range(runs):
        base, peak, stop = rss_bytes(), [0], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        stop.set()
        sampler.join()
        peaks.append((max(peak[0], rss_bytes()) - base) / 2**20)
    return {"median_s": statistics.median(times), "runs_s": [round(t, 2) for t in times],
            "peak_extra_rss_mib": round(max(peaks), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", choices=["fine", "coarse"], default="fine")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = os.path.abspath(args.official_root)
    converter = oracle.import_converter()  # as ours_chatrex: both packages are called chatrex
    official = oracle.import_official(root)
    from PIL import Image

    import chatrex.upn.transforms.transform as T
    from chatrex.upn.models.module import nested_tensor_from_tensor_list
    from upn import UPNModel
    from upn.image_processing import preprocess

    preset = oracle.PRESETS["full"]
    off_model, _ = oracle.build_official(official, converter, root, preset)
    off_state = off_model.state_dict()
    config = converter.infer_config(off_state)
    ours = UPNModel(config)
    ours.load_state_dict(converter.official_to_ours(off_state, config), strict=True)  # keys checked by the converter
    ours.eval()
    image = Image.open(oracle.photo_path()).convert("RGB")
    transform = T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    samples = nested_tensor_from_tensor_list([transform(image, None)[0]])
    pixels = preprocess(image, config.image)[0][None]
    assert torch.equal(pixels, samples.tensors), "the two preprocessing paths must give the same tensor"

    def run_official():
        with torch.inference_mode():
            off_model(samples, oracle.PROMPTS[args.prompt])

    def run_ours():
        with torch.inference_mode():
            ours.decode(ours.encode(pixels), args.prompt)

    result = {"input_hw": list(pixels.shape[-2:]), "threads": args.threads, "prompt": args.prompt,
              "torch": torch.__version__, "official": measure(run_official, args.runs), "ours": measure(run_ours, args.runs)}
    result["speedup_official_over_ours"] = round(result["official"]["median_s"] / result["ours"]["median_s"], 2)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
