"""Train UPN on COCO-format detection files marked coarse or fine.

Run ``python -m train.upn --help`` for the options. Each ``--coarse FILE`` /
``--fine FILE`` is a COCO JSON (``images``, ``annotations`` with pixel
``bbox`` = [x, y, w, h], optional ``categories``). A category may carry
``"granularity": "fine" | "coarse"`` to override its file's mark; an image with
boxes of both granularities becomes two samples (one per prompt). Images with
no annotation are kept as negatives.

Box hygiene: annotations with NaN/inf or non-positive size are skipped and
counted; boxes reaching outside the image are clipped to it and dropped if
nothing is left; ``iscrowd`` boxes are skipped. A zero-size or unreadable image
raises an error naming the file.

The loop is the project's one training loop (``train.loop``): data order and flips depend
only on (seed, epoch), ``--resume`` continues exactly from the newest atomic checkpoint,
``--max-minutes``, ``--grad-accum``, mixed precision and DeepSpeed work as in every stage,
and losses go to ``OUTPUT_DIR/metrics.jsonl``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
from collections import Counter, defaultdict

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.ops import box_convert, clip_boxes_to_image

from upn import UPNModel, get_config
from upn.config import UPNConfig
from upn.image_processing import resize_normalize, resized_size, to_rgb_image

from .dataset import EpochSampler
from .loop import TrainingData, TrainingTask, add_loop_arguments, check_files, run_config, run_from_cli

GRANULARITIES = ("coarse", "fine")


def load_coco_sources(sources: list[tuple[str, str]], image_root: str | None) -> tuple[list[dict], Counter]:
    """Parse COCO files into samples {"path", "boxes" (K, 4) pixel xywh, "granularity"}.

    Returns the samples and a Counter of skipped annotations by reason.
    """
    samples, skipped = [], Counter()
    for path, default_gran in sources:
        with open(path, encoding="utf-8") as fh:
            coco = json.load(fh)
        root = image_root or os.path.dirname(os.path.abspath(path))
        cat_gran = {}
        for cat in coco.get("categories", []):
            g = cat.get("granularity", default_gran)
            if g not in GRANULARITIES:
                raise ValueError(f"{path}: category {cat.get('id')} has granularity {g!r}, expected coarse/fine")
            cat_gran[cat["id"]] = g
        by_image = defaultdict(lambda: defaultdict(list))
        for ann in coco.get("annotations", []):
            box = ann.get("bbox")
            if ann.get("iscrowd", 0):
                skipped["iscrowd"] += 1
                continue
            if box is None or len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
                skipped["non-finite or malformed bbox"] += 1
                continue
            if box[2] <= 0 or box[3] <= 0:
                skipped["non-positive size"] += 1
                continue
            by_image[ann["image_id"]][cat_gran.get(ann.get("category_id"), default_gran)].append(box)
        for img in coco["images"]:
            file = os.path.join(root, img["file_name"])
            groups = by_image.get(img["id"]) or {default_gran: []}
            for gran, boxes in groups.items():
                samples.append({"path": file, "granularity": gran,
                                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)})
    return samples, skipped


class UPNDetectionDataset(Dataset):
    """Items are :class:`~train.dataset.EpochSampler` keys (``epoch * N + i``): sample ``i``,
    flipped horizontally with probability 1/2 seeded by (``seed``, key) when ``flip``. Returns a
    dict with ``pixel_values`` (3, H, W) normalised, ``boxes`` (K, 4) normalised cxcywh
    (clipped to the image) and ``granularity``."""

    def __init__(self, samples: list[dict], short_side: int, max_size: int, mean, std, flip: bool = False,
                 seed: int = 0) -> None:
        self.samples = samples
        self.short_side, self.max_size = short_side, max_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.flip, self.seed = flip, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int) -> dict:
        s = self.samples[key % len(self.samples)]
        flip = self.flip and random.Random(self.seed * 7_919 + key).random() < 0.5
        try:
            with Image.open(s["path"]) as im:
                image = to_rgb_image(im)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot use image {s['path']}: {err}") from err
        w, h = image.size
        xyxy = clip_boxes_to_image(box_convert(s["boxes"], "xywh", "xyxy"), (h, w))
        xyxy = xyxy[(xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)]
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            xyxy = torch.stack([w - xyxy[:, 2], xyxy[:, 1], w - xyxy[:, 0], xyxy[:, 3]], -1)
        pixels = resize_normalize(image, resized_size(w, h, self.short_side, self.max_size), self.mean, self.std)
        cxcywh = box_convert(xyxy / torch.tensor([w, h, w, h], dtype=torch.float32), "xyxy", "cxcywh")
        return {"pixel_values": pixels, "boxes": cxcywh, "granularity": s["granularity"]}


def collate(batch: list[dict]) -> dict:
    """Pad to the largest image (bottom/right) and build ``pixel_mask`` (1 = real pixel)."""
    h = max(b["pixel_values"].shape[1] for b in batch)
    w = max(b["pixel_values"].shape[2] for b in batch)
    pixels = torch.zeros(len(batch), 3, h, w)
    mask = torch.zeros(len(batch), h, w, dtype=torch.long)
    for i, b in enumerate(batch):
        _, bh, bw = b["pixel_values"].shape
        pixels[i, :, :bh, :bw] = b["pixel_values"]
        mask[i, :bh, :bw] = 1
    return {"pixel_values": pixels, "pixel_mask": mask,
            "targets": [{"boxes": b["boxes"]} for b in batch],
            "granularity": [b["granularity"] for b in batch]}


class UPNTask(TrainingTask):
    """UPN on COCO detection files (module doc), for :func:`train.loop.run_training`."""

    description = "train upn"

    def __init__(self, args: argparse.Namespace, sources: list[tuple[str, str]], config: UPNConfig):
        self.args, self.sources, self.config = args, sources, config

    def build(self, accelerator):
        args = self.args
        model = UPNModel(self.config) if args.init is None else UPNModel.from_pretrained(args.init)
        model.config.image = self.config.image  # the saved model keeps the training resize rule
        config = model.config
        samples, skipped = load_coco_sources(self.sources, args.image_root)
        if not samples:
            raise ValueError(f"the COCO files {[path for path, _ in self.sources]} contain no images")
        self.dataset = UPNDetectionDataset(samples, config.image.short_side, config.image.max_size, config.image.mean,
                                           config.image.std, flip=not args.no_flip, seed=args.seed)
        accelerator.print(f"UPN {config.name}: {model.num_parameters() / 1e6:.2f}M params, "
                          f"{len(samples)} samples ({dict(Counter(s['granularity'] for s in samples))}), "
                          f"skipped annotations: {dict(skipped) or 'none'}")
        return model

    def param_groups(self, module):
        backbone = [p for n, p in module.named_parameters() if n.startswith("backbone.body.")]
        rest = [p for n, p in module.named_parameters() if not n.startswith("backbone.body.")]
        return [{"name": "backbone", "params": backbone}, {"name": "transformer+heads+prompts", "params": rest}]

    def scheduler(self, optimizer, max_steps):
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        # Cosine to 10% of peak: late steps refine boxes without oscillating. (transformers' warm-up
        # starts at lr 0 on step 0, one step behind the hand-written schedule upn-tiny was trained with.)
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, self.args.warmup_steps, max_steps, min_lr_rate=0.1)

    def train_data(self):
        return TrainingData(self.dataset, EpochSampler(len(self.dataset), seed=self.args.seed), collate)

    def loss(self, model, batch):
        dtype = next(model.parameters()).dtype  # bf16 under DeepSpeed, which does not autocast the inputs
        losses = model(batch["pixel_values"].to(dtype), batch["granularity"], targets=batch["targets"], pixel_mask=batch["pixel_mask"])
        return losses["loss"], {k: round(v.item(), 5) for k, v in losses.items() if k != "loss"}

    def save(self, module, folder, state_dict):
        module.save_pretrained(folder, state_dict)


def training_config(args: argparse.Namespace) -> UPNConfig:
    """The config the run trains: ``--preset``'s or ``--init``'s, with ``--short-side`` /
    ``--max-size`` applied. ``ValueError`` names a bad value."""
    if args.init is not None:
        path = os.path.join(args.init, "config.json")
        if not os.path.isfile(path):
            hint = " (did you mean its final/ folder?)" if os.path.isfile(os.path.join(args.init, "final", "config.json")) else ""
            raise ValueError(f"--init {args.init!r} is not a UPN folder: {path} does not exist{hint}")
        config = UPNConfig.load(path)
    else:
        config = get_config(args.preset)
    for flag, value in (("--short-side", args.short_side), ("--max-size", args.max_size)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.short_side is not None or args.max_size is not None:
        short = args.short_side or config.image.short_side
        longest = args.max_size or max(config.image.max_size, short)
        if longest < short:
            raise ValueError(f"--max-size {longest} is below the short side {short} ({'--short-side' if args.short_side else 'the preset'}'s); "
                             "give --short-side too")
        config.image = dataclasses.replace(config.image, short_side=short, max_size=longest)  # replace re-validates
    return config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.upn",
        description="Train the Universal Proposal Network (UPN) on COCO-format JSON files. "
                    "Each --coarse/--fine file sets the default granularity of its boxes "
                    "(whole objects vs parts); a category's own \"granularity\" field overrides it.",
        epilog="Example: python -m train.upn --coarse shapes/train.json --fine parts/train.json "
               "--preset upn-tiny --steps 5000 --output-dir runs/upn-tiny. "
               "Outputs: OUTPUT_DIR/final/ (config.json + model.safetensors for UPNPredictor.from_pretrained), "
               "OUTPUT_DIR/checkpoint-NNNNNNNN/ (resume state), OUTPUT_DIR/metrics.jsonl (losses).")
    p.add_argument("--coarse", action="append", default=[], metavar="JSON",
                   help="COCO file whose boxes are coarse (whole objects); repeatable")
    p.add_argument("--fine", action="append", default=[], metavar="JSON",
                   help="COCO file whose boxes are fine (parts); repeatable")
    p.add_argument("--image-root", default=None,
                   help="folder that file_name is relative to (default: each JSON's folder)")
    p.add_argument("--preset", default="upn-tiny", help="model preset (upn-tiny, upn-large; default upn-tiny)")
    p.add_argument("--init", default=None, help="start from a save_pretrained folder instead of random init")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--clip-grad", type=float, default=0.1, help="max grad norm (DETR default 0.1; 0: no clipping)")
    p.add_argument("--short-side", type=int, default=None, help="resize short side (default: preset's)")
    p.add_argument("--max-size", type=int, default=None, help="cap on the long side (default: preset's)")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    add_loop_arguments(p, steps=1000, batch_size=4, lr=2e-4, warmup_steps=100, save_every=500, log_every=10, workers=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources = [(f, "coarse") for f in args.coarse] + [(f, "fine") for f in args.fine]
    try:
        if not sources:
            raise ValueError("give at least one --coarse or --fine COCO file")
        check_files("--coarse", args.coarse)
        check_files("--fine", args.fine)
        config = training_config(args)
        run = run_config(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_from_cli(UPNTask(args, sources, config), run, max_grad_norm=args.clip_grad if args.clip_grad > 0 else None,
                        num_workers=args.workers, resume=args.resume, force_cpu=args.cpu,
                        optimizer_options={"lr": args.lr, "weight_decay": args.weight_decay})


if __name__ == "__main__":
    sys.exit(main())
