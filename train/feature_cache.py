"""Encoder outputs cached once per training image, so stages 1-3 train only what changes.

The official model never trains its high-resolution ConvNeXt, and once the low-resolution
tower is frozen too, the image side of a training step is the same in every epoch: the fused
CLIP + ConvNeXt tokens before the image projector, and for each candidate box (the record's
ground truth and proposals, from which every sample's box list is drawn) the ROI-pooled
feature with its position embedding, before the object projector. This module computes them
once and stores them next to the records; the trainer then feeds them to
``ChatRexForConditionalGeneration(vision_features=..., object_pooled=...)``, and only the
projectors, the pointer head and the LLM run forward and backward.

Layout of a cache:

* folder ``<records>.features/<vision digest>-<records digest>-<props|gt>/``;
* ``shard-00000.safetensors`` ...: per shard of :data:`SHARD_SIZE` records, ``fused``
  (n, N, C_img) fp16, ``pooled`` (sum K, C_obj) fp16, ``offsets`` (n + 1) int64 into
  ``pooled``; a record whose image or boxes are bad has no rows and is listed in ``bad``;
* ``index.json``: the model digest, sizes, image sizes per record, bad records and reasons.

Shards are written atomically and an interrupted build resumes at the first missing or
incomplete shard. The folder name joins the digest of the vision side (both towers' weights
and configs, the object-encoder settings, the image processor), the sha256 of the records file
and whether proposals are included, so a cache made with other vision weights or other
records is never read. Images are referenced by path: replacing an image file without
touching the records is not detected.

    python -m train.feature_cache data/synth/train/records_upn.jsonl --model chatrex/bundled/chatrex-tiny
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from chatrex.image_processing_chatrex import load_image
from chatrex.utils.atomic import atomic_path, atomic_write
from chatrex.utils.jsonl import JsonlRecords

from .box_list import record_gt_boxes, record_proposals

SHARD_SIZE = 256
INDEX = "index.json"
ENCODER_FIELDS = ("object_feature_levels", "roi_output_size", "roi_sampling_ratio", "roi_aligned", "pos_embed_temperature",
                  "pos_embed_scale", "box_embed_order", "vision_low_feature_layer")


def vision_digest(model, processor) -> str:
    """sha256 over both towers' weights, the object-encoder settings and the image processor."""
    digest = hashlib.sha256()
    inner = model.model
    for prefix, module in (("low", inner.vision_low), ("high", inner.vision_high)):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update(json.dumps({f: getattr(model.config, f) for f in ENCODER_FIELDS}, sort_keys=True, default=str).encode())
    for sub in (model.config.vision_low_config, model.config.vision_high_config):
        digest.update(json.dumps(sub.to_dict(), sort_keys=True, default=str).encode())
    digest.update(json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(records_path: str, digest: str, use_proposals: bool = True) -> Path:
    """The cache folder of ``records_path`` for a vision side with ``digest``."""
    name = f"{digest[:16]}-{file_digest(records_path)[:12]}-{'props' if use_proposals else 'gt'}"
    return Path(str(records_path) + ".features") / name


def candidate_boxes(record: dict, width: int, height: int, use_proposals: bool = True) -> np.ndarray:
    """(G + P, 4) pixel xyxy: every box a training sample of this record can put in its list."""
    gt = record_gt_boxes(record, width, height)
    props = record_proposals(record, width, height) if use_proposals else np.zeros((0, 4))
    return np.concatenate([gt, props], axis=0)


@torch.no_grad()
def encode_batch(model, processor, images, boxes_per_image) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fused image tokens (B, N, C_img) and pooled box features per image, both before the
    projectors (float32)."""
    ip = processor.image_processor
    device = next(model.parameters()).device
    lows, highs, norm = [], [], []
    for image, boxes in zip(images, boxes_per_image):
        low, high, meta = ip.preprocess(image)
        lows.append(low)
        highs.append(high)
        # No cap here: the cache holds every candidate, the dataset caps each sample's list.
        norm.append(torch.from_numpy((boxes + ip._offsets(meta)) / meta.side).float().to(device))
    fused, stages = model.model.encode_image(torch.stack(lows).to(device), torch.stack(highs).to(device))
    pooled = model.model.object_encoder([s.float() for s in stages], norm)
    return fused.float().cpu(), [p.cpu() for p in pooled]


def build_cache(records_path: str, model, processor, use_proposals: bool = True, batch_size: int = 16, progress: bool = True) -> Path:
    """Compute (or finish) the cache of ``records_path`` for ``model``'s vision side; returns
    its folder. Bad records (unreadable image, bad boxes) are recorded, not fatal."""
    model.eval()
    digest = vision_digest(model, processor)
    folder = cache_dir(records_path, digest, use_proposals)
    folder.mkdir(parents=True, exist_ok=True)
    records = JsonlRecords([records_path])
    n = len(records)
    index_path = folder / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"digest": digest, "records": n, "shard_size": SHARD_SIZE,
                                                                               "use_proposals": use_proposals, "sizes": {}, "bad": {}}
    shard_size = int(index["shard_size"])
    shards = (n + shard_size - 1) // shard_size

    def write_index():
        with atomic_write(index_path) as f:
            f.write(json.dumps(index))

    write_index()
    bar = tqdm(total=n, desc=f"encoding {Path(records_path).name}", disable=not progress, unit="img")
    for s in range(shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        path = folder / f"shard-{s:05d}.safetensors"
        # A shard counts only once the index lists all its records (a crash can fall between
        # writing the shard and the index).
        if path.is_file() and all(str(i) in index["sizes"] or str(i) in index["bad"] for i in range(lo, hi)):
            bar.update(hi - lo)
            continue
        fused_rows: list = [None] * (hi - lo)
        pooled_rows: list = [None] * (hi - lo)
        counts: list[int] = []
        pending: list[tuple[int, object, np.ndarray]] = []

        def flush():
            if not pending:
                return
            fused, pooled = encode_batch(model, processor, [p[1] for p in pending], [p[2] for p in pending])
            for (i, _, _), f, p in zip(pending, fused, pooled):
                fused_rows[i - lo], pooled_rows[i - lo] = f.half(), p.half()
                if not (torch.isfinite(fused_rows[i - lo]).all() and torch.isfinite(pooled_rows[i - lo]).all()):
                    raise ValueError(f"record {i}: encoder outputs overflow float16; the cache stores fp16")
            bar.update(len(pending))
            pending.clear()

        for i in range(lo, hi):
            record = records[i]
            try:
                if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                    raise ValueError("record has no image path")
                image = load_image(record["image"])
                boxes = candidate_boxes(record, image.width, image.height, use_proposals)
            except (ValueError, OSError) as err:  # the dataset skips these records
                index["bad"][str(i)] = f"{type(err).__name__}: {err}"
                bar.update(1)
                continue
            index["sizes"][str(i)] = [image.width, image.height]
            pending.append((i, image, boxes))
            if len(pending) == batch_size:
                flush()
        flush()
        template = next((f for f in fused_rows if f is not None), None)
        width = next((p.shape[1] for p in pooled_rows if p is not None), 0)
        for j in range(hi - lo):
            if fused_rows[j] is None:  # bad record: zeros, never read
                fused_rows[j] = torch.zeros_like(template) if template is not None else torch.zeros((0, 0), dtype=torch.float16)
                pooled_rows[j] = torch.zeros((0, width), dtype=torch.float16)
            counts.append(len(pooled_rows[j]))
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int64)
        tensors = {"fused": torch.stack(fused_rows).contiguous(), "pooled": torch.cat(pooled_rows).contiguous(), "offsets": offsets}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp)
        write_index()  # after the shard: a shard counts only once the index lists it
    bar.close()
    return folder


class FeatureCache:
    """Read-only access to one cache folder; safe in DataLoader workers (files are opened
    lazily, per process, and read by row through safetensors' memory map)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise ValueError(f"{self.folder} is not a feature cache (no {INDEX}); build it with python -m train.feature_cache")
        self.index = json.loads(index_path.read_text())
        self.shard_size = int(self.index["shard_size"])
        self.use_proposals = bool(self.index["use_proposals"])
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.index["records"])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, shard: int):
        if self._pid != os.getpid():  # a forked worker: handles are per process
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            path = self.folder / f"shard-{shard:05d}.safetensors"
            if not path.is_file():
                raise ValueError(f"{path} is missing: the cache is incomplete; rebuild with python -m train.feature_cache")
            self._handles[shard] = safe_open(str(path), framework="pt")
        return self._handles[shard]

    def bad_reason(self, i: int) -> str | None:
        return self.index["bad"].get(str(i))

    def size(self, i: int) -> tuple[int, int]:
        try:
            return tuple(self.index["sizes"][str(i)])
        except KeyError:
            raise ValueError(f"{self.folder}: record {i} is not in the cache (an interrupted build?); run python -m train.feature_cache again") from None

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused (N, C_img), pooled (G + P, C_obj))`` of record ``i``, fp16."""
        shard, row = divmod(int(i), self.shard_size)
        h = self._handle(shard)
        offsets = h.get_slice("offsets")[row:row + 2]
        fused = h.get_slice("fused")[row:row + 1][0]
        pooled = h.get_slice("pooled")[int(offsets[0]):int(offsets[1])]
        return fused, pooled


class ConcatFeatureCache:
    """Several caches read as one, in the order of their record files (as
    :class:`chatrex.utils.jsonl.JsonlRecords` concatenates the files)."""

    def __init__(self, caches: list[FeatureCache]):
        if not caches:
            raise ValueError("no feature caches given")
        if len({c.use_proposals for c in caches}) > 1:
            raise ValueError("feature caches built with and without proposals cannot be mixed")
        self.caches = caches
        self.use_proposals = caches[0].use_proposals
        self.starts = np.cumsum([0] + [len(c) for c in caches])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[FeatureCache, int]:
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.caches[part], int(i - self.starts[part])

    def bad_reason(self, i: int) -> str | None:
        cache, j = self._locate(i)
        return cache.bad_reason(j)

    def size(self, i: int) -> tuple[int, int]:
        cache, j = self._locate(i)
        return cache.size(j)

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        cache, j = self._locate(i)
        return cache.get(j)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.feature_cache", description=__doc__.split("\n\n")[0],
                                     epilog="The trainer builds missing caches itself when data.feature_cache is true; this command builds them ahead of time.")
    parser.add_argument("records", nargs="+", help="records.jsonl files (with proposals, e.g. records_upn.jsonl)")
    parser.add_argument("--model", required=True, help="the checkpoint the training run starts from (its vision towers are cached)")
    parser.add_argument("--no-proposals", action="store_true", help="cache ground-truth boxes only (data.use_record_proposals=false)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    from .model_loading import load_model_and_processor

    try:
        model, processor = load_model_and_processor(args.model)
        for path in args.records:
            if not os.path.isfile(path):
                raise ValueError(f"record file {path!r} does not exist")
            folder = build_cache(path, model, processor, use_proposals=not args.no_proposals, batch_size=args.batch_size)
            print(f"{path}: {folder}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
