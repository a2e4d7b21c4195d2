"""``chatrex detect`` over many images: JSONL lines in input order, error lines for bad images,
``--resume`` after a ``kill -9`` with nothing lost or duplicated (tiny random model: wiring)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from chatrex.cli.main import main
from chatrex.detect_many import DetectInput, pending, read_inputs

N_IMAGES = 24  # three batches of 8: the acceptance run of 50 is in the #23 note
BAD = 9  # the corrupt one, in the second batch


@pytest.fixture(scope="module")
def model_dir(tiny_bundle_dir, tmp_path_factory):
    """The tiny random bundle with its UPN reading 64-px images: these tests are about the
    command's bookkeeping, and UPN at 512 px would be most of their time."""
    path = tmp_path_factory.mktemp("small") / "bundle"
    shutil.copytree(tiny_bundle_dir, path)
    config = json.loads((path / "upn" / "config.json").read_text())
    config["image"].update(short_side=64, max_size=96)
    (path / "upn" / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        path = root / f"im{i:02d}.png"
        if i == BAD:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            size = (int(rng.integers(48, 96)), int(rng.integers(48, 96)))  # sizes differ within a batch
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    with open(root / "queries.jsonl", "w") as f:
        for i in range(N_IMAGES):
            f.write(json.dumps({"image": f"im{i:02d}.png", "phrase": "red car" if i % 2 else "boat"}) + "\n")
    return root


def _lines(path):
    return [json.loads(x) for x in open(path)]


def _check_complete(lines, root):
    expected = [row for row in map(json.loads, open(root / "queries.jsonl"))]
    assert [(x["image"], x["phrase"]) for x in lines] == [(e["image"], e["phrase"]) for e in expected]
    errors = [x for x in lines if "error" in x]
    assert [x["image"] for x in errors] == [f"im{BAD:02d}.png"] and "cannot read image" in errors[0]["error"]
    assert all(len(x["boxes"]) == len(x["indices"]) == len(x["scores"]) for x in lines if "error" not in x)


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(model_dir, image_dir, tmp_path):
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "chatrex.cli.main", "detect", "--model", str(model_dir), "--inputs", str(image_dir / "queries.jsonl"),
           "--output", str(out), "--batch-size", "8", "--max-new-tokens", "4"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and (not out.exists() or out.read_text().count("\n") < 8):
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    with open(out, "a") as f:
        f.write('{"image": "im4')  # as if the kill had torn a line
    partial = out.read_text().count("\n")
    assert 8 <= partial < N_IMAGES
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    assert len(lines) == N_IMAGES
    _check_complete(lines, image_dir)
    assert "1 of" in done.stderr and "could not be answered" in done.stderr
    again = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"all {N_IMAGES} inputs already have a line" in again.stderr
    assert len(_lines(out)) == N_IMAGES


def test_images_on_the_command_line_go_to_stdout_in_order(model_dir, image_dir, capsys):
    images = [str(image_dir / f"im{i:02d}.png") for i in (3, BAD, 5)]
    assert main(["detect", "--model", str(model_dir), *images, "red car", "--batch-size", "2", "--max-new-tokens", "4"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == images and ["error" in x for x in lines] == [False, True, False]
    assert {x["phrase"] for x in lines} == {"red car"}


@pytest.mark.parametrize("argv, message", [
    (["detect", "a.png"], "give one or more images and then the phrase"),
    (["detect", "a.png", "boat", "--inputs", "q.jsonl"], "not both"),
    (["detect", "a.png", "b.png", "boat", "--out", "x.png"], "--out is for one image"),
    (["detect", "a.png", "b.png", "boat", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["detect", "a.png", "b.png", "boat", "--resume"], "--resume continues an --output file"),
    (["detect", "--inputs", "missing.jsonl"], "--inputs missing.jsonl: no such file"),
    (["detect", "a.png", "b.png"], "the last argument 'b.png' looks like an image file; the phrase goes last"),
    (["detect", "a.png", "boat", "--resume"], "--resume continues an --output file"),  # one image: checked too
    (["detect", "a.png", "boat", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["detect", "a.png", "b.png", "boat", "--output", "nodir/r.jsonl"], "cannot write nodir/r.jsonl: no folder"),
])
def test_bad_arguments_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text('{"image": "a.png", "phrase": "boat", "boxes": []}\n')
    assert main(["detect", "a.png", "b.png", "boat", "--output", str(out)]) == 2
    assert "already exists; add --resume" in capsys.readouterr().err
    assert out.read_text().count("\n") == 1


def test_inputs_file_errors_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"image": "a.png", "phrase": "boat"}\n{"image": "b.png"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: expected"):
        read_inputs(str(path))
    path.write_text('{"image": "a.png", "phrase": "boat"}\n{"image": "b.png", "phrase": "car"},')  # a typo, not a torn write
    with pytest.raises(ValueError, match=r"q.jsonl:2: not valid JSON"):
        read_inputs(str(path))
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no inputs"):
        read_inputs(str(path))


def test_pending_skips_answered_inputs_and_counts_repeats(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"image": "a.png", "phrase": "boat"}\n{"image": "b.png", "phrase": "boat", "error": "x"}\n{"image": "a.p')
    items = [DetectInput(i, "boat", i) for i in ("a.png", "b.png", "a.png", "c.png")]
    todo, errors = pending(items, str(out))
    assert [x.image for x in todo] == ["a.png", "c.png"] and errors == 1
    assert out.read_text().endswith("}\n")  # the torn line is gone
