"""``make finetune-tiny`` (``python -m train.finetune_tiny``) end to end at a reduced size: fresh
images, proposals, a continuation of the bundled chatrex-tiny, ``chatrex eval`` before and
after; its ``final/`` works with ``chatrex detect``; expected library messages stay out of the
output; a second run skips every step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from chatrex.predictor import ChatRexPredictor
from train.finetune_tiny import STEPS, side_by_side

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENE = os.path.join(REPO, "examples", "scene1.png")
# Printed by DeepSpeed's import on a machine without a GPU and by accelerate when it saves tied
# embeddings; both are expected there, so the training path keeps them out of the output.
SILENCED = ("Setting accelerator to CPU", "Removed shared tensor")


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    # A new session so that a hung run can be killed with the processes it started.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:4]} timed out:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_finetune_tiny_end_to_end(tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs"
    cmd = [sys.executable, "-m", "train.finetune_tiny", "--data", str(data), "--out", str(out), "--train-images", "4",
           "--eval-images", "2", "--steps", "2", "--batch-size", "2", "--seed", "5"]
    run = _run(cmd, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for message in SILENCED:
        assert message not in run.stdout and message not in run.stderr, message
    # Every step ran, was timed, and both evaluations are printed side by side.
    for step in STEPS:
        assert f"== {step}: " in run.stdout and f"{step} " in run.stdout.split("step times: ")[1]
    table = run.stdout.split("step times: ")[0]
    assert "before  after  change" in table
    for row in ("referring  acc@0.5", "region     category accuracy"):
        assert row in table, table[-2000:]
    before, after = (json.loads((out / f"eval_{w}.json").read_text()) for w in ("before", "after"))
    assert before["settings"]["model"] == "chatrex-tiny" and after["settings"]["model"] == str(out / "final")
    assert before["metrics"]["referring"]["images"] == after["metrics"]["referring"]["images"] == 2
    assert (data / "train-s5-n4" / "records_upn.jsonl").is_file() and (data / "eval-s6-n2" / "records.jsonl").is_file()
    records = [json.loads(line) for line in (data / "train-s5-n4" / "records_upn.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [json.loads(line)["image"] for line in (data / "train-s5-n4" / "records.jsonl").read_text().splitlines()]
    assert all(r["proposals"] for r in records)

    # final/ is a complete model with the bundle's proposal network.
    predictor = ChatRexPredictor.from_pretrained(out / "final")
    assert predictor.upn is not None and len(predictor.propose(Image.open(SCENE)).boxes) > 0
    detect = _run([sys.executable, "-m", "chatrex", "detect", "--model", str(out / "final"), SCENE, "the red car"], timeout=300)
    assert detect.returncode == 0, detect.stderr[-3000:]

    # A second run finds every step done and only prints the table again.
    again = _run(cmd, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == len(STEPS), again.stdout[-3000:]
    assert table.splitlines()[-3:] == again.stdout.split("step times: ")[0].splitlines()[-3:]


def test_side_by_side_lines_up_both_evaluations():
    before = {"referring": {"acc@0.5": 0.5, "queries": 6, "images": 2, "seconds": 3.0}}
    after = {"referring": {"acc@0.5": 0.75, "queries": 6, "images": 2, "seconds": 1.0}}
    lines = side_by_side(before, after).splitlines()
    assert lines[0].split() == ["task", "metric", "before", "after", "change"]
    assert lines[2].split() == ["referring", "acc@0.5", "0.500", "0.750", "+0.250"]
    assert lines[3].split() == ["referring", "queries", "6", "6"]
    assert len(lines) == 4  # images and seconds are left out
