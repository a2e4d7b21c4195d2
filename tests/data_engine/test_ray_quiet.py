"""The Ray runner from the command line is quiet: Ray's own INFO/WARNING lines, its progress
bars and worker output appear only with --verbose (issue #22: 3 images used to print ~42 lines)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from data_engine.synthetic.generator import write_split

from .conftest import MODEL_ROLES

pytest.importorskip("ray")

# A Ray cluster in a subprocess: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ray_runner_is_quiet_without_verbose(tmp_path):
    write_split(tmp_path / "synth", "test", 3, seed=5, size=256, progress=False)
    records = tmp_path / "synth" / "records.jsonl"
    overrides = [f"backends.{r}={{kind: oracle, model: '{records}'}}" for r in MODEL_ROLES]
    # filter (a Ray task) then caption (an actor pool): both kinds of Ray Data operator, and
    # every message kind the full pipeline prints, in half its time.
    overrides += ["stages=[filter, caption]", "ray.num_cpus_per_actor=0.5", "ray.num_cpus=2"]
    argv = [sys.executable, "-m", "data_engine.cli", "run", "--runner", "ray", "--input", str(tmp_path / "synth" / "images"),
            "--output", str(tmp_path / "out"), "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(f"ray run of 3 images: {time.perf_counter() - start:.1f}s; stderr: {done.stderr!r}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 records, 0 rejected, 0 failed")
    # Without the runner's own bar (which is one line in a terminal but several in a pipe), what
    # is left is Ray's: at most the one C++ line it cannot be kept from printing (ray_runner.py
    # says why); it used to be about ten lines here and 42 with Ray's progress bars.
    lines = [line for line in done.stderr.split("\n") if line.strip()]
    assert len(lines) <= 2, lines
    assert not any(" INFO " in line or " WARNING " in line for line in lines), lines
