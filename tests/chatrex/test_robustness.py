"""Strict loading and bounded inputs: in Python, in the CLI (one line, exit 2) and in the demo."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from chatrex import ChatRexForConditionalGeneration, ChatRexPredictor, InputTooLongError
from chatrex.cli.main import main
from chatrex.predictor import MAX_NEW_TOKENS

LONG_PHRASE = " ".join(["red car"] * 2500)  # 5,000 words


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


def _edit_weights(src, dst, drop: str | None = None, add: str | None = None):
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    if drop:
        del weights[drop]
    if add:
        weights[add] = torch.zeros(2)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


DROPPED = "model.mm_projector.0.weight"


@pytest.fixture(scope="module")
def missing_key_dir(tiny_bundle_dir, tmp_path_factory):
    return _edit_weights(tiny_bundle_dir, tmp_path_factory.mktemp("broken") / "m", drop=DROPPED)


def test_a_missing_key_is_an_error_naming_it(missing_key_dir):
    with pytest.raises(ValueError, match=rf"missing 1 key\(s\): {DROPPED}"):
        ChatRexForConditionalGeneration.from_pretrained(missing_key_dir)
    with pytest.raises(ValueError, match=DROPPED):
        ChatRexPredictor.from_pretrained(missing_key_dir)
    # transformers' lenient behaviour stays available on request
    model = ChatRexForConditionalGeneration.from_pretrained(missing_key_dir, strict=False)
    assert model.model.mm_projector[0].weight.shape[0] > 0


def test_an_unexpected_key_is_an_error_naming_it(tiny_bundle_dir, tmp_path):
    path = _edit_weights(tiny_bundle_dir, tmp_path / "m", add="model.stray_head.weight")
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\): model.stray_head.weight"):
        ChatRexForConditionalGeneration.from_pretrained(path)


def test_training_init_is_strict(missing_key_dir):
    from train.model_loading import load_model_and_processor

    with pytest.raises(ValueError, match=DROPPED):
        load_model_and_processor(str(missing_key_dir))


def test_keys_a_config_override_adds_may_be_missing(tiny_bundle_dir):
    model, info = ChatRexForConditionalGeneration.from_pretrained(tiny_bundle_dir, token_compression="unshuffle_mlp", output_loading_info=True)
    added = {k for k in info["missing_keys"]}
    assert added and all(k.startswith("model.token_compression.") for k in added)
    assert model.config.token_compression == "unshuffle_mlp"


def test_cli_names_the_missing_key_in_one_line(missing_key_dir, image_path, capsys):
    assert main(["detect", str(image_path), "boat", "--model", str(missing_key_dir)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and DROPPED in lines[0] and lines[0].startswith("chatrex detect: error:"), captured.err
    assert captured.out == ""


@pytest.fixture(scope="module")
def predictor(tiny_bundle_dir):
    return ChatRexPredictor.from_pretrained(tiny_bundle_dir, proposal_min_score=0.0, max_new_tokens=4)


def test_a_too_long_phrase_names_the_count_and_the_limit(predictor, image_path):
    predictor.set_image(Image.open(image_path))
    limit = predictor.context_length
    assert limit == predictor.model.config.text_config.max_position_embeddings
    with pytest.raises(InputTooLongError) as info:
        predictor.detect(LONG_PHRASE)
    err = info.value
    assert isinstance(err, ValueError) and err.limit == limit and err.num_tokens > limit
    assert f"{err.num_tokens} tokens" in str(err) and f"{limit} positions" in str(err)
    with pytest.raises(InputTooLongError):
        predictor.ask(LONG_PHRASE)


def test_max_new_tokens_is_capped(tiny_bundle_dir, predictor, image_path):
    with pytest.raises(ValueError, match=rf"max_new_tokens must be an integer in \[1, {MAX_NEW_TOKENS}\], got 100000"):
        ChatRexPredictor.from_pretrained(tiny_bundle_dir, max_new_tokens=100_000)
    predictor.set_image(Image.open(image_path))
    for bad in (0, -3, MAX_NEW_TOKENS + 1, 2.5):
        with pytest.raises(ValueError, match="max_new_tokens"):
            predictor.ask("how many cars?", max_new_tokens=bad)


@pytest.mark.slow
def test_cli_too_long_phrase_is_one_line_exit_2(tiny_bundle_dir, image_path, capsys):
    assert main(["detect", str(image_path), LONG_PHRASE, "--model", str(tiny_bundle_dir)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "too long" in lines[0] and "positions" in lines[0], captured.err
    assert main(["ask", str(image_path), LONG_PHRASE, "--model", str(tiny_bundle_dir)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_demo_answers_a_too_long_question_with_a_chat_message(predictor, image_path):
    from demo.logic import DemoLogic

    logic = DemoLogic(predictor)
    reply = logic.ask(str(image_path), LONG_PHRASE)
    assert reply.text.startswith("That message is too long for this model") and "Please shorten it" in reply.text
    reply = logic.detect(str(image_path), LONG_PHRASE)
    assert reply.text.startswith("That message is too long")


def test_predictor_is_public_api():
    import chatrex

    assert chatrex.ChatRexPredictor is ChatRexPredictor and "ChatRexPredictor" in chatrex.__all__


def test_a_folder_given_as_an_image_says_so(tmp_path, capsys):
    from chatrex.cli.main import main

    assert main(["detect", str(tmp_path), "car"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is a folder, not an image file" in err


def test_missing_upn_weights_say_they_do_not_exist(tmp_path):
    from upn import UPNPredictor

    with pytest.raises(FileNotFoundError, match="upn_large.pth' do not exist"):
        UPNPredictor.from_pretrained(tmp_path / "upn_large.pth")


def _prompts_seen(predictor, monkeypatch) -> list[str]:
    seen = []
    generate = predictor.model.generate

    def spy(**kwargs):
        seen.append(predictor.processor.tokenizer.decode(kwargs["input_ids"][0]))
        return generate(**kwargs)

    monkeypatch.setattr(predictor.model, "generate", spy)
    return seen


def test_ask_with_history_puts_earlier_turns_first_in_the_prompt(predictor, image_path, monkeypatch):
    from chatrex.predictor import Answer

    predictor.set_image(Image.open(image_path))
    seen = _prompts_seen(predictor, monkeypatch)
    first = predictor.ask("find the red car")
    predictor.ask("what colour is it?", history=[("find the red car", first)])
    predictor.ask("what colour is it?", history=[("find the red car", "<ground>car</ground><objects><obj0></objects>")])
    alone, follow_up, with_markup = seen
    assert "what colour" not in alone
    assert follow_up.index("find the red car") < follow_up.index("what colour is it?")
    assert (first.raw or "") in follow_up and "<obj0>" in with_markup
    assert isinstance(first, Answer)
    with pytest.raises(ValueError, match=r"history\[0\] must be a \(question, answer\) pair"):
        predictor.ask("what colour is it?", history=["find the red car"])


def test_a_long_history_is_trimmed_from_the_oldest_turn(predictor, image_path, monkeypatch):
    predictor.set_image(Image.open(image_path))
    seen = _prompts_seen(predictor, monkeypatch)
    long_turn = " ".join(["the red car"] * 60)
    history = [(f"turn {i}: {long_turn}", "it is red") for i in range(40)]
    predictor.ask("what colour is it?", history=history)
    prompt = seen[-1]
    assert "turn 0:" not in prompt and "turn 39:" in prompt and prompt.rstrip().count("what colour is it?") == 1
    ids = predictor.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) < predictor.context_length
