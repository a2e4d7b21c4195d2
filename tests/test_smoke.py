"""Smoke tests: what a newcomer does first. Part of `make test`, and the whole of
`make test-latest`, which runs them against the newest releases pyproject admits (drift check).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = os.path.join(ROOT, "examples", "scene1.png")


@pytest.mark.parametrize("module", ["chatrex", "chatrex.cli.main", "chatrex.evaluation.runner", "upn", "train.chatrex", "train.trainer",
                                    "data_engine.cli", "data_engine.runners.local", "demo.app", "demo.logic"])
def test_imports(module):
    importlib.import_module(module)


def test_public_api():
    from chatrex import ChatRexForConditionalGeneration, ChatRexPredictor, ChatRexProcessor, parse_answer  # noqa: F401


@pytest.mark.slow
def test_cli_detect_on_an_example_prints_only_boxes():
    result = subprocess.run([sys.executable, "-m", "chatrex", "detect", SCENE, "boat"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bars or warnings unless --verbose
    lines = result.stdout.strip().splitlines()
    assert lines and all(len(line.split()) == 4 for line in lines), result.stdout
    [float(v) for line in lines for v in line.split()]


def test_one_training_step(tmp_path, tiny_tokenizer_dir):
    from tests.train.conftest import make_records, tiny_config
    from train.trainer import train

    records = make_records(tmp_path / "data", n=2)
    result = train(tiny_config(records, tiny_tokenizer_dir, str(tmp_path / "out"), **{"train.max_steps": 1, "train.save_every": 100}))
    assert result.steps == 1 and os.path.isfile(os.path.join(result.final_dir, "model.safetensors"))


@pytest.mark.slow
def test_demo_functions_in_process():
    from chatrex import ChatRexPredictor
    from demo.logic import DemoLogic

    logic = DemoLogic(ChatRexPredictor.from_pretrained("chatrex-tiny"))
    found = logic.detect(SCENE, "boat")
    assert found.text.startswith("Found") and found.image is not None
    answer = logic.ask(SCENE, "How many trees are there?")
    assert answer.text and not answer.text.startswith("Sorry")
    described = logic.describe(SCENE, 0, "category")
    assert described.text and not described.text.startswith("Sorry")
    drawn, summary = logic.proposals(SCENE, "both")
    assert drawn is not None and "proposals" in summary
