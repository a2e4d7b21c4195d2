import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train.upn import build_parser, load_coco_sources, main


def _write_fixture(root):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (w, h) in enumerate([(64, 48), (40, 64), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "width": w, "height": h})
    anns += [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [5, 5, 20, 15]},
        {"id": 2, "image_id": 0, "category_id": 2, "bbox": [30, 10, 10, 10]},        # fine category
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [30, 50, 40, 40]},        # partly outside: clipped
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 2, 2]},  # skipped
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [100, 100, 5, 5]},       # fully outside: dropped
        # image 2 has no annotations: a negative sample with zero targets
    ]
    cats = [{"id": 1, "name": "thing"}, {"id": 2, "name": "part", "granularity": "fine"}]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "coarse" in text and "granularity" in text


def test_load_sources_marks_and_skips(tmp_path):
    samples, skipped = load_coco_sources([(str(_write_fixture(tmp_path)), "coarse")], None)
    assert sorted((s["path"].rsplit("/", 1)[1], s["granularity"], len(s["boxes"])) for s in samples) == [
        ("im0.png", "coarse", 1), ("im0.png", "fine", 1), ("im1.png", "coarse", 2), ("im2.png", "coarse", 0)]
    assert skipped == {"non-finite or malformed bbox": 1}


def _run(out, steps, resume=False, json_path=None):
    argv = ["--coarse", str(json_path), "--output-dir", str(out), "--steps", str(steps), "--batch-size", "2",
            "--short-side", "64", "--max-size", "64", "--warmup-steps", "1", "--save-every", "1", "--cpu"]
    assert main(argv + (["--resume"] if resume else [])) == 0
    return load_file(out / "final" / "model.safetensors")


def _steps(out):
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_two_steps_then_exact_resume(tmp_path):
    """One loop for every stage: a run stopped after step 2 and resumed ends bit-identical to a
    straight run (same data order, flips, RNG, optimizer and schedule)."""
    json_path = _write_fixture(tmp_path)
    straight = _run(tmp_path / "a", 3, json_path=json_path)
    assert (tmp_path / "a" / "final" / "config.json").is_file()
    assert (tmp_path / "a" / "checkpoint-00000003" / "trainer_state.json").is_file()
    assert not list((tmp_path / "a").glob("*.tmp*"))
    shutil.copytree(tmp_path / "a" / "checkpoint-00000002", tmp_path / "b" / "checkpoint-00000002")
    resumed = _run(tmp_path / "b", 3, resume=True, json_path=json_path)
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows) and {"lr", "loss_l1", "loss_giou"} <= rows[0].keys()
    assert _steps(tmp_path / "a") == _steps(tmp_path / "b") == [3]  # every run logs its last step


def test_resume_without_checkpoint_starts_from_scratch(tmp_path, capsys):
    json_path = _write_fixture(tmp_path)
    _run(tmp_path / "c", 1, resume=True, json_path=json_path)
    assert "no checkpoint in" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch-size", "-1"), ("--max-minutes", "0"), ("--grad-accum", "0")])
def test_bad_loop_options_name_the_flag(tmp_path, capsys, flag, value):
    json_path = _write_fixture(tmp_path)
    assert main(["--coarse", str(json_path), "--output-dir", str(tmp_path / "d"), flag, value, "--cpu"]) == 2
    assert f"{flag} must be positive" in capsys.readouterr().err


def _argv(json_path, out, steps, *extra):
    return ["--coarse", str(json_path), "--output-dir", str(out), "--steps", str(steps), "--batch-size", "2",
            "--short-side", "64", "--max-size", "64", "--warmup-steps", "1", "--save-every", "2", "--cpu", *extra]


def test_a_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, capsys):
    """Without --resume, another run's checkpoints would be pruned in place of the new ones."""
    json_path = _write_fixture(tmp_path)
    assert main(_argv(json_path, tmp_path / "o", 2)) == 0
    assert main(_argv(json_path, tmp_path / "o", 3)) == 2
    assert "holds checkpoints of an earlier run (checkpoint-00000002)" in capsys.readouterr().err


def _interrupt_at(monkeypatch, call, action):
    """Make UPNTask.loss run ``action`` on its ``call``-th call (1-based)."""
    from train.upn import UPNTask

    calls = []
    real_loss = UPNTask.loss

    def loss(self, model, batch):
        calls.append(1)
        if len(calls) == call:
            action()
        return real_loss(self, model, batch)

    monkeypatch.setattr(UPNTask, "loss", loss)


def _raise_interrupt():
    raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """Ctrl-C (SIGINT) mid-step: the step finishes, its checkpoint and log row are written, exit
    130 with one line; resuming ends bit-identical to a run never interrupted."""
    json_path = _write_fixture(tmp_path)
    assert main(_argv(json_path, tmp_path / "straight", 4, "--save-every", "100")) == 0
    _interrupt_at(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    assert main(_argv(json_path, tmp_path / "o", 4, "--save-every", "100")) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "o").glob("checkpoint-*")] == ["checkpoint-00000002"]
    assert _steps(tmp_path / "o") == [2]  # the log ends where the checkpoint does
    monkeypatch.undo()
    assert main(_argv(json_path, tmp_path / "o", 4, "--save-every", "100", "--resume")) == 0
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("straight", "o"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once_without_an_inexact_checkpoint(tmp_path, monkeypatch, capsys):
    json_path = _write_fixture(tmp_path)
    _interrupt_at(monkeypatch, 2, _raise_interrupt)  # mid-step, as a second Ctrl-C lands
    assert main(_argv(json_path, tmp_path / "o", 50, "--save-every", "100")) == 130
    assert "stopped at once; the newest checkpoint is none" in capsys.readouterr().out
    assert not list((tmp_path / "o").glob("checkpoint-*"))
    assert _steps(tmp_path / "o") == [1]


def test_max_minutes_stops_with_a_checkpoint_a_log_row_and_final(tmp_path):
    json_path = _write_fixture(tmp_path)
    assert main(_argv(json_path, tmp_path / "o", 50, "--max-minutes", "1e-9", "--log-every", "10")) == 0
    assert _steps(tmp_path / "o") == [1]
    assert (tmp_path / "o" / "checkpoint-00000001").is_dir() and (tmp_path / "o" / "final" / "config.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--max-size", "32"], "--max-size 32 is below the short side 64"),
    (["--short-side", "0"], "--short-side must be positive"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--preset", "nope"], "nope"),
    (["--fine", "missing.json"], "--fine file not found: missing.json"),
])
def test_user_errors_are_one_line_naming_the_flag(tmp_path, capsys, extra, message):
    json_path = _write_fixture(tmp_path)
    argv = _argv(json_path, tmp_path / "o", 1)
    if extra[0] in argv:  # replace the default value of that flag
        i = argv.index(extra[0])
        argv[i + 1] = extra[1]
    else:
        argv += extra
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_init_pointing_at_a_run_folder_names_its_final_folder(tmp_path, capsys):
    json_path = _write_fixture(tmp_path)
    assert main(_argv(json_path, tmp_path / "run", 1)) == 0
    assert main(_argv(json_path, tmp_path / "o", 1, "--init", str(tmp_path / "run"))) == 2
    assert "did you mean its final/ folder?" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="its model is .*run/final"):
        from upn import UPNModel

        UPNModel.from_pretrained(tmp_path / "run")


def test_a_ctrl_c_in_the_last_step_completes_the_run(tmp_path, monkeypatch):
    """Nothing is left to resume: the last step finishes and final/ is written (exit 0, not 130)."""
    json_path = _write_fixture(tmp_path)
    _interrupt_at(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    assert main(_argv(json_path, tmp_path / "o", 2, "--save-every", "100")) == 0
    assert (tmp_path / "o" / "final" / "model.safetensors").is_file()
    assert _steps(tmp_path / "o") == [2]  # the last step's row (log_every is 10)
