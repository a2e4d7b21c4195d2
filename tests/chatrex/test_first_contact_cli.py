"""Commands that say what to do next (issue #22): ``chatrex eval --data synth:SPLIT`` makes the
split on first use, a missing records folder names the command that makes it, ``--upn upn-tiny``
works by name, proposal images carry the chat's box indices, and ``chatrex convert compose``
fails at once on a part that is not there."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chatrex import hub
from chatrex.cli.convert import _check_compose, _check_official
from chatrex.cli.main import main
from chatrex.evaluation import runner
from chatrex.predictor import BUNDLED_DIR, ChatRexPredictor
from data_engine.synthetic.generator import write_split

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "scene1.png"


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# -- synth:SPLIT ----------------------------------------------------------------------------
def test_the_split_table_is_the_model_cards():
    card = " ".join((BUNDLED_DIR / "chatrex-tiny" / "MODEL_CARD.md").read_text().split())
    recipe = (ROOT / "train" / "recipes" / "chatrex_tiny.sh").read_text()
    for split, (n, seed) in runner.SYNTH_SPLITS.items():
        assert re.search(rf"\b{split} {n:,}(?: images)? \(seed {seed}\b", card), split
        assert f"{split}:{n}:{seed}" in recipe, split
    assert f"`python -m data_engine.synthetic` at {runner.SYNTH_SIZE} px" in card
    assert f"--size {runner.SYNTH_SIZE}" in recipe


@pytest.mark.slow
def test_eval_synth_generates_the_split_once_then_reuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(runner.SYNTH_SPLITS, "test", (3, 2))  # the model card's seed, 3 of its 500 images
    argv = ["eval", "--data", "synth:test", "--task", "proposals", "--no-progress"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["generating the synthetic test split (3 images, seed 2, 384 px) into data/synth/test; later runs reuse it "
                                "(the same as `python -m data_engine.synthetic --split test --n 3 --seed 2 --size 384 --out data/synth/test`)"]
    assert out.startswith("task: proposals") and re.search(r"^images\s+3$", out, re.M)
    records = tmp_path / "data" / "synth" / "test" / "records.jsonl"
    first = json.loads(records.read_text().splitlines()[0])
    assert first["image"] == "images/test_s2_0000000.png" and first["width"] == 384
    stamp = records.stat().st_mtime_ns

    assert main(argv) == 0
    out2, err2 = capsys.readouterr()
    assert err2 == "" and out2.splitlines()[2:-1] == out.splitlines()[2:-1]  # the same metrics (the last row is the time)
    assert records.stat().st_mtime_ns == stamp

    # Another split in its place is not taken for the standard one.
    write_split(records.parent, "test", 3, seed=9, size=384)
    assert main(argv) == 2
    assert "data/synth/test holds 3 images that are not the standard synthetic test split (3 images, seed 2, 384 px)" in _one_line(capsys.readouterr().err)


def test_an_unknown_synthetic_split_lists_the_known_ones(capsys):
    assert main(["eval", "--data", "synth:train", "--task", "proposals"]) == 2
    assert _one_line(capsys.readouterr().err) == "chatrex eval: error: unknown synthetic split 'synth:train'; use synth:val, synth:test, synth:heldout"


@pytest.mark.slow
def test_eval_reads_a_records_file(tmp_path, capsys):
    write_split(tmp_path / "imported", "val", 2, seed=4, size=256)
    assert main(["eval", "--data", str(tmp_path / "imported" / "records.jsonl"), "--task", "proposals", "--no-progress"]) == 0
    assert re.search(r"^images\s+2$", capsys.readouterr().out, re.M)


def test_eval_json_out_holds_the_printed_metrics_and_no_temporary(tmp_path, capsys):
    write_split(tmp_path / "imported", "val", 2, seed=4, size=256)
    out = tmp_path / "metrics.json"
    assert main(["eval", "--data", str(tmp_path / "imported" / "records.jsonl"), "--task", "proposals", "--no-progress",
                 "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


# -- a missing records folder names the command that makes it ---------------------------------
def test_a_missing_synthetic_split_names_the_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--data", "data/synth/test", "--task", "referring"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "chatrex eval: error: data/synth/test has no records.jsonl (data/synth/test does not exist): "
        "`chatrex eval --data synth:test` generates the synthetic test split into data/synth/test on first use "
        "(or run `python -m data_engine.synthetic --split test --n 500 --seed 2 --size 384 --out data/synth/test`)")


def test_a_missing_records_folder_names_the_commands(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path), "--task", "referring"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"chatrex eval: error: {tmp_path} has no records.jsonl: ")
    assert "`chatrex data import coco|lvis|refcoco ... --out FILE.jsonl`" in line and "--data synth:test" in line


def test_proposals_on_missing_records_names_the_command(tmp_path, monkeypatch, capsys):
    from data_engine.proposals import main as proposals_main

    monkeypatch.chdir(tmp_path)
    assert proposals_main(["data/synth/train/records.jsonl", "--upn", "upn-tiny", "--out", "x.jsonl"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "error: data/synth/train/records.jsonl does not exist: make the synthetic train split with "
        "`python -m data_engine.synthetic --split train --n 3000 --seed 0 --size 384 --out data/synth/train`")


# -- proposals: by name, numbered as the chat numbers them --------------------------------------
def test_proposal_image_labels_are_the_chat_box_indices(tmp_path, monkeypatch, capsys):
    import chatrex.visualize

    drawn = {}
    draw = chatrex.visualize.draw_boxes

    def spy(image, boxes, labels=None, colors=None, **kwargs):
        drawn.update(boxes=boxes, labels=labels)
        return draw(image, boxes, labels, colors, **kwargs)

    monkeypatch.setattr(chatrex.visualize, "draw_boxes", spy)
    out = tmp_path / "props.png"
    assert main(["proposals", str(SCENE), "--out", str(out), "--json"]) == 0
    boxes = json.loads(capsys.readouterr().out)["boxes"]
    assert len(boxes) > 3 and drawn["labels"] == [str(i) for i in range(len(boxes))]
    assert Image.open(out).size == Image.open(SCENE).size
    # The same list, in the same order, as the chat's <obj0>, <obj1>, ... at the default settings.
    predictor = ChatRexPredictor.from_pretrained("chatrex-tiny")
    predictor.set_image(Image.open(SCENE))
    np.testing.assert_allclose(predictor.boxes.numpy(), np.array(boxes), atol=0.051)


def test_upn_tiny_by_name(capsys):
    # --upn by name needs no model folder at all.
    assert main(["proposals", str(SCENE), "--upn", "upn-tiny", "--model", "no-such-model", "--max-boxes", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    predictor = ChatRexPredictor.from_pretrained("chatrex-tiny", upn="upn-tiny")
    assert predictor.upn is not None and predictor.upn.model.config.name == "upn-tiny"


def test_upn_by_hub_id_from_the_cache(tmp_path, monkeypatch, capsys):
    from .test_hub import fake_hub_repo

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_repo(tmp_path / "hf", "acme/upn-tiny", {p.name: p for p in (BUNDLED_DIR / "chatrex-tiny" / "upn").iterdir()})
    assert main(["proposals", str(SCENE), "--upn", "acme/upn-tiny", "--model", "no-such-model", "--max-boxes", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["proposals", str(SCENE), "--upn", "acme/upn-large"]) == 2
    assert "hf download acme/upn-large --local-dir models/upn-large`, then pass --upn models/upn-large" in _one_line(capsys.readouterr().err)


def test_an_unknown_upn_name_lists_the_known_ones(capsys):
    assert main(["proposals", str(SCENE), "--upn", "upn-small"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "UPN weights 'upn-small' do not exist: " in line and line.endswith("or a bundled name (upn-tiny)")


# -- chatrex convert: parts that are not there ----------------------------------------------------
@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_compose_with_a_missing_llm_folder_fails_at_once(tmp_path, offline_cache, capsys):
    convnext = tmp_path / "convnext.safetensors"
    convnext.write_bytes(b"")
    argv = ["convert", "compose", "--clip", str(tmp_path), "--convnext", str(convnext), "--out", str(tmp_path / "out"), "--llm"]
    start = time.perf_counter()
    assert main(argv + ["Qwen2.5-7B/"]) == 2
    print(f"compose with a missing --llm: {time.perf_counter() - start:.2f}s")
    assert _one_line(capsys.readouterr().err) == ("chatrex convert: error: --llm Qwen2.5-7B/ does not exist "
                                                  "(a transformers causal-LM folder with its tokenizer, or a Hugging Face id such as Qwen/Qwen2.5-7B)")
    assert main(argv + ["Qwen/Qwen2.5-7B"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"chatrex convert: error: --llm Qwen/Qwen2.5-7B is not a local path and not in the Hugging Face cache ({offline_cache})")
    assert line.endswith("download it with `hf download Qwen/Qwen2.5-7B --local-dir models/Qwen2.5-7B`, then pass --llm models/Qwen2.5-7B")
    assert not (tmp_path / "out").exists()


def test_convert_takes_hub_ids_from_the_cache(tmp_path, offline_cache):
    from .test_hub import fake_hub_repo

    parts = tmp_path / "parts"
    parts.mkdir()
    for name in ("config.json", "model.safetensors", "open_clip_model.safetensors", "tokenizer.json"):
        (parts / name).write_text("{}")
    clip = fake_hub_repo(offline_cache, "openai/clip-tiny", {"config.json": parts / "config.json", "model.safetensors": parts / "model.safetensors"})
    convnext = fake_hub_repo(offline_cache, "laion/CLIP-convnext_tiny.laion2B", {"open_clip_model.safetensors": parts / "open_clip_model.safetensors"})
    llm = fake_hub_repo(offline_cache, "Qwen/Qwen-tiny", {"config.json": parts / "config.json", "tokenizer.json": parts / "tokenizer.json"})
    args = type("Args", (), {})()
    args.clip, args.convnext, args.llm, args.tokenizer = "openai/clip-tiny", "laion/CLIP-convnext_tiny.laion2B", "Qwen/Qwen-tiny", None
    _check_compose(args)
    assert (args.clip, args.convnext, args.llm) == (str(clip), str(convnext / "open_clip_model.safetensors"), str(llm))
    args.src = "Qwen/Qwen-tiny"
    _check_official(args)
    assert args.src == str(llm)
    args.src = "IDEA-Research/RexSeek-3B"
    with pytest.raises(hub.HubUnavailableError, match=r"hf download IDEA-Research/RexSeek-3B --local-dir models/RexSeek-3B`, then pass models/RexSeek-3B as SRC$"):
        _check_official(args)


def test_per_image_draws_do_not_depend_on_where_the_data_lives():
    # The reader resolves image paths to absolute ones; the draw must not see them, or the same
    # command gives other numbers in another clone.
    a = {"id": "synthetic-test-0", "image": "/one/place/images/x.png"}
    b = {"id": "synthetic-test-0", "image": "/another/place/images/x.png"}
    items = list(range(20))
    assert runner._sample(items, 4, runner._sample_key(a)) == runner._sample(items, 4, runner._sample_key(b))
    no_id = [{"image": "/one/images/x.png"}, {"image": "/two/images/x.png"}]
    assert runner._sample_key(no_id[0]) == runner._sample_key(no_id[1]) == "x.png"
