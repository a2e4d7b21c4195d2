"""The bundled model end to end through ``chatrex bench`` on COCO- and MDETR-format copies of
synthetic test images, and a 2-process run killed with SIGKILL, then resumed."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from chatrex.cli.main import main

from .test_detection_protocol import timeless

pytestmark = pytest.mark.slow
BOTH = ["--proposal-prompt", "both", "--min-score", "0.1", "--nms", "0.6"]  # the bundled model's own box list


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from data_engine.export_formats import main as export_main
    from data_engine.synthetic.cli import main as synth_main

    d = tmp_path_factory.mktemp("synth")
    assert synth_main(["--split", "test", "--n", "8", "--seed", "2", "--out", str(d), "--size", "384", "--workers", "1"]) == 0
    assert export_main([str(d / "records.jsonl"), "--out", str(d)]) == 0
    return d


def _metrics(out) -> dict:
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def test_coco_format_end_to_end_and_results_rescored_by_pycocotools(synth, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = str(tmp_path / "coco")
    code = main(["bench", "coco", "--ann", str(synth / "instances.json"), "--images", str(synth), "--out", out, "--limit", "2",
                 "--prompt-mode", "per-category", *BOTH, "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prompt_mode               'per-category'" in printed and "proposals.min_score       0.1" in printed
    m = _metrics(out)
    assert m["images"] == 2 and m["detections"] > 0 and m["precision@0.5"] > 0.5
    coco_gt = COCO(str(synth / "instances.json"))
    ev = COCOeval(coco_gt, coco_gt.loadRes(os.path.join(out, "results.json")), "bbox")
    ev.params.imgIds = [1, 2]
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(m["mAP"], abs=1e-12)


def test_mdetr_format_end_to_end_accuracy_matches_predictions(synth, tmp_path):
    out = str(tmp_path / "rec")
    code = main(["bench", "refcoco", "--format", "mdetr", str(synth / "refexp_mdetr.json"), "--images", str(synth), "--out", out,
                 "--dataset", "refcoco", "--split", "val", "--limit", "6", *BOTH, "--no-progress"])
    assert code == 0
    m = _metrics(out)
    lines = [json.loads(x) for x in open(os.path.join(out, "predictions.jsonl"))]
    assert len(lines) == m["sentences"] == 6 and len({ln["id"] for ln in lines}) == 6
    assert sum(ln["correct"] for ln in lines) / 6 == m["acc@0.5"] > 0
    assert all(set(ln) == {"id", "image_id", "box", "iou", "correct"} for ln in lines)


def _command(synth, out) -> list[str]:
    return [sys.executable, "-m", "chatrex", "bench", "coco", "--ann", str(synth / "instances.json"), "--images", str(synth), "--out", out,
            "--num-processes", "2", "--limit", "4", "--no-progress"]


def _lines(out) -> list[str]:
    keys = []
    for path in glob.glob(os.path.join(out, "parts", "*.jsonl")):
        with open(path) as f:
            keys += [json.loads(x)["key"] for x in f.read().splitlines() if x.endswith("}")]
    return keys


def test_kill_9_in_a_two_process_run_then_the_same_command_finishes_it(synth, tmp_path):
    clean = str(tmp_path / "clean")
    subprocess.run(_command(synth, clean), check=True, capture_output=True)

    out = str(tmp_path / "killed")
    proc = subprocess.Popen(_command(synth, out), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_lines(out)) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and both workers, mid-run
    proc.wait()
    done_before = len(_lines(out))
    assert 1 <= done_before < 4 and not os.path.exists(os.path.join(out, "metrics.json"))

    subprocess.run(_command(synth, out), check=True, capture_output=True)
    keys = _lines(out)
    assert sorted(keys, key=int) == [str(i) for i in range(1, 5)]  # every image once
    got, expected = _metrics(out), _metrics(clean)
    assert timeless(got) == timeless(expected)


def test_torchrun_shards_and_rank_0_merges(synth, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = str(tmp_path / "torchrun")
    subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "chatrex.bench", "coco", "--ann", str(synth / "instances.json"), "--images",
                    str(synth), "--out", out, "--limit", "3", "--no-progress"], check=True, capture_output=True)
    assert sorted(os.listdir(os.path.join(out, "parts"))) == ["part-000-of-002.jsonl", "part-001-of-002.jsonl"]
    assert sorted(_lines(out), key=int) == ["1", "2", "3"] and _metrics(out)["images"] == 3
