"""The local runner: shards, manifest, failures, resume after a crash, stats and the CLI."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from chatrex.cli.main import main as chatrex_main
from data_engine.runners.local import run_local
from data_engine.runners.output import OutputDir
from data_engine.schema import validate_record
from data_engine.stats import collect_stats

from .conftest import oracle_config


def shard_records(out):
    recs = []
    for shard in OutputDir(str(out)).shards():
        with open(shard) as f:
            recs += [json.loads(line) for line in f]
    return recs


@pytest.fixture(scope="module")
def reference(synth_split, tmp_path_factory):
    """An uninterrupted run: the records every other run must reproduce."""
    _, records = synth_split
    out = tmp_path_factory.mktemp("reference")
    summary = run_local(oracle_config(records, "runner.shard_size=2"), str(synth_split[0] / "images"), str(out), progress=False)
    return summary, {r["id"]: r for r in shard_records(out)}


def test_run_writes_valid_records_in_atomic_shards(reference, synth_split):
    summary, recs = reference
    assert summary.records == 6 and summary.rejected == summary.failed == 0
    for rec in recs.values():
        validate_record(rec)
        assert rec["provenance"]["grounding"]["backend"] == "oracle"
        assert rec["provenance"]["phrases"]["backend"] == "spacy"
        assert "<ground>" in rec["grounded_caption"] and rec["regions"]
    out = summary.output
    assert sorted(os.listdir(out)) == ["manifest.jsonl", "records-00000.jsonl", "records-00001.jsonl", "records-00002.jsonl"]


def test_second_run_does_nothing(reference, synth_split, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0].output, out)
    summary = run_local(oracle_config(synth_split[1]), str(synth_split[0] / "images"), str(out), progress=False)
    assert summary.already_done == 6 and summary.processed == 0
    assert len(shard_records(out)) == 6


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing in the runner catches it."""


def test_resume_after_a_crash_mid_shard_loses_and_duplicates_nothing(reference, synth_split, tmp_path, monkeypatch):
    config = oracle_config(synth_split[1], "runner.shard_size=2", "runner.batch_size=1")
    out = tmp_path / "out"
    real_flush, calls = OutputDir.flush, []

    def crashing_finish(sample):
        calls.append(sample.id)
        if len(calls) == 5:  # two shards of two are on disk, the fifth record is half done
            monkeypatch.setattr(OutputDir, "flush", lambda self: None)  # a killed process flushes nothing
            raise Crash
        return real_finish(sample)

    from data_engine.runners import common

    real_finish = common.finish_record
    monkeypatch.setattr(common, "finish_record", crashing_finish)
    with pytest.raises(Crash):
        run_local(config, str(synth_split[0] / "images"), str(out), progress=False)
    assert len(shard_records(out)) == 4
    monkeypatch.setattr(common, "finish_record", real_finish)
    monkeypatch.setattr(OutputDir, "flush", real_flush)
    summary = run_local(config, str(synth_split[0] / "images"), str(out), progress=False)
    assert summary.already_done == 4 and summary.records == 2
    recs = shard_records(out)
    assert len(recs) == len({r["id"] for r in recs}) == 6
    assert {r["id"]: r for r in recs} == reference[1]


def test_crash_between_shard_and_manifest_does_not_duplicate(synth_split, tmp_path, monkeypatch):
    config = oracle_config(synth_split[1], "runner.shard_size=3")
    out = tmp_path / "out"
    real_append = OutputDir._append

    def append(self, name, rows):
        if name == "manifest.jsonl" and rows and rows[0]["status"] == "ok":
            raise Crash  # the shard was renamed into place, its manifest lines never written
        real_append(self, name, rows)

    monkeypatch.setattr(OutputDir, "_append", append)
    with pytest.raises(Crash):
        run_local(config, str(synth_split[0] / "images"), str(out), progress=False)
    monkeypatch.setattr(OutputDir, "_append", real_append)
    summary = run_local(config, str(synth_split[0] / "images"), str(out), progress=False)
    assert summary.already_done == 3 and summary.records == 3
    assert len({r["id"] for r in shard_records(out)}) == len(shard_records(out)) == 6


def test_corrupt_and_missing_images_go_to_the_failure_file(synth_split, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synth_split[0] / "images", images)
    (images / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(images / "zz_corrupt.png"), "missing.png", *sorted(str(p) for p in images.glob("test_*.png"))[:2]]))
    out = tmp_path / "out"
    summary = run_local(oracle_config(synth_split[1]), str(listing), str(out), progress=False)
    assert (summary.records, summary.failed) == (2, 2)
    failures = [json.loads(line) for line in open(out / "failures.jsonl")]
    assert {f["stage"] for f in failures} == {"filter", "input"}
    corrupt = next(f for f in failures if f["stage"] == "filter")
    assert corrupt["path"].endswith("zz_corrupt.png") and "cannot read image" in corrupt["error"]
    # A re-run skips the failed images unless asked to retry them.
    assert run_local(oracle_config(synth_split[1]), str(listing), str(out), progress=False).already_done == 3
    retried = run_local(oracle_config(synth_split[1]), str(listing), str(out), retry_failed=True, progress=False)
    assert (retried.failed, retried.already_done) == (2, 2)
    assert len(open(out / "failures.jsonl").readlines()) == 4


def test_jsonl_input_metadata_reaches_the_filter(synth_split, tmp_path):
    first = sorted((synth_split[0] / "images").glob("*.png"))[0]
    listing = tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"image": str(first), "nsfw": True}) + "\n")
    summary = run_local(oracle_config(synth_split[1]), str(listing), str(tmp_path / "out"), progress=False)
    assert summary.rejected == 1 and summary.rejects_by_stage == {"filter": 1}


def test_stats_counts_and_coverage(reference):
    stats = collect_stats(reference[0].output)
    assert stats["images"] == {"ok": 6} and stats["records"] == 6
    assert stats["region_coverage"]["box"] == 1.0 and stats["region_coverage"]["referring"] == 1.0
    assert stats["regions"] == sum(len(r["regions"]) for r in reference[1].values())


def test_cli_run_and_stats(synth_split, tmp_path, capsys):
    records = synth_split[1]
    cfg = tmp_path / "engine.yaml"
    cfg.write_text("backends:\n" + "".join(f"  {r}: {{kind: oracle, model: '{records}'}}\n" for r in ("captioner", "grounder", "region_captioner", "rewriter")))
    out = tmp_path / "out"
    assert chatrex_main(["data-engine", "run", "--input", str(synth_split[0] / "images"), "--output", str(out), "--config", str(cfg), "--limit", "2", "--no-progress"]) == 0
    assert "2 records, 0 rejected, 0 failed" in capsys.readouterr().out
    assert chatrex_main(["data-engine", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 2


@pytest.mark.parametrize("argv, message", [
    (["run", "--input", "nope", "--output", "o"], "input 'nope' does not exist"),
    (["run", "--input", ".", "--output", "o", "--set", "grounding.nms_iou=3"], "grounding.nms_iou must be in [0, 1]"),
    (["run", "--input", ".", "--output", "o", "--limit", "0"], "--limit must be >= 1"),
    (["stats", "nope"], "'nope' is not an engine output folder"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert chatrex_main(["data-engine", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_runner_threads_hold_during_the_run_only(reference, synth_split, tmp_path, monkeypatch):
    import torch

    from data_engine.pipeline import Pipeline

    seen, run_batch = [], Pipeline.run_batch
    monkeypatch.setattr(Pipeline, "run_batch", lambda self, samples: seen.append(torch.get_num_threads()) or run_batch(self, samples))
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    summary = run_local(oracle_config(synth_split[1], f"runner.threads={threads}"), str(synth_split[0] / "images"), str(tmp_path), progress=False)
    assert summary.records == 6 and set(seen) == {threads}
    assert torch.get_num_threads() == before
    assert {r["id"]: r for r in shard_records(tmp_path)} == reference[1]
