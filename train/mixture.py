"""Several record files mixed by weight (``data.train`` entries ``{path: ..., weight: ...}``).

A weight is the dataset's share of the training samples: each sample comes from dataset
``i`` with probability ``w_i / sum(w)``, whatever the dataset's size. A small dataset with a
large weight is repeated within an epoch, a large one with a small weight is subsampled. To
mix in proportion to size (what listing plain paths does: one concatenation, every record
equally likely), give each file its record count as weight.

A mixture epoch has as many samples as the datasets have records together. Its plan (which
record fills which position) depends only on ``(seed, epoch)``:

* each dataset gets its share of the positions (rounded up or down at random, see
  :func:`allocate`), and the dataset labels are shuffled over the positions;
* each dataset's records are taken from fresh seeded permutations, one after another, so a
  record repeats only after every record of its dataset has been used once.

The sampler hands out positions in order (``EpochSampler(shuffle=False)``) and every worker and
process rebuilds the same plan, so sharding across processes and exact resume work as with a
single file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

# Keeps the plan's random streams apart from the per-sample ones ([seed, epoch, index]).
_PLAN_STREAM = 0x6D6978


@dataclass(frozen=True)
class DataSource:
    path: str
    weight: float | None = None


def parse_sources(entries, key: str = "data.train") -> list[DataSource]:
    """``data.train`` entries (paths or ``{path, weight}`` mappings) as sources.

    Raises ``ValueError`` naming the entry: a mapping without a path, an unknown key, a weight
    that is not a positive number, or weighted entries mixed with unweighted ones (their
    meaning would differ: see the module docstring).
    """
    if not isinstance(entries, list):
        raise ValueError(f"{key} must be a list of record files, got {entries!r}")
    sources = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}] ({entry!r})"
        if isinstance(entry, (str, os.PathLike)):
            sources.append(DataSource(os.fspath(entry)))
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a path or a mapping {{path: ..., weight: ...}}")
        unknown = set(entry) - {"path", "weight"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: path, weight")
        path = entry.get("path")
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"{where}: needs a 'path' to a record file")
        weight = entry.get("weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
                raise ValueError(f"{where}: weight must be a number > 0, got {weight!r}")
            weight = float(weight)
        sources.append(DataSource(os.fspath(path), weight))
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        first = weighted.index(False)
        raise ValueError(f"{key}[{first}] ({entries[first]!r}) has no weight but other entries do: give every entry a weight, or none")
    return sources


def allocate(total: int, weights, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` samples by ``weights``: each dataset gets the floor of its exact share
    plus one more with probability equal to the fraction left over (systematic sampling), so
    counts sum to ``total``, never miss the exact share by a whole sample, and a dataset whose
    share is below one sample per epoch still comes up in some epochs."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        cumulative = np.cumsum(exact - counts)
        picks = np.searchsorted(cumulative, rng.random() + np.arange(short), side="right")
        counts += np.bincount(np.minimum(picks, len(w) - 1), minlength=len(w))
    return counts


class MixturePlan:
    """Which record (global index into the concatenated files) fills each position of an epoch.

    Args:
        sizes: records per dataset (after any filtering), in file order.
        weights: sampling share per dataset (> 0).
        seed: base seed.
        epoch_size: samples per epoch (default: ``sum(sizes)``).
    """

    def __init__(self, sizes, weights, seed: int = 0, epoch_size: int | None = None):
        self.sizes = [int(n) for n in sizes]
        self.weights = [float(w) for w in weights]
        if len(self.sizes) != len(self.weights) or not self.sizes:
            raise ValueError(f"need one weight per dataset, got sizes {self.sizes} and weights {self.weights}")
        empty = [i for i, n in enumerate(self.sizes) if n <= 0]
        if empty:
            raise ValueError(f"dataset(s) {empty} of the mixture have no records")
        self.seed = seed
        self.epoch_size = int(epoch_size) if epoch_size is not None else sum(self.sizes)
        self.starts = np.cumsum([0] + self.sizes[:-1])
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.epoch_size

    def epoch(self, epoch: int) -> np.ndarray:
        """(epoch_size,) global record indices of ``epoch`` (cached: a worker asks for one
        epoch at a time)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, epoch, _PLAN_STREAM])
        counts = allocate(self.epoch_size, self.weights, rng)
        labels = np.repeat(np.arange(len(self.sizes)), counts)
        rng.shuffle(labels)
        plan = np.empty(self.epoch_size, dtype=np.int64)
        for i, (n, count) in enumerate(zip(self.sizes, counts)):
            rounds = -(-int(count) // n)
            order = np.concatenate([np.random.default_rng([self.seed, epoch, _PLAN_STREAM, i, r]).permutation(n) for r in range(rounds)]) if rounds else np.zeros(0, np.int64)
            plan[labels == i] = self.starts[i] + order[:count]
        self._cached = (epoch, plan)
        return plan

    def dataset_of(self, record: int) -> int:
        return int(np.searchsorted(self.starts, record, side="right")) - 1

    def describe(self, names: list[str]) -> str:
        """One line per dataset: records, weight, share of samples and passes per epoch."""
        total_w = sum(self.weights)
        lines = [f"mixture: {self.epoch_size:,} samples per epoch"]
        for name, n, w in zip(names, self.sizes, self.weights):
            c = self.epoch_size * w / total_w
            lines.append(f"  {name}: {n:,} records, weight {w:g} -> {w / total_w:.1%} of samples ({c:,.0f}, {c / n:.2f} passes per epoch)")
        return "\n".join(lines)


class MixtureDataset(torch.utils.data.Dataset):
    """A :class:`~train.dataset.ChatRexDataset` over the concatenated files, read in plan order.

    Key ``epoch * len(self) + position`` gives the sample of the record the plan puts at that
    position; its randomness is seeded by ``(seed, epoch, position, record)``, so a record drawn
    twice in an epoch gets two different samples. A bad record is replaced by the next record of
    the same dataset.
    """

    def __init__(self, base, plan: MixturePlan):
        if len(base) != sum(plan.sizes):
            raise ValueError(f"the mixture plan covers {sum(plan.sizes)} records but the dataset has {len(base)}")
        self.base = base
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, key: int) -> dict:
        epoch, position = divmod(int(key), len(self.plan))
        record = int(self.plan.epoch(epoch)[position])
        part = self.plan.dataset_of(record)
        start = int(self.plan.starts[part])
        return self.base.sample(record, salt=(epoch, position), within=(start, start + self.plan.sizes[part]))
