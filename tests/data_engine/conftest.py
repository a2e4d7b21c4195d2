"""Fixtures for the data-engine tests: a small synthetic split and an oracle engine config."""

from __future__ import annotations

import pytest

from data_engine.config import load_engine_config
from data_engine.synthetic.generator import write_split

MODEL_ROLES = ("captioner", "grounder", "region_captioner", "rewriter")


@pytest.fixture(scope="session")
def synth_split(tmp_path_factory):
    """Six 256 px test-split scenes: ``(folder, records.jsonl path)``."""
    out = tmp_path_factory.mktemp("synth")
    write_split(out, "test", 6, seed=123, size=256, progress=False)
    return out, out / "records.jsonl"


def oracle_config(records, *overrides):
    """The default stages with every model job answered from ``records`` (exact, model-free)."""
    return load_engine_config(None, [f"backends.{r}={{kind: oracle, model: '{records}'}}" for r in MODEL_ROLES] + list(overrides))
