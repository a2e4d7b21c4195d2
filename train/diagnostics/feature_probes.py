"""``python -m train.diagnostics.feature_probes``: can a linear layer read an attribute from the
object features?

For every whole object (coarse region) of the records, the ground-truth box is ROI-aligned on
the fused ConvNeXt stages exactly as the object encoder does, and the 7x7 grid is reduced in
several ways:

* ``encoder``: what the LLM side receives before the object projector (the model's own
  pooling, position embedding included);
* ``projected``: after the object projector, in the LLM's width;
* ``mean``, ``max``, ``mean+max``, ``mean+std``: other reductions of the same grid, to tell a
  backbone that never saw the attribute from a pooling that throws it away.

A multinomial logistic regression per attribute (category, colour, pattern, size) is fitted on
the training records' objects and scored on the test records'. The majority-class rate of the
test objects is reported beside it: a probe at or below it means the attribute is not there.

Example::

    python -m train.diagnostics.feature_probes --model chatrex-tiny \\
        --train data/synth/train/records.jsonl --test data/synth/test/records.jsonl \\
        --train-images 400 --test-images 150 --out runs/diagnostics/probes.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from tqdm.auto import tqdm

ATTRIBUTES = ("category", "color", "pattern", "size")
REDUCTIONS = ("encoder", "projected", "mean", "max", "mean+max", "mean+std")


def object_labels(region: dict) -> dict[str, str | None]:
    attrs = region.get("attributes") or {}
    return {"category": region["category"], **{a: attrs.get(a) for a in ATTRIBUTES[1:]}}


@torch.no_grad()
def record_features(model, processor, image, boxes) -> dict[str, torch.Tensor]:
    """Each reduction's (K, D) features for ``boxes`` (pixel xyxy, (K, 4)) of ``image``."""
    ip = processor.image_processor
    low, high, meta = ip.preprocess(image)
    norm = ip.normalize_boxes(boxes, meta)
    inner = model.model
    _, stages = inner.encode_image(low[None], high[None])
    stages = [s.float() for s in stages]
    enc = inner.object_encoder
    encoder = enc(stages, [norm])[0]
    fused = enc.fuse_levels(stages)
    size = enc.image_size or fused.shape[-1]
    grid = roi_align(fused, [norm * size], output_size=enc.output_size, spatial_scale=fused.shape[-1] / size,
                     sampling_ratio=enc.sampling_ratio, aligned=enc.aligned).flatten(2)  # (K, C, cells)
    mean, mx, std = grid.mean(2), grid.amax(2), grid.std(2)
    return {"encoder": encoder, "projected": inner.project_objects([encoder])[0].float(), "mean": mean, "max": mx,
            "mean+max": torch.cat((mean, mx), 1), "mean+std": torch.cat((mean, std), 1)}


def collect(model, processor, records, reductions=REDUCTIONS, progress: bool = True):
    """``({reduction: (N, D)}, [labels per object])`` over the whole objects of ``records``."""
    from chatrex.image_processing_chatrex import load_image

    feats: dict[str, list[torch.Tensor]] = {r: [] for r in reductions}
    labels: list[dict] = []
    for rec in tqdm(records, desc="features", disable=not progress):
        wholes = [r for r in rec.get("regions", []) if r.get("granularity", "coarse") == "coarse"]
        if not wholes:
            continue
        out = record_features(model, processor, load_image(rec["image"]), [r["box"] for r in wholes])
        for r in reductions:
            feats[r].append(out[r])
        labels.extend(object_labels(r) for r in wholes)
    return {r: torch.cat(v) for r, v in feats.items()}, labels


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, steps: int = 200) -> torch.nn.Linear:
    """L2-regularised multinomial logistic regression by L-BFGS. (scikit-learn would do; it is not
    a dependency, and on a few thousand rows this is as fast.)"""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def probe(train_x, train_y: list, test_x, test_y: list, l2_grid=(1e-4, 1e-3, 1e-2)) -> dict:
    """Test accuracy of the best-L2 probe (chosen on a fifth of the training rows), and the
    test majority rate. Labels are strings; ``None`` rows are dropped."""
    keep_tr = [i for i, v in enumerate(train_y) if v is not None]
    keep_te = [i for i, v in enumerate(test_y) if v is not None and v in set(train_y)]
    classes = sorted({train_y[i] for i in keep_tr})
    if len(classes) < 2 or not keep_te:
        # Nothing to tell apart (or nothing to score): an attribute the records do not carry.
        return {"accuracy": None, "majority": None, "classes": len(classes), "train": len(keep_tr), "test": len(keep_te), "l2": None}
    index = {c: k for k, c in enumerate(classes)}
    xtr, xte = train_x[keep_tr], test_x[keep_te]
    ytr = torch.tensor([index[train_y[i]] for i in keep_tr])
    yte = torch.tensor([index[test_y[i]] for i in keep_te])
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    cut = len(xtr) * 4 // 5
    best = max(l2_grid, key=lambda l2: (fit_probe(xtr[:cut], ytr[:cut], len(classes), l2)(xtr[cut:]).argmax(1) == ytr[cut:]).float().mean().item())
    head = fit_probe(xtr, ytr, len(classes), best)
    with torch.no_grad():
        acc = (head(xte).argmax(1) == yte).float().mean().item()
    majority = Counter(yte.tolist()).most_common(1)[0][1] / len(yte)
    return {"accuracy": round(acc, 4), "majority": round(majority, 4), "classes": len(classes), "train": len(xtr), "test": len(xte), "l2": best}


def run(model, processor, train_records, test_records, reductions=REDUCTIONS, progress: bool = True) -> dict:
    """``{reduction: {attribute: probe result}}``."""
    tr_x, tr_labels = collect(model, processor, train_records, reductions, progress)
    te_x, te_labels = collect(model, processor, test_records, reductions, progress)
    out = {}
    for r in reductions:
        out[r] = {a: probe(tr_x[r], [lab[a] for lab in tr_labels], te_x[r], [lab[a] for lab in te_labels]) for a in ATTRIBUTES}
    return out


def format_table(results: dict) -> str:
    """Markdown: one row per reduction, test accuracy with the majority rate beside it."""
    lines = ["Linear-probe accuracy on the test objects (in brackets: the majority-class rate; at or below it, "
             "the attribute cannot be read from these features)", "",
             "| features | " + " | ".join(ATTRIBUTES) + " |", "|---|" + "---|" * len(ATTRIBUTES)]
    for r, row in results.items():
        cells = ["-" if row[a]["accuracy"] is None else f"{row[a]['accuracy']:.3f} (maj. {row[a]['majority']:.2f})" for a in ATTRIBUTES]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.diagnostics.feature_probes", description=__doc__.split("\n\n")[0],
                                epilog="Example::" + __doc__.split("Example::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chatrex-tiny", help="bundled model name or ChatRex folder (default chatrex-tiny)")
    p.add_argument("--train", required=True, help="records (a records.jsonl or a folder holding one) the probes are fitted on")
    p.add_argument("--test", required=True, help="records the probes are scored on (other images than --train)")
    p.add_argument("--train-images", type=int, default=400, help="use the first N training images (default 400)")
    p.add_argument("--test-images", type=int, default=150, help="use the first N test images (default 150)")
    p.add_argument("--reductions", default=",".join(REDUCTIONS),
                   help="comma-separated feature rows (default: all): encoder = what the object projector receives; projected = after it; "
                        "mean, max, mean+max, mean+std = other poolings of the same ROI grid")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    reductions = [r.strip() for r in args.reductions.split(",") if r.strip()]
    bad = [r for r in reductions if r not in REDUCTIONS]
    if bad:
        p.error(f"unknown reduction(s) {bad}; choose from {list(REDUCTIONS)}")
    for name in ("train_images", "test_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from chatrex.evaluation.data_sources import missing_records_message, records_file

    for path in (args.train, args.test):
        if not os.path.isfile(records_file(path)):
            p.error(missing_records_message(path, eval_command=False))
    args.train, args.test = records_file(args.train), records_file(args.test)
    from chatrex.utils.jsonl import JsonlRecords

    from ..model_loading import load_model_and_processor

    try:
        model, processor = load_model_and_processor(args.model, None)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model.eval()
    def first(path: str, n: int) -> list[dict]:
        records = JsonlRecords([path])
        return [records[i] for i in range(min(n, len(records)))]

    results = run(model, processor, first(args.train, args.train_images), first(args.test, args.test_images), reductions)
    print(format_table(results))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "train": args.train, "test": args.test, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
