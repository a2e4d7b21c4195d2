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
    python -m train.vision ... --resume      # continue exactly from the newest OUT/checkpoint-*

It runs in the project's one training loop (``train.loop``): exact resume, ``--max-minutes``,
``--grad-accum``, mixed precision, DeepSpeed and ``OUT/metrics.jsonl`` as in every stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from chatrex.image_processing_chatrex import load_image
from chatrex.processing_chatrex import IGNORE_INDEX
from chatrex.utils.jsonl import JsonlRecords

from .checkpointing import save_pretrained_into
from .dataset import EpochSampler
from .loop import TrainingData, TrainingTask, add_loop_arguments, check_files, run_config, run_from_cli
from .model_loading import check_init

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
    """One item per record: preprocessed images, normalised boxes (K, 4) and labels. Any
    integer key reads record ``key % N`` (the loop's :class:`~train.dataset.EpochSampler` keys)."""

    def __init__(self, paths, image_processor, labels: LabelSpace, grid: int):
        self.records = JsonlRecords(paths)
        self.ip, self.labels, self.grid = image_processor, labels, grid

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i % len(self.records)]
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
    # The towers' dtype: bf16 under DeepSpeed, which does not autocast the inputs.
    if any(p.requires_grad for p in inner.vision_low.parameters()):
        pixels = batch["low"].to(inner.vision_low.dtype)
        low = inner.vision_low(pixels, output_hidden_states=True).hidden_states[model.config.vision_low_feature_layer][:, 1:]
    stages = tuple(inner.vision_high(batch["high"].to(inner.vision_high.dtype), output_hidden_states=True).hidden_states[1:])
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


class VisionStage(nn.Module):
    """The trained module: the ChatRex model (only its towers train) and the heads. ``forward``
    returns ``(loss, accuracies)`` of :func:`forward_losses`; with ``freeze_low`` the CLIP tower
    stays in eval mode whatever ``train()`` is asked."""

    def __init__(self, model, heads: VisionHeads, reference=None, preserve: float = 0.0, freeze_low: bool = False):
        super().__init__()
        self.model, self.heads = model, heads
        self._reference = (reference,)  # a tuple: frozen, not a submodule (not saved, not trained)
        self.preserve, self.freeze_low = preserve, freeze_low

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_low:
            self.model.model.vision_low.eval()
        return self

    def forward(self, batch, preserve: bool = True):
        reference = self._reference[0]
        if reference is not None and preserve:
            reference.to(batch["high"].device)
        return forward_losses(self.model, self.heads, batch, reference if preserve else None, self.preserve)


class VisionTask(TrainingTask):
    """Stage 0 for :func:`train.loop.run_training` (module doc)."""

    description = "vision"
    zero3 = False  # which heads run depends on the batch; ZeRO-3 gathers every module collectively

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def build(self, accelerator):
        from .model_loading import load_model_and_processor, upn_folder

        args = self.args
        model, self.processor = load_model_and_processor(args.init, args.tokenizer)
        self.upn = upn_folder(args.init)
        train_records = JsonlRecords(args.records)
        self.labels = LabelSpace(train_records.raw(i) for i in range(len(train_records)))
        if accelerator.is_main_process:
            with open(os.path.join(args.output_dir, "labels.json"), "w") as f:
                json.dump(self.labels.to_dict(), f, indent=1)
        self.grid = model.config.vision_low_config.image_size // model.config.vision_low_config.patch_size
        object_dim = sum(model.model.vision_high.config.hidden_sizes[i] for i in model.model.object_encoder.feature_levels)
        heads = VisionHeads(self.labels, object_dim, model.config.vision_low_config.hidden_size)
        reference = None
        if args.preserve > 0:
            # The starting towers, frozen (on --resume too: the run's --init, not a checkpoint).
            reference, _ = load_model_and_processor(args.init, args.tokenizer)
            reference.eval().requires_grad_(False)
        model.requires_grad_(False)
        towers = [model.model.vision_high] + ([] if args.freeze_low else [model.model.vision_low])
        for tower in towers:
            tower.requires_grad_(True)
        return VisionStage(model, heads, reference, args.preserve, args.freeze_low)

    def param_groups(self, module):
        towers = [p for p in module.model.parameters() if p.requires_grad]
        return [{"name": "vision towers", "params": towers}, {"name": "heads", "params": list(module.heads.parameters())}]

    def scheduler(self, optimizer, max_steps):
        return get_cosine_schedule_with_warmup(optimizer, self.args.warmup_steps, max_steps)

    def train_data(self):
        data = RegionDataset(self.args.records, self.processor.image_processor, self.labels, self.grid)
        return TrainingData(data, EpochSampler(len(data), seed=self.args.seed), collate)

    def loss(self, model, batch):
        loss, acc = model(batch)
        return loss, {k: round(v, 4) for k, v in acc.items()}

    @torch.no_grad()
    def evaluate(self, module, device):
        if not self.args.eval:
            return {}
        from accelerate.utils import send_to_device

        was_training = module.training
        module.eval()
        loader = torch.utils.data.DataLoader(RegionDataset(self.args.eval, self.processor.image_processor, self.labels, self.grid),
                                             batch_size=self.args.batch_size, collate_fn=collate)
        totals: dict[str, list[float]] = {}
        for batch in loader:
            _, acc = module(send_to_device(batch, device), preserve=False)
            for k, v in acc.items():
                totals.setdefault(k, []).append(v)
        module.train(was_training)
        return {k: round(sum(v) / len(v), 4) for k, v in totals.items()}

    def extra_state(self):
        return {"labels": self.labels.to_dict()}

    def load_extra_state(self, state):
        if state.get("labels", self.labels.to_dict()) != self.labels.to_dict():
            raise ValueError(f"the records' labels differ from the checkpoint's: {state['labels']} != {self.labels.to_dict()}; "
                             "resume with the same --records")

    def save(self, module, folder, state_dict):
        towers = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        save_pretrained_into(folder, module.model, self.processor, self.upn, towers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.vision", description="Stage 0: pretrain the vision encoders (CLIP and ConvNeXt) "
                                "on region labels with linear heads on box features and CLIP patches; OUT/final is a ChatRex folder for stage 1.",
                                epilog="Examples::" + __doc__.split("Examples::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", nargs="+", required=True, help="training records.jsonl (regions with boxes, categories, attributes)")
    p.add_argument("--eval", nargs="*", default=[], help="records to report head accuracies on at the end")
    p.add_argument("--init", default="chatrex-tiny-scratch",
                   help="preset name (random weights, needs --tokenizer; default chatrex-tiny-scratch), a bundled model or a ChatRex folder")
    p.add_argument("--tokenizer", help="tokenizer folder for a preset --init (python -m train.tokenizer makes one)")
    p.add_argument("--freeze-low", action="store_true",
                   help="keep the CLIP (low-resolution) tower frozen and train the ConvNeXt and the box heads only (about half the time)")
    p.add_argument("--preserve", type=float, default=0.0,
                   help="weight of the encoder outputs' drift from the --init model's (default 0: free). Use it to teach a trained "
                        "model's towers a missing attribute while its LLM keeps the features it reads")
    add_loop_arguments(p, steps=1500, batch_size=8, lr=1e-3, warmup_steps=50, save_every=100, log_every=20, workers=1)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.preserve < 0:
            raise ValueError(f"--preserve must be >= 0, got {args.preserve}")
        check_files("--records", args.records)
        check_files("--eval", args.eval)
        run = run_config(args)
        check_init(args.init, args.tokenizer)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_from_cli(VisionTask(args), run, max_grad_norm=1.0, num_workers=args.workers, resume=args.resume,
                        force_cpu=args.cpu, optimizer_options={"lr": args.lr, "weight_decay": 0.01})


if __name__ == "__main__":
    sys.exit(main())
