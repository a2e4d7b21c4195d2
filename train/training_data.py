"""The training set of a run: record files, the leakage filter, an optional weighted mixture.

:func:`build_train_data` reads ``data.train`` (plain paths or weighted entries), drops the
records whose images ``data.exclude`` holds out (chatrex/datasets/leakage.py), builds the
:class:`~train.dataset.ChatRexDataset` over what is left, and wraps it in a
:class:`~train.mixture.MixtureDataset` when the entries have weights. It returns the dataset
and the sampler the trainer's DataLoader uses.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from chatrex.datasets.leakage import dataset_name, heldout_image_ids, is_leaked, leakage_summary
from chatrex.utils.jsonl import JsonlRecords

from .config import TrainConfig
from .dataset import ChatRexDataset, EpochSampler
from .mixture import MixtureDataset, MixturePlan


class SubsetRecords:
    """Records ``indices`` of ``records`` (kept by the leakage filter), renumbered from 0."""

    def __init__(self, records, indices: np.ndarray):
        self.records = records
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.records[int(self.indices[i])]

    def raw(self, i: int) -> dict:
        return self.records.raw(int(self.indices[i]))


class SubsetFeatureCache:
    """The feature-cache rows of the kept records, numbered like :class:`SubsetRecords`."""

    def __init__(self, cache, indices: np.ndarray):
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.use_proposals = cache.use_proposals

    def __len__(self) -> int:
        return len(self.indices)

    def bad_reason(self, i: int):
        return self.cache.bad_reason(int(self.indices[i]))

    def size(self, i: int):
        return self.cache.size(int(self.indices[i]))

    def get(self, i: int):
        return self.cache.get(int(self.indices[i]))


@dataclass
class TrainData:
    dataset: torch.utils.data.Dataset
    sampler: EpochSampler
    report: list[str]
    """Lines for the log: the leakage filter's counts, the mixture table."""


def chatrex_dataset(cfg: TrainConfig, records, proposal_fn: Callable | None = None, feature_cache=None) -> ChatRexDataset:
    return ChatRexDataset(
        records,
        cfg.data.task_weights,
        seed=cfg.train.seed,
        max_boxes=cfg.data.max_boxes,
        use_record_proposals=cfg.data.use_record_proposals,
        proposal_fn=proposal_fn,
        num_proposals=cfg.data.num_proposals,
        dedup_iou=cfg.data.dedup_iou,
        turns_per_sample=cfg.data.turns_per_sample,
        answer_format=cfg.data.answer_format,
        feature_cache=feature_cache,
    )


def leakage_keep(records: JsonlRecords, exclude: list[str]) -> tuple[np.ndarray, str]:
    """Indices of the records whose image is not held out by ``exclude``, and the log line."""
    heldout = heldout_image_ids(exclude)
    keep = np.ones(len(records), dtype=bool)
    removed: Counter = Counter()
    for i in range(len(records)):
        # raw(): the stored image path is enough to recognise a COCO file name.
        record = records.raw(i)
        if isinstance(record, dict) and is_leaked(record, heldout):
            keep[i] = False
            removed[dataset_name(record)] += 1
    return np.flatnonzero(keep), leakage_summary(removed, len(records))


def build_train_data(cfg: TrainConfig, proposal_fn: Callable | None = None, feature_cache=None) -> TrainData:
    """``feature_cache``: a cache over all ``data.train`` files in order (or None)."""
    sources = cfg.data.sources()
    records = JsonlRecords([s.path for s in sources])
    file_sizes = np.bincount(np.frombuffer(records._file_of, dtype=np.uint32), minlength=len(sources))
    report = []
    if cfg.data.exclude:
        keep, line = leakage_keep(records, cfg.data.exclude)
        report.append(line)
        file_of = np.frombuffer(records._file_of, dtype=np.uint32)[keep]
        file_sizes = np.bincount(file_of, minlength=len(sources))
        records = SubsetRecords(records, keep)
        if feature_cache is not None:
            feature_cache = SubsetFeatureCache(feature_cache, keep)
    empty = [s.path for s, n in zip(sources, file_sizes) if n == 0]
    if empty and sources[0].weight is not None:
        raise ValueError(f"no training records left in {empty}" + (" after the leakage filter" if cfg.data.exclude else ""))
    base = chatrex_dataset(cfg, records, proposal_fn, feature_cache)
    if sources[0].weight is None:
        return TrainData(base, EpochSampler(len(base), seed=cfg.train.seed), report)
    plan = MixturePlan(file_sizes, [s.weight for s in sources], seed=cfg.train.seed)
    report.append(plan.describe([os.path.basename(s.path) for s in sources]))
    # The plan already shuffles; the sampler hands out positions in order.
    return TrainData(MixtureDataset(base, plan), EpochSampler(len(plan), seed=cfg.train.seed, shuffle=False), report)
