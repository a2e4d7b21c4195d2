"""The demo's functions called in-process."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from chatrex import ChatRexPredictor
from demo.app import build_app, example_images, new_image, stream_turn
from demo.logic import EMPTY_FILE, MAX_SIDE, NOT_AN_IMAGE, DemoLogic, Reply, prepare_image, reply_html

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


def _png_header(path, width, height):
    """A PNG that declares its size and holds no pixels: what PIL reads before decoding."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))
    return str(path)


def test_bad_uploads_get_one_line_messages_without_paths(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(open(EXAMPLE, "rb").read()[:2000])
    cases = {str(empty): EMPTY_FILE, str(truncated): NOT_AN_IMAGE, str(tmp_path / "gone.png"): "did not arrive"}
    cases[_png_header(tmp_path / "bomb.png", 20_000, 20_000)] = "too large"  # PIL refuses it outright
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # PIL only warns at this size
        cases[_png_header(tmp_path / "big.png", 10_000, 10_000)] = "too large (10000x10000 pixels)"
        for path, expected in cases.items():
            rgb, text = prepare_image(path)
            assert rgb is None and expected in text and "\n" not in text and str(tmp_path) not in text


def test_upload_handler_keeps_the_image_on_a_bad_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    shown, notice, file_box = new_image(str(bad))
    assert shown == {"__type__": "update"} and notice == NOT_AN_IMAGE and file_box is None  # gr.skip(): no change
    shown, notice, file_box = new_image(EXAMPLE)
    assert shown.size == Image.open(EXAMPLE).size and notice == "" and file_box is None


def test_huge_image_is_downscaled_with_notice(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((8000, 8000, 3), dtype=np.uint8)).save(big, compress_level=1)
    rgb, notice = prepare_image(str(big))
    assert max(rgb.size) == MAX_SIDE and "8000x8000" in notice and "downscaled" in notice


@pytest.mark.slow
def test_ask_returns_annotated_image_and_spans(logic, monkeypatch):
    from chatrex.text.answer import parse_answer

    def fake_ask(question, history=None):
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


@pytest.mark.slow
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

    shown = json.dumps(build_app(logic, note=BUNDLED_NOTE).config, default=str)
    assert "synthetic world" in shown and "--model PATH" in shown
    assert "synthetic world" not in json.dumps(build_app(logic).config, default=str)


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


def test_reply_html_colours_each_phrase_once_and_escapes_text():
    reply = Reply("<b>x</b> sees two trees", [("<b>x</b> sees ", None), ("two trees", "two trees [1]")], {"two trees [1]": "#0072b2"}, None)
    out = reply_html(reply)
    assert out.startswith("&lt;b&gt;x&lt;/b&gt; sees <span class=\"grounded\"")
    assert "background:#0072b2;color:#ffffff" in out  # white on the dark blue, as on the image's label
    assert out.count("two trees") == 2  # the text and the title attribute; the label is not printed
    assert out.endswith(">two trees</span>")


def test_history_reaches_the_model_and_turns_come_back(logic):
    first = logic.ask(EXAMPLE, "find the boat")
    assert first.turn == ("find the boat", first.turn[1]) and first.history_turns == 0
    second = logic.ask(EXAMPLE, "what colour is it?", history=[list(first.turn)])
    assert second.history_turns == 1
    detect = logic.detect(EXAMPLE, "boat")
    assert detect.turn[0] == logic.predictor.prompts.detection["category"].format(phrase="boat")
    bad = logic.ask(EXAMPLE, "and now?", history=[["only a question"]])
    assert bad.text.startswith("Sorry") and "history[0]" in bad.text and bad.turn is None


def test_streamed_reply_ends_with_the_reply_of_ask(logic):
    history = [list(logic.ask(EXAMPLE, "find the boat").turn)]
    replies = list(logic.ask_stream(EXAMPLE, "what colour is it?", history))
    assert replies[-1] == logic.ask(EXAMPLE, "what colour is it?", history)
    assert len(replies) > 1 and all(r.image is None and r.turn is None for r in replies[:-1])
    assert [r.text for r in logic.ask_stream(None, "q")] == ["Please upload an image first (or pick an example)."]


def test_stream_turn_escapes_the_question_and_holds_the_controls_until_done():
    partial = Reply("the bo", [("the bo", None)], {}, None)
    final = Reply("the boat", [("the boat", "the boat [1]")], {"the boat [1]": "#e69f00"}, Image.new("RGB", (4, 4)),
                  turn=("Find <b>the boat</b>", "<ground>the boat</ground><objects><obj8></objects>"))
    steps = list(stream_turn([], [["earlier", "answer"]], "Find <b>the boat</b>", iter([partial, final]), controls=2))
    assert steps[0][0][0] == {"role": "user", "content": "Find &lt;b&gt;the boat&lt;/b&gt;"}
    assert [step[0][-1]["content"] for step in steps] == ["the bo", reply_html(final), reply_html(final)]
    assert [step[4].get("interactive") for step in steps] == [False, False, True]
    assert steps[-1][3] == [["earlier", "answer"], list(final.turn)] and steps[-1][1] is final.image
    assert all(step[3] == {"__type__": "update"} for step in steps[:-1])  # the history changes once, at the end
