"""`python -m data_engine.synthetic` writes images + records.jsonl and rejects bad arguments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatrex.utils.atomic import TEMP_PREFIX
from data_engine.synthetic import generator, write_split
from data_engine.synthetic.cli import main
from data_engine.synthetic.schema import validate_synthetic_record

REPO = Path(__file__).resolve().parents[2]


def test_module_cli_writes_images_and_records(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "data_engine.synthetic", "--split", "val", "--n", "2", "--seed", "1",
         "--out", str(out), "--size", "96", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        rec = json.loads(line)
        validate_synthetic_record(rec)
        assert not os.path.isabs(rec["image"]) and (out / rec["image"]).is_file()
    assert not [p for p in out.rglob(f"{TEMP_PREFIX}*")]


def test_help_explains_splits(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "heldout" in text and "records.jsonl" in text and "--seed" in text


@pytest.mark.parametrize("argv, needle", [
    (["--split", "train", "--n", "0", "--seed", "0"], "--n"),
    (["--split", "train", "--n", "-3", "--seed", "0"], "--n"),
    (["--split", "train", "--n", "two", "--seed", "0"], "--n"),
    (["--split", "dev", "--n", "2", "--seed", "0"], "--split"),
    (["--split", "train", "--n", "2", "--seed", "-1"], "--seed"),
    (["--split", "train", "--n", "2", "--seed", "0", "--size", "8"], "--size"),
])
def test_bad_arguments_exit_2_with_message(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_write_split_rejects_bad_n(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        write_split(tmp_path, "train", 0, seed=0)


def test_interrupted_run_leaves_no_partial_records(tmp_path, monkeypatch):
    out = tmp_path / "o"
    write_split(out, "train", 1, seed=0, size=96)
    before = (out / "records.jsonl").read_bytes()
    real = generator._render_one

    def flaky(job):
        if job[3] == 1:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(generator, "_render_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_split(out, "train", 3, seed=0, size=96)
    assert (out / "records.jsonl").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".records.")]
