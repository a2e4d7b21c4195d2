"""The ChatRex-7B recipe's dry run (``DRY_RUN=1 train/recipes/chatrex_7b.sh``): the same script
and configs as the 8-GPU run, on a CPU with a tiny composed model and the tiny fixtures of every
dataset, 2 steps per stage under DeepSpeed ZeRO-3. Also the command batcher it uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from train.batch_commands import main as batch_main
from train.batch_commands import parse_command

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "train", "recipes", "chatrex_7b.sh")


@pytest.mark.slow
def test_dry_run_writes_every_stage(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "PY": sys.executable, "JOBS": "2", "PYTHONPATH": REPO}
    env.pop("FROM", None)
    # A new session so that a hung run can be killed with everything it started.
    proc = subprocess.Popen(["bash", RECIPE], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail("dry run timed out:\n" + log[-4000:])
    assert proc.returncode == 0, log[-6000:]
    for stage in (1, 2, 3):
        final = out / f"stage{stage}" / "final"
        assert (final / "config.json").is_file() and (final / "model.safetensors").is_file(), (stage, log[-3000:])
        assert (out / f"stage{stage}" / "checkpoint-00000002").is_dir()
    # The leakage filter ran on the fixtures (RefCOCO testA/testB and LVIS minival hold COCO
    # images 73 and 139 out) and the weighted mixtures were built.
    assert "leakage filter: removed 4 of 17 records (coco: 2, lvis: 2)" in log
    assert log.count("mixture: ") == 2 and (out / "init" / "compose_info.json").is_file()
    # DeepSpeed ran ZeRO-3, its "auto" bucket sizes filled from the LLM's width (64).
    states = torch.load(out / "stage3" / "checkpoint-00000002" / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)  # written by this test
    zero = states["ds_config"]["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 64 * 64
    # Re-running skips every finished step.
    rerun = subprocess.run(["bash", RECIPE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("exists, skipped") == 6, rerun.stdout + rerun.stderr[-2000:]


def test_batch_commands_run_in_forked_children_and_report_failures(tmp_path, capsys):
    ok = tmp_path / "ok.txt"
    commands = tmp_path / "commands.txt"
    commands.write_text(
        f"python -m json.tool {tmp_path / 'in.json'} {ok}\n"
        f"python -m json.tool {tmp_path / 'missing.json'}\n"
        "chatrex data import vg --regions /nope.json --images /nope --out x.jsonl\n")
    (tmp_path / "in.json").write_text('{"a": 1}')
    assert batch_main([str(commands), "--jobs", "2", "--logs", str(tmp_path / "logs")]) == 1
    captured = capsys.readouterr()
    assert ok.read_text().strip() == '{\n    "a": 1\n}'
    assert "1 of 3 commands succeeded" in captured.out
    assert captured.err.count("failed (exit ") == 2 and "missing.json" in captured.err and "/nope.json" in captured.err
    assert len(os.listdir(tmp_path / "logs")) == 3
    with pytest.raises(ValueError, match="only 'chatrex ...' and 'python -m MODULE ...'"):
        parse_command("rm -rf /")
