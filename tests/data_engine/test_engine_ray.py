"""The Ray runner on a local 2-CPU cluster, compared record for record with the local runner."""

from __future__ import annotations

import json
import shutil

import pytest

from data_engine.runners.local import run_local
from data_engine.runners.output import OutputDir

from .conftest import oracle_config

ray = pytest.importorskip("ray")


def outcome(out):
    """Records by id, plus the manifest's non-ok statuses (rejects with reasons, failures)."""
    recs = {}
    for shard in OutputDir(str(out)).shards():
        with open(shard) as f:
            for line in f:
                rec = json.loads(line)
                assert rec["id"] not in recs
                recs[rec["id"]] = rec
    with open(out / "manifest.jsonl") as f:
        other = {row["id"]: (row["status"], row.get("reason"), row.get("stage")) for row in map(json.loads, f) if row["status"] != "ok"}
    return recs, other


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_runner_matches_local_runner(synth_split, tmp_path, ray_cluster):
    from data_engine.runners.ray_runner import run_ray

    images = tmp_path / "images"
    shutil.copytree(synth_split[0] / "images", images)
    first = sorted(images.glob("*.png"))[0]
    shutil.copy(first, images / "zz_copy.png")  # the same bytes again: rejected by both
    (images / "zz_corrupt.png").write_bytes(b"broken")  # a failure in both
    # Actors ask for a quarter CPU each so four model stages and the light tasks fit on 2 CPUs.
    config = oracle_config(synth_split[1], "ray.num_cpus_per_actor=0.25", "ray.batch_size=2", "runner.shard_size=3")
    local = run_local(config, str(images), str(tmp_path / "local"), progress=False)
    distributed = run_ray(config, str(images), str(tmp_path / "ray"), progress=False)
    assert (local.records, local.rejected, local.failed) == (6, 1, 1)
    assert (distributed.records, distributed.rejected, distributed.failed) == (6, 1, 1)
    local_recs, local_other = outcome(tmp_path / "local")
    ray_recs, ray_other = outcome(tmp_path / "ray")
    assert ray_recs == local_recs
    assert ray_other == local_other
    # Resuming a finished Ray run does nothing.
    again = run_ray(config, str(images), str(tmp_path / "ray"), progress=False)
    assert again.already_done == 8 and again.processed == 0
