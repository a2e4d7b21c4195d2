"""Fixtures for the importer tests."""

from __future__ import annotations

import pytest

from chatrex.datasets.cli import main
from tests.datasets.helpers import read_records


@pytest.fixture
def run_import(tmp_path):
    """Run ``chatrex data import ARGS --out OUT --no-progress``: ``(rc, records or None, out)``."""
    def run(*args, out="out.jsonl"):
        out = str(tmp_path / out)
        rc = main(["import", *args, "--out", out, "--no-progress"])
        return rc, (read_records(out) if rc == 0 else None), out
    return run
