"""The stage contract.

A stage takes a batch of :class:`~data_engine.sample.Sample` and extends each one in place.
It declares what it needs (``requires``) and what it adds (``provides``) as names of record or
scratch fields, so a configured stage order is checked before any image is read. Samples
already rejected by an earlier stage are skipped by :func:`active`.

Errors: a stage raises on a batch it cannot process; the runner then retries the batch one
sample at a time, so one bad image is recorded in ``failures.jsonl`` and the rest go on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..sample import Sample


class Stage(ABC):
    name: ClassVar[str]
    version: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    uses_model: ClassVar[bool] = False
    """True when the stage holds a model (Ray runs it in an actor pool; GPU requests apply)."""

    @abstractmethod
    def process(self, samples: list[Sample]) -> None:
        """Extend each non-rejected sample in place (or reject it)."""

    def provenance(self) -> dict:
        """Written to ``record["provenance"][name]``: backend, model and this stage's version."""
        return {"version": self.version}


def active(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.rejected is None and s.failure is None]
