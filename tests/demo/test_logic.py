"""The demo's functions called in-process."""

import numpy as np
import pytest
from PIL import Image

from chatrex import ChatRexPredictor
from demo.app import build_app, example_images
from demo.logic import MAX_SIDE, DemoLogic, prepare_image

EXAMPLE = example_images()[0]


@pytest.fixture(scope="module")
def logic(demo_model_dir):
    return DemoLogic(ChatRexPredictor.from_pretrained(demo_model_dir, proposal_min_score=0.0, max_new_tokens=8))


def test_examples_exist():
    assert len(example_images()) >= 3


def test_message_before_image_is_friendly(logic):
    reply = logic.ask(None, "find the boat")
    assert "upload an image" in reply.text and reply.image is None


def test_empty_message(logic):
    reply = logic.ask(EXAMPLE, "   ")
    assert reply.text == "Please type a question." and reply.image is not None


def test_non_image_upload(logic, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    reply = logic.ask(str(bad), "find the boat")
    assert "not an image" in reply.text and reply.image is None
    drawn, summary = logic.proposals(str(bad))
    assert drawn is None and "not an image" in summary


def test_huge_image_is_downscaled_with_notice(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((8000, 8000, 3), dtype=np.uint8)).save(big, compress_level=1)
    rgb, notice = prepare_image(str(big))
    assert max(rgb.size) == MAX_SIDE and "8000x8000" in notice and "downscaled" in notice


def test_ask_returns_annotated_image_and_spans(logic, monkeypatch):
    from chatrex.answer import parse_answer

    def fake_ask(question):
        parsed = parse_answer("I see <ground>a boat</ground><objects><obj0></objects> and <ground>trees</ground><objects><obj1><obj2></objects>.", logic.predictor.boxes.tolist())
        from chatrex.predictor import Answer

        return Answer(parsed.text, "", parsed.spans)

    logic.predictor.set_image(Image.open(EXAMPLE))
    monkeypatch.setattr(logic.predictor, "ask", fake_ask)
    reply = logic.ask(EXAMPLE, "what is there?")
    assert reply.text == "I see a boat and trees."
    labelled = [(t, lab) for t, lab in reply.spans if lab]
    assert [t for t, _ in labelled] == ["a boat", "trees"]
    assert len(set(reply.color_map.values())) == 2  # distinct colours per phrase
    assert "".join(t for t, _ in reply.spans) == reply.text
    assert reply.image.size == Image.open(EXAMPLE).size


def test_detect_describe_caption_proposals(logic):
    assert logic.detect(EXAMPLE, "boat").image is not None
    assert logic.describe(EXAMPLE, None).text.startswith("Pick a box index")
    assert logic.describe(EXAMPLE, 0, "category").image is not None
    assert logic.describe(EXAMPLE, 10_000).text.startswith("Pick a box index")
    assert logic.grounded_caption(EXAMPLE).text
    drawn, summary = logic.proposals(EXAMPLE, "fine", 0.0)
    assert drawn.size == Image.open(EXAMPLE).size and "fine" in summary


def test_image_encoded_once_per_upload(logic):
    calls = []
    handle = logic.predictor.model.model.vision_high.register_forward_hook(lambda *a: calls.append(1))
    try:
        image = Image.open(example_images()[1]).convert("RGB")
        logic.ask(image, "q1")
        logic.ask(image, "q2")
        logic.detect(image, "boat")
    finally:
        handle.remove()
    assert len(calls) == 1


def test_app_builds_with_named_endpoints(logic):
    app = build_app(logic)
    names = {d.api_name for d in app.fns.values() if d.api_name and d.api_visibility == "public"}
    assert {"ask", "detect", "describe", "grounded_caption", "proposals"} <= names


def test_bundled_model_note_is_shown(logic):
    import json

    from demo.app import BUNDLED_NOTE

    shown = json.dumps(build_app(logic, note=BUNDLED_NOTE).config)
    assert "synthetic world" in shown and "--model PATH" in shown
    assert "synthetic world" not in json.dumps(build_app(logic).config)


def test_model_errors_become_messages(demo_model_dir, tmp_path):
    import shutil

    no_upn = tmp_path / "no-upn"
    shutil.copytree(demo_model_dir, no_upn, ignore=shutil.ignore_patterns("upn"))
    logic = DemoLogic(ChatRexPredictor.from_pretrained(no_upn))
    reply = logic.ask(EXAMPLE, "find the boat")
    assert reply.text.startswith("Sorry") and "proposal network" in reply.text
    assert logic.proposals(EXAMPLE)[1] == "This model has no proposal network."
    assert "granularity" in logic.proposals(EXAMPLE, "medium")[1].lower()
    assert logic.describe(EXAMPLE, 0, "poem").text.startswith("Describe as one of")
