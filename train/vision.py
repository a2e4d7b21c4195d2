"""``python -m train.vision``: stage 0, pretrain the vision encoders on region labels.

The full-size ChatRex starts from CLIP and LAION ConvNeXt, pretrained on billions of images.
None can be downloaded here, so the tiny model's encoders would otherwise learn to see only
through the LLM's next-token loss, one answer token at a time. That proved far too slow on a
CPU (after 1.7 hours a linear probe on the object tokens still confused categories). This
stage stands in for the missing pretraining: every box in every record is a labelled example.

* ConvNeXt (high-res) + the parameter-free object encoder: linear heads on each box's pooled
  feature predict its category, colour, size and pattern.
* CLIP (low-res): a linear head on each patch token (layer ``vision_low_feature_layer``)
  predicts the category and colour of the smallest box covering the patch centre
  (``background`` when none does).

The heads are thrown away; the output is a complete ChatRex folder (``OUT/final``, weights +
processor) whose LLM and projectors are still random, which stage 1 starts from
(``model.init: OUT/final``).

Examples::

    python -m train.vision --records data/synth/train/records.jsonl --eval data/synth/val/records.jsonl \\
        --init chatrex-tiny-scratch --tokenizer runs/tokenizer --steps 1500 --out runs/chatrex-tiny/vision
    python -m train.vision ... --resume      # continue from OUT/last after a crash or Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from chatrex.image_processing_chatrex import load_image
from chatrex.processing_chatrex import IGNORE_INDEX
from chatrex.utils.atomic import replace_dir
from chatrex.utils.jsonl import JsonlRecords

from .checkpointing import save_pretrained_atomic, save_pretrained_into

ATTRIBUTES = ("color", "size", "pattern")
BACKGROUND = "background"


class LabelSpace:
    """Sorted vocabularies of categories and attribute values, read from records."""

    def __init__(self, records):
        cats, values = set(), {a: set() for a in ATTRIBUTES}
        for rec in records:
            for reg in rec.get("regions", []):
                cats.add(reg["category"])
                for a in ATTRIBUTES:
                    v = (reg.get("attributes") or {}).get(a)
                    if v is not None:
                        values[a].add(v)
        if not cats:
            raise ValueError("no regions with a category in the training records")
        self.categories = [BACKGROUND] + sorted(cats)
        self.values = {a: sorted(v) for a, v in values.items()}

    def to_dict(self) -> dict:
        return {"categories": self.categories, **self.values}

    def region_labels(self, reg) -> dict[str, int]:
        attrs = reg.get("attributes") or {}
        out = {"category": self.categories.index(reg["category"]) if reg["category"] in self.categories else IGNORE_INDEX}
        for a in ATTRIBUTES:
            v = attrs.get(a)
            out[a] = self.values[a].index(v) if v in self.values[a] else IGNORE_INDEX
        return out


class VisionHeads(nn.Module):
    """Linear probes trained jointly with the encoders; discarded afterwards."""

    def __init__(self, labels: LabelSpace, object_dim: int, patch_dim: int):
        super().__init__()
        sizes = {"category": len(labels.categories), **{a: len(v) for a, v in labels.values.items()}}
        self.box = nn.ModuleDict({k: nn.Linear(object_dim, max(n, 1)) for k, n in sizes.items()})
        self.patch = nn.ModuleDict({k: nn.Linear(patch_dim, max(sizes[k], 1)) for k in ("category", "color")})


def _patch_labels(boxes: torch.Tensor, labels: list[dict], grid: int) -> dict[str, torch.Tensor]:
    """For each of ``grid``² patches (row-major), the labels of the smallest box (normalised xyxy
    (K, 4)) containing the patch centre; category 0 (background) and colour IGNORE_INDEX otherwise."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.flatten()[:, None], cy.flatten()[:, None]
    inside = (cx >= boxes[:, 0]) & (cx <= boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy <= boxes[:, 3])  # (P, K)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand_as(inside)
    smallest = torch.where(inside, area, torch.full_like(area, math.inf)).argmin(1)
    covered = inside.any(1)
    cat = torch.tensor([labels[k]["category"] for k in smallest.tolist()]) if len(labels) else torch.zeros(grid * grid, dtype=torch.long)
    col = torch.tensor([labels[k]["color"] for k in smallest.tolist()]) if len(labels) else torch.full((grid * grid,), IGNORE_INDEX)
    return {"category": torch.where(covered, cat, 0), "color": torch.where(covered, col, IGNORE_INDEX)}


class RegionDataset(torch.utils.data.Dataset):
    """One item per record: preprocessed images, normalised boxes (K, 4) and labels."""

    def __init__(self, paths, image_processor, labels: LabelSpace, grid: int):
        self.records = JsonlRecords(paths)
        self.ip, self.labels, self.grid = image_processor, labels, grid

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        image = load_image(rec["image"])
        regions = rec.get("regions", [])[: self.ip.max_objects]
        low, high, meta = self.ip.preprocess(image)
        boxes = self.ip.normalize_boxes([r["box"] for r in regions], meta) if regions else torch.zeros((0, 4))
        labels = [self.labels.region_labels(r) for r in regions]
        box_labels = {k: torch.tensor([lab[k] for lab in labels], dtype=torch.long) for k in ("category", *ATTRIBUTES)}
        return {"low": low, "high": high, "boxes": boxes, "box_labels": box_labels, "patch_labels": _patch_labels(boxes, labels, self.grid)}


def collate(items):
    return {
        "low": torch.stack([it["low"] for it in items]),
        "high": torch.stack([it["high"] for it in items]),
        "boxes": [it["boxes"] for it in items],
        "box_labels": {k: torch.cat([it["box_labels"][k] for it in items]) for k in items[0]["box_labels"]},
        "patch_labels": {k: torch.cat([it["patch_labels"][k] for it in items]) for k in items[0]["patch_labels"]},
    }


def _encode(model, batch):
    """CLIP patch tokens (B, P, C_low), the last ConvNeXt stage's tokens (B, G, C_last) and
    the pooled box features (sum K, C_obj): what stages 1-3 receive from the towers. A frozen
    CLIP tower (``--freeze-low``) is not run: its tokens are ``None``."""
    inner = model.model
    low = None
    if any(p.requires_grad for p in inner.vision_low.parameters()):
        low = inner.vision_low(batch["low"], output_hidden_states=True).hidden_states[model.config.vision_low_feature_layer][:, 1:]
    stages = tuple(inner.vision_high(batch["high"], output_hidden_states=True).hidden_states[1:])
    pooled = torch.cat(inner.object_encoder(stages, batch["boxes"]))
    return low, stages[-1].flatten(2).transpose(1, 2), pooled


def preservation_loss(current, reference) -> torch.Tensor:
    """Mean squared drift of each encoder output from the reference towers', relative to the
    reference's mean square, so the weight means the same for every output."""
    return sum(F.mse_loss(c, r) / r.square().mean().clamp_min(1e-8) for c, r in zip(current, reference) if c is not None)


def forward_losses(model, heads: VisionHeads, batch, reference=None, preserve: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of cross-entropies over box and patch heads; returns (loss, {name: accuracy}).

    With ``reference`` (a frozen copy of the starting model) and ``preserve`` > 0, the drift of
    the encoder outputs from the reference's is added, weighted by ``preserve``: a trained
    model's LLM keeps reading features it knows while the heads add what was missing."""
    low, last, pooled = outputs = _encode(model, batch)
    loss, acc = 0.0, {}
    groups = [("box", pooled, heads.box, batch["box_labels"])]
    if low is not None:
        groups.append(("patch", low.flatten(0, 1), heads.patch, batch["patch_labels"]))
    for prefix, feats, heads_, targets in groups:
        for name, head in heads_.items():
            y = targets[name]
            if (y != IGNORE_INDEX).any():
                logits = head(feats)
                loss = loss + F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
                keep = y != IGNORE_INDEX
                acc[f"{prefix}_{name}"] = (logits.argmax(1)[keep] == y[keep]).float().mean().item()
    if reference is not None and preserve > 0:
        with torch.no_grad():
            ref = _encode(reference, batch)
        drift = preservation_loss(outputs, ref)
        loss = loss + preserve * drift
        acc["drift"] = drift.item()
    return loss, acc


@torch.no_grad()
def evaluate(model, heads, loader) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for batch in loader:
        _, acc = forward_losses(model, heads, batch)
        for k, v in acc.items():
            totals.setdefault(k, []).append(v)
    return {k: round(sum(v) / len(v), 4) for k, v in totals.items()}


def _save(model, processor, heads, optimizer, scheduler, step: int, out: str, name: str) -> None:
    """Write ``out/name`` atomically: model + processor (save_pretrained), heads and optimizer."""
    with replace_dir(os.path.join(out, name)) as tmp:
        save_pretrained_into(tmp, model, processor)
        torch.save({"heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "rng": torch.get_rng_state()}, os.path.join(tmp, "vision_state.pt"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.vision", description=__doc__.split("Examples::")[0].strip().splitlines()[0],
                                epilog="Examples::" + __doc__.split("Examples::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", nargs="+", required=True, help="training records.jsonl (regions with boxes, categories, attributes)")
    p.add_argument("--eval", nargs="*", default=[], help="records to report head accuracies on at the end")
    p.add_argument("--init", default="chatrex-tiny-scratch",
                   help="preset name (random weights, needs --tokenizer; default chatrex-tiny-scratch), a bundled model or a ChatRex folder")
    p.add_argument("--tokenizer", help="tokenizer folder for a preset init")
    p.add_argument("--out", required=True, help="output folder: OUT/final (model), OUT/last (resumable), OUT/metrics.jsonl")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freeze-low", action="store_true",
                   help="keep the CLIP (low-resolution) tower frozen and train the ConvNeXt and the box heads only (about half the time)")
    p.add_argument("--preserve", type=float, default=0.0,
                   help="weight of the encoder outputs' drift from the --init model's (default 0: free). Use it to teach a trained "
                        "model's towers a missing attribute while its LLM keeps the features it reads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.preserve < 0:
        print(f"error: --preserve must be >= 0, got {args.preserve}", file=sys.stderr)
        return 2
    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    for path in args.records + args.eval:
        if not os.path.isfile(path):
            print(f"error: records file not found: {path}", file=sys.stderr)
            return 2
    from .model_loading import load_model_and_processor, upn_folder

    torch.manual_seed(args.seed)
    resume_dir = os.path.join(args.out, "last")
    if args.resume and not os.path.isdir(resume_dir):
        print(f"error: --resume given but {resume_dir} does not exist", file=sys.stderr)
        return 2
    model, processor = load_model_and_processor(resume_dir if args.resume else args.init, None if args.resume else args.tokenizer)
    train_records = JsonlRecords(args.records)
    labels = LabelSpace(train_records.raw(i) for i in range(len(train_records)))
    grid = model.config.vision_low_config.image_size // model.config.vision_low_config.patch_size
    object_dim = sum(model.model.vision_high.config.hidden_sizes[i] for i in model.model.object_encoder.feature_levels)
    heads = VisionHeads(labels, object_dim, model.config.vision_low_config.hidden_size)
    reference = None
    if args.preserve > 0:
        # The starting towers, frozen: on --resume that is the run's --init, not OUT/last.
        reference, _ = load_model_and_processor(args.init, args.tokenizer)
        reference.eval().requires_grad_(False)
    model.train()
    if args.freeze_low:
        model.model.vision_low.requires_grad_(False)
        model.model.vision_low.eval()
    params = [p for p in list(model.model.vision_low.parameters()) + list(model.model.vision_high.parameters()) + list(heads.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.steps)
    step = 0
    if args.resume:
        state = torch.load(os.path.join(resume_dir, "vision_state.pt"), weights_only=True)
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "labels.json"), "w") as f:
        json.dump(labels.to_dict(), f, indent=1)
    data = RegionDataset(args.records, processor.image_processor, labels, grid)
    gen = torch.Generator().manual_seed(args.seed + step)  # a resumed run draws fresh batches
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, generator=gen, collate_fn=collate,
                                         num_workers=args.workers, drop_last=True, persistent_workers=args.workers > 0)
    log = open(os.path.join(args.out, "metrics.jsonl"), "a")
    bar = tqdm(total=args.steps, initial=step, desc="vision", dynamic_ncols=True)
    start, last_saved = time.time(), step
    try:
        while step < args.steps:
            for batch in loader:
                loss, acc = forward_losses(model, heads, batch, reference, args.preserve)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update(1)
                if step % args.log_every == 0:
                    row = {"step": step, "loss": round(loss.item(), 4), **{k: round(v, 3) for k, v in acc.items()}, "elapsed_s": round(time.time() - start, 1)}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{loss.item():.3f}", cat=f"{acc.get('box_category', 0):.2f}", pattern=f"{acc.get('box_pattern', 0):.2f}")
                if step % args.save_every == 0:
                    _save(model, processor, heads, optimizer, scheduler, step, args.out, "last")
                    last_saved = step
                if step >= args.steps:
                    break
    except KeyboardInterrupt:
        if step > last_saved:
            _save(model, processor, heads, optimizer, scheduler, step, args.out, "last")
        print(f"\ninterrupted at step {step}; saved {resume_dir} (continue with --resume)", file=sys.stderr)
        return 130
    bar.close()
    _save(model, processor, heads, optimizer, scheduler, step, args.out, "last")
    model.eval()
    if args.eval:
        eval_loader = torch.utils.data.DataLoader(RegionDataset(args.eval, processor.image_processor, labels, grid), batch_size=args.batch_size, collate_fn=collate)
        scores = evaluate(model, heads, eval_loader)
        log.write(json.dumps({"step": step, "eval": scores}) + "\n")
        print("eval accuracies:", json.dumps(scores))
    log.close()
    final = save_pretrained_atomic(model, processor, os.path.join(args.out, "final"), upn=upn_folder(args.init))
    print(f"wrote {final} after {step} steps in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
