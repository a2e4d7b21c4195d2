"""The Ray runner on a local 2-CPU cluster, compared record for record with the local runner."""

from __future__ import annotations

import json
import shutil

import pytest

from data_engine.runners.local import run_local
from data_engine.runners.output import OutputDir

from .conftest import oracle_config

ray = pytest.importorskip("ray")

# A Ray cluster starts for these: `make test-fast` leaves them out.
pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize("overrides", [
    # The default layout: every stage after the filter in one pool, here two workers (replicas).
    ("ray.actors=2", "ray.num_cpus_per_actor=0.5"),
    # One pool per model stage; a quarter CPU each so four model stages and the light tasks fit on 2 CPUs.
    ("ray.fuse_stages=false", "ray.num_cpus_per_actor=0.25"),
], ids=["fused-two-workers", "pool-per-stage"])
def test_ray_runner_matches_local_runner(synth_split, tmp_path, ray_cluster, overrides):
    from data_engine.runners.ray_runner import run_ray

    images = tmp_path / "images"
    shutil.copytree(synth_split[0] / "images", images)
    first = sorted(images.glob("*.png"))[0]
    shutil.copy(first, images / "zz_copy.png")  # the same bytes again: rejected by both
    (images / "zz_corrupt.png").write_bytes(b"broken")  # a failure in both
    config = oracle_config(synth_split[1], "ray.batch_size=2", "runner.shard_size=3", *overrides)
    local = run_local(config, str(images), str(tmp_path / "local"), progress=False)
    distributed = run_ray(config, str(images), str(tmp_path / "ray"), progress=False)
    assert (local.records, local.rejected, local.failed) == (6, 1, 1)
    assert (distributed.records, distributed.rejected, distributed.failed) == (6, 1, 1)
    local_recs, local_other = outcome(tmp_path / "local")
    ray_recs, ray_other = outcome(tmp_path / "ray")
    assert ray_recs == local_recs
    assert ray_other == local_other
    # Results are delivered in input order, so the shards are the local runner's, byte for byte.
    shards = [[open(p, "rb").read() for p in OutputDir(str(tmp_path / d)).shards()] for d in ("local", "ray")]
    assert len(shards[0]) == 2 and shards[1] == shards[0]
    # Resuming a finished Ray run does nothing.
    again = run_ray(config, str(images), str(tmp_path / "ray"), progress=False)
    assert again.already_done == 8 and again.processed == 0


def test_stage_layout_and_actor_threads(synth_split):
    from data_engine.runners.ray_runner import _groups, actor_threads

    per_stage = oracle_config(synth_split[1], "ray.fuse_stages=false")
    assert _groups(per_stage) == [(["filter"], False), (["caption"], True), (["phrases"], False), (["grounding"], True),
                                  (["region_caption"], True), (["verify"], True)]
    assert actor_threads(oracle_config(synth_split[1])) == 1
    assert actor_threads(oracle_config(synth_split[1], "ray.num_cpus_per_actor=0.25")) == 1
    assert actor_threads(oracle_config(synth_split[1], "ray.num_cpus_per_actor=4")) == 4
    assert actor_threads(oracle_config(synth_split[1], "ray.num_cpus_per_actor=4", "ray.threads_per_actor=2")) == 2


def test_more_workers_than_the_local_cluster_holds_is_an_error(synth_split, tmp_path, ray_cluster):
    from data_engine.runners.ray_runner import run_ray

    config = oracle_config(synth_split[1], "ray.actors=3", "ray.num_cpus_per_actor=1")
    with pytest.raises(ValueError, match=r"ray.actors \(3\) x ray.num_cpus_per_actor \(1\) asks for more CPUs than the local Ray cluster has \(2\)"):
        run_ray(config, str(synth_split[0] / "images"), str(tmp_path / "out"), progress=False)
