"""Two-process CPU runs through the real launchers: torchrun + gloo (DDP) and DeepSpeed ZeRO-2."""

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from chatrex import ChatRexForConditionalGeneration
from train.config import to_dict

from .conftest import tiny_config

# Two training processes each: `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg, tmp_path, extra=()):
    """``train.chatrex`` with ``cfg`` on two processes; returns ``{rank: final weights sha256}``."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return _digests(_launch_stage("train.chatrex", ["--config", str(path), *extra]))


def _digests(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"\[rank (\d)\] final weights sha256 ([0-9a-f]{64})", stdout))


def test_two_process_ddp_gloo(records_path, tiny_tokenizer_dir, tmp_path):
    cfg = tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), **{"train.max_steps": 3})
    digests = _launch(cfg, tmp_path)
    assert set(digests) == {"0", "1"}
    assert digests["0"] == digests["1"]
    ChatRexForConditionalGeneration.from_pretrained(tmp_path / "out" / "final")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (pip install deepspeed with DS_BUILD_OPS=0)")
def test_two_process_deepspeed_zero2(records_path, tiny_tokenizer_dir, tmp_path):
    cfg = tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), **{"train.max_steps": 2, "train.deepspeed": os.path.join(REPO, "train/configs/deepspeed/zero2.json")})
    digests = _launch(cfg, tmp_path)
    assert digests["0"] == digests["1"]
    # DeepSpeed engines write their own checkpoint layout (ZeRO shards + zero_to_fp32.py).
    assert os.path.exists(tmp_path / "out" / "checkpoint-00000002" / "zero_to_fp32.py")
    ChatRexForConditionalGeneration.from_pretrained(tmp_path / "out" / "final")


def _launch_stage(module: str, args: list[str]) -> str:
    """``torchrun --nproc_per_node 2 -m module args``; returns stdout (fails the test on an error)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    # start_new_session + killpg on timeout: a hung rendezvous must not leave workers behind.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{module} timed out:\n" + out[-2000:] + err[-4000:])
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    return out


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (pip install deepspeed with DS_BUILD_OPS=0)")
@pytest.mark.parametrize("stage", ["upn", "vision", "text_pretrain"])
def test_every_stage_runs_two_processes_under_deepspeed_zero2(stage, records_path, tiny_tokenizer_dir, tmp_path):
    """The one loop gives every stage DeepSpeed: two processes, ZeRO-2 (gloo on a CPU), equal
    final weights on both, a checkpoint in DeepSpeed's layout and a loadable final/."""
    zero2 = os.path.join(REPO, "train/configs/deepspeed/zero2.json")
    out = tmp_path / "out"
    common = ["--steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--workers", "0", "--deepspeed", zero2, "--out", str(out)]
    if stage == "upn":
        from ..upn.test_train_cli import _write_fixture

        args = ["--coarse", str(_write_fixture(tmp_path)), "--short-side", "64", "--max-size", "64"]
    elif stage == "vision":
        args = ["--records", records_path, "--init", "chatrex-tiny-random", "--tokenizer", tiny_tokenizer_dir]
    else:
        from .test_text_pretrain import saved_tiny_model

        args = ["--records", records_path, "--init", str(saved_tiny_model(tiny_tokenizer_dir, tmp_path / "init")), "--turns", "2"]
    stdout = _launch_stage(f"train.{stage}", args + common)
    digests = _digests(stdout)
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # the replicas stayed in sync
    assert os.path.exists(out / "checkpoint-00000002" / "zero_to_fp32.py")
    if stage == "upn":
        from upn import UPNModel

        UPNModel.from_pretrained(out / "final")
    else:
        ChatRexForConditionalGeneration.from_pretrained(out / "final")


def test_stages_that_cannot_run_under_zero3_say_so(records_path, tiny_tokenizer_dir, tmp_path, capsys):
    """Refused before any process group or DeepSpeed state exists (this runs in the test process)."""
    from train.vision import main

    zero3 = os.path.join(REPO, "train/configs/deepspeed/zero3.json")
    assert main(["--records", records_path, "--init", "chatrex-tiny-random", "--tokenizer", tiny_tokenizer_dir, "--steps", "1",
                 "--deepspeed", zero3, "--out", str(tmp_path / "o")]) == 2
    assert "vision does not run under DeepSpeed ZeRO-3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
